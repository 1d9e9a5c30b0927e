"""The editing objective's optional patch-lattice term (train.patch_lattice, hywu_core.train.objective):
L_i += mu * mean(P(e)^2), P(e) the part of the raw-output error that repeats with the patch grid."""
import math

import pytest
import torch

from hywu_core.train.objective import patch_lattice_error

from .helpers import objective_on_demo_backbone


def test_the_term_keeps_what_repeats_in_every_patch_and_drops_smooth_and_random_error():
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    smooth = (0.2 + 0.02 * x - 0.03 * y).expand(2, 3, 64, 64)           # a colour shift and two ramps
    mark = torch.zeros(3, 4, 4)
    mark[0, 1, 2], mark[2, 3, 3] = 0.05, -0.02                          # a red and a blue mark in every patch
    marks = mark.repeat(1, 16, 16).expand(2, 3, 64, 64)
    expected = (mark - mark.mean((-2, -1), keepdim=True)).square().mean()
    torch.testing.assert_close(patch_lattice_error(marks, 4), expected.expand(2))
    torch.testing.assert_close(patch_lattice_error(marks + smooth, 4), expected.expand(2), rtol=0.05, atol=0)
    assert patch_lattice_error(smooth, 4).max() < expected / 100       # only the ramps' slope inside a patch
    noise = 0.05 * torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ratio = patch_lattice_error(noise, 4) / noise.square().flatten(1).mean(1)
    assert torch.all(ratio < 3 / 256), ratio                            # white noise: about 1 / patches
    assert patch_lattice_error(marks, 2).max() > 0 and patch_lattice_error(marks, 8).max() > 0
    with pytest.raises(ValueError, match="at least one 4x4 patch"):
        patch_lattice_error(torch.zeros(1, 3, 3, 8), 4)


@pytest.mark.parametrize("prediction", ["velocity", "source_residual", "source_affine"])
def test_the_loss_adds_mu_times_the_patch_lattice_of_the_raw_output_error(comfy_lib, prediction):
    from hywu_core.train.objective import high_frequency_error

    weighted, errors, _, patch = objective_on_demo_backbone(prediction, high_frequency=1.5, patch_lattice=30.0)
    for i, error in enumerate(errors):
        expected = (error.square().mean() + 1.5 * high_frequency_error(error)[0]
                    + 30.0 * patch_lattice_error(error, patch)[0])
        torch.testing.assert_close(weighted[i], expected, rtol=1e-4, atol=1e-7)
    with_high_frequency, _, _, _ = objective_on_demo_backbone(prediction, high_frequency=1.5)
    assert torch.all(weighted > with_high_frequency)


@pytest.mark.parametrize("weight", [-1.0, math.nan, math.inf])
def test_a_negative_or_non_finite_weight_is_refused(weight):
    from hywu_core.train.objective import DenoisingObjective

    with pytest.raises(ValueError, match="patch_lattice = .*: give a finite weight >= 0"):
        DenoisingObjective(None, patch_lattice=weight)


def test_a_backbone_without_a_patch_grid_is_refused_by_name():
    from types import SimpleNamespace

    from hywu_core.train.objective import model_patch_size

    unet = SimpleNamespace(model_config=SimpleNamespace(unet_config={"in_channels": 4}))
    with pytest.raises(ValueError, match="needs a patchified backbone .* None; set train.patch_lattice to 0"):
        model_patch_size(unet)
    assert model_patch_size(SimpleNamespace(model_config=SimpleNamespace(unet_config={"patch_size": 2}))) == 2
