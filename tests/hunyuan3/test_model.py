"""One denoising step of our HunyuanImage-3 transformer against the reference's, on the tiny checkpoint.

The step's inputs are the reference's own prepared inputs (recorded by tests/data/hunyuan3/make_reference.py), so
this checks the assembly (embedding scatter, trunk, image head) and the prefix cache, not the prompt builder.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hywu_core.hunyuan3.config import open_folder
from hywu_core.hunyuan3.inputs import StepInputs
from hywu_core.hunyuan3.model import DIFFUSION_PREFIXES, HunyuanImage3Transformer

DATA = Path(__file__).resolve().parents[1] / "data" / "hunyuan3"


@pytest.fixture(scope="module")
def reference():
    return load_file(str(DATA / "reference.safetensors"))


@pytest.fixture(scope="module")
def transformer():
    folder = open_folder(str(DATA / "tiny_model"))
    model = HunyuanImage3Transformer(folder.config)
    weights = {}
    for prefix in DIFFUSION_PREFIXES:
        weights.update(folder.state_dict(prefix, strip=False))
    model.load_weights(weights)
    return model.eval()


def _mask(reference, name, length):
    packed = reference[name].numpy()
    bits = np.unpackbits(packed, axis=-1, count=length, bitorder="little").astype(bool)
    return torch.from_numpy(bits)


def _slots(mask):
    return torch.stack([row.nonzero().flatten() for row in mask.bool()])


def reference_step_inputs(reference, keys=()):
    ids = reference["inputs.input_ids"]
    b, length = ids.shape
    n_images = reference["inputs.cond_timesteps_index"].shape[1]
    latents = tuple(torch.stack([reference[f"inputs.cond_vae_images.row{r}.img{i}"] for r in range(b)])
                    for i in range(n_images))
    vit = reference["vit.aligner_output"].reshape(1, -1, reference["vit.aligner_output"].shape[-1]).expand(b, -1, -1)
    info = reference["inputs.gen_image_info"].tolist()
    return StepInputs(
        input_ids=ids, attention_mask=_mask(reference, "inputs.attention_mask", length).expand(b, -1, -1, -1),
        positions=reference["inputs.rope_pos_yx"], cond_latents=latents,
        cond_image_slots=_slots(reference["inputs.cond_vae_image_mask"]),
        cond_timestep_slots=reference["inputs.cond_timesteps_index"], vit_embeds=vit,
        vit_slots=_slots(reference["inputs.cond_vit_image_mask"]), image_slots=_slots(reference["inputs.image_mask"]),
        timestep_slot=reference["inputs.timesteps_index"], image_grid=(info[2], info[3]), keys=keys)


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


def test_manifest_names_the_tensors():
    manifest = json.loads((DATA / "reference.json").read_text())
    assert {"step.prediction", "inputs.input_ids", "cache.step1_cached"} <= set(manifest["tensors"])
