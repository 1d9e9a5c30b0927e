"""One denoising step of our HunyuanImage-3 transformer against the reference's, on the tiny checkpoint.

The step's inputs are the reference's own prepared inputs (recorded by tests/data/hunyuan3/make_reference.py), so
this checks the assembly (embedding scatter, trunk, image head) and the prefix cache, not the prompt builder.
"""

import pytest
import torch

from hywu_core.hunyuan3.config import open_folder
from hywu_core.hunyuan3.model import DIFFUSION_PREFIXES
from tests.hunyuan3.helpers import DATA, reference_step_inputs


def test_every_checkpoint_weight_loads(transformer):
    folder = open_folder(str(DATA / "tiny_model"))
    ours = set(transformer.state_dict())
    diffusion = {k for k in folder.weight_map if k.startswith(DIFFUSION_PREFIXES)}
    assert ours == diffusion
    rest = set(folder.keys()) - diffusion
    assert rest and all(k.startswith(("vae.", "vision_model.", "vision_aligner.")) for k in rest)


def test_step_prediction_matches_reference(transformer, reference):
    inputs = reference_step_inputs(reference)
    x = reference["step.latent"].expand(2, -1, -1, -1)
    with torch.no_grad():
        embeds = transformer.embed(x, reference["step.timestep"].expand(2), inputs)
        pred = transformer.denoise(x, reference["step.timestep"], inputs)
    torch.testing.assert_close(embeds, reference["step.inputs_embeds"], atol=1e-5, rtol=1e-5)
    expected = reference["step.prediction"]
    assert (pred - expected).abs().max() < 1e-4 * expected.abs().max()


def test_prefix_cache_equals_full_recompute_and_reference(transformer, reference):
    inputs = reference_step_inputs(reference, keys=("cond", "uncond"))
    run = torch.tensor([1.0, 0.9])
    x0 = reference["sample.initial_noise"].expand(2, -1, -1, -1)
    x1 = reference["cache.step1_latent"].expand(2, -1, -1, -1)
    t0, t1 = reference["sample.timesteps"][:1], reference["cache.step1_timestep"]
    with torch.no_grad():
        first = transformer.denoise(x0, t0, inputs, run=run)
        cached = transformer.denoise(x1, t1, inputs, run=run)
        full = transformer.denoise(x1, t1, inputs)
    torch.testing.assert_close(first, reference["sample.step0.prediction"], atol=1e-4, rtol=1e-4)
    assert (cached - full).abs().max() < 1e-5
    torch.testing.assert_close(cached, reference["cache.step1_cached"], atol=1e-4, rtol=1e-4)


def test_a_new_run_recomputes_the_prefix(transformer, reference):
    """Changing a weight between runs (what a LoRA patch does) must reach the cached steps of the next run."""
    inputs = reference_step_inputs(reference, keys=("cond", "uncond"))
    x0 = reference["sample.initial_noise"].expand(2, -1, -1, -1)
    x1 = reference["cache.step1_latent"].expand(2, -1, -1, -1)
    t0, t1 = reference["sample.timesteps"][:1], reference["cache.step1_timestep"]
    weight = transformer.model.layers[0].self_attn.o_proj.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        transformer.denoise(x0, t0, inputs, run=torch.ones(1))
        try:
            weight.mul_(1.5)
            run = torch.ones(1)
            transformer.denoise(x0, t0, inputs, run=run)
            cached = transformer.denoise(x1, t1, inputs, run=run)
            full = transformer.denoise(x1, t1, inputs)
        finally:
            weight.copy_(saved)
    assert (cached - full).abs().max() < 1e-5


def test_latent_of_the_wrong_size_is_refused(transformer, reference):
    inputs = reference_step_inputs(reference)
    with pytest.raises(ValueError, match="prepared for a 16x16 image"):
        transformer.denoise(torch.zeros(2, 8, 8, 8), torch.tensor([500.0]), inputs)
