"""A request prepared by our code (images -> buckets, VAE posterior samples, ViT tokens, the sequence) equals the
reference's prepared inputs, and the initial noise replays the reference's generator order."""

import pytest
import torch
from PIL import Image

from hywu_core.hunyuan3.request import RequestBuilder
from tests.hunyuan3.helpers import DATA


@pytest.fixture(scope="module")
def builder(tiny_model):
    return RequestBuilder.from_folder(tiny_model)


def edit_request(builder, **overrides):
    import json

    manifest = json.loads((DATA / "reference.json").read_text())["inputs"]
    args = {"prompt": manifest["edit_prompt"], "images": [Image.open(DATA / n) for n in manifest["images"]],
                "cot_text": manifest["edit_cot_text"], "system_prompt": manifest["system_prompt"],
                "image_size": manifest["image_size"], "seed": manifest["seed"]}
    return builder.prepare(**(args | overrides))


def test_prepared_edit_equals_the_reference_inputs(builder, reference):
    prepared = edit_request(builder)
    assert torch.equal(prepared.cond.input_ids[0], reference["inputs.input_ids"][0])
    assert torch.equal(prepared.uncond.input_ids[0], reference["inputs.input_ids"][1])
    assert torch.equal(prepared.cond.positions[0], reference["inputs.rope_pos_yx"][0])
    assert torch.equal(prepared.cond.timestep_slot[0], reference["inputs.timesteps_index"][0])
    for i, latent in enumerate(prepared.cond.cond_latents):
        expected = reference[f"inputs.cond_vae_images.row0.img{i}"]
        assert (latent[0] - expected).abs().max() < 1e-4 * expected.abs().max()
    vit = reference["vit.aligner_output"].reshape(1, -1, reference["vit.aligner_output"].shape[-1])
    torch.testing.assert_close(prepared.cond.vit_embeds, vit, atol=1e-5, rtol=1e-5)
    assert prepared.latent_shape == (1, 8, 16, 16) and prepared.size == (256, 256)
    assert torch.equal(prepared.initial_noise(), reference["sample.initial_noise"])


def test_text_to_image_request_and_its_noise(builder, reference):
    import json

    manifest = json.loads((DATA / "reference.json").read_text())["inputs"]
    prepared = edit_request(builder, prompt=manifest["t2i_prompt"], images=[], cot_text=manifest["t2i_cot_text"])
    assert torch.equal(torch.cat([prepared.cond.input_ids, prepared.uncond.input_ids]),
                       reference["t2i.inputs.input_ids"])
    assert torch.equal(prepared.initial_noise(), reference["t2i.initial_noise"])


@pytest.mark.parametrize("overrides, message", [
    ({"prompt": "   "}, "prompt is empty"),
    ({"image_size": "big"}, "image size 'big' is not understood"),
    ({"images": [Image.new("RGB", (0, 0))]}, "empty"),
])
def test_bad_requests_name_the_problem(builder, overrides, message):
    with pytest.raises(ValueError, match=message):
        edit_request(builder, **overrides)
