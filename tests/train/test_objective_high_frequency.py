"""The editing objective's optional high-frequency term (train.high_frequency, hywu_core.train.objective):
L_i = mean(e^2) + lambda * mean(H(e)^2), e the raw-output error, H the grain metric's 3x3 mask."""
import math

import pytest
import torch

from hywu_core.train.objective import high_frequency_error

from .helpers import objective_on_demo_backbone


def test_the_mask_passes_grain_and_drops_smooth_error():
    g = torch.Generator().manual_seed(0)
    noise = 0.003 * torch.randn(2, 3, 64, 64, generator=g)
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    smooth = (0.2 + 0.1 * x - 0.3 * y).expand(2, 3, 64, 64)          # a colour shift and two ramps
    torch.testing.assert_close(high_frequency_error(smooth), torch.zeros(2), atol=1e-10, rtol=0)
    ratio = high_frequency_error(noise) / noise.square().flatten(1).mean(1)
    assert torch.all((ratio > 34) & (ratio < 38)), ratio             # white noise: gain 1+4+1+4+16+4+1+4+1 = 36
    video = noise.reshape(1, 2, 3, 64, 64).transpose(1, 2)             # (N, C, T, H, W): every frame on its own
    torch.testing.assert_close(high_frequency_error(video), high_frequency_error(noise).mean().reshape(1))
    with pytest.raises(ValueError, match="at least 3x3"):
        high_frequency_error(torch.zeros(1, 3, 2, 8))


@pytest.mark.parametrize("prediction", ["velocity", "source_residual", "source_affine"])
def test_the_loss_adds_lambda_times_the_masked_error_of_the_raw_output(comfy_lib, prediction):
    weighted, errors, plain, _ = objective_on_demo_backbone(prediction, high_frequency=2.5)
    for i, error in enumerate(errors):
        expected = error.square().mean() + 2.5 * high_frequency_error(error)[0]
        torch.testing.assert_close(weighted[i], expected, rtol=1e-4, atol=1e-7)
    assert torch.all(weighted > plain)


@pytest.mark.parametrize("weight", [-1.0, math.nan, math.inf])
def test_a_negative_or_non_finite_weight_is_refused(weight):
    from hywu_core.train.objective import DenoisingObjective

    with pytest.raises(ValueError, match="give a finite weight >= 0"):
        DenoisingObjective(None, high_frequency=weight)
