"""The SigLIP2 tower and aligner against the reference's outputs on the tiny checkpoint's two input images."""

import pytest
import torch
from PIL import Image

from hywu_core.hunyuan3.config import open_folder
from hywu_core.hunyuan3.images import NaflexPreprocessor
from hywu_core.hunyuan3.vision import (
    VISION_PREFIXES,
    Aligner,
    VisionEncoder,
    VisionTransformer,
)
from tests.hunyuan3.helpers import DATA

TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def vision():
    folder = open_folder(str(DATA / "tiny_model"))
    encoder = VisionEncoder(folder.config)
    encoder.load_state_dict(folder.state_dict(VISION_PREFIXES, strip=False), strict=True)
    return encoder.eval(), folder


def _naflex_inputs(folder):
    naflex = NaflexPreprocessor.from_config(folder.config["vit_processor"])
    items = [naflex(Image.open(DATA / name)) for name in ("input_a.png", "input_b.png")]
    return [torch.stack(parts) for parts in zip(*items)]


def test_every_vision_weight_of_the_checkpoint_is_a_module_weight(vision):
    encoder, folder = vision
    assert set(encoder.state_dict()) == set(folder.keys(VISION_PREFIXES))


def test_tower_head_and_aligner_match_the_reference(vision, reference):
    encoder, folder = vision
    pixels, mask, shapes = _naflex_inputs(folder)
    assert torch.equal(pixels, reference["inputs.cond_vit_images"])
    assert torch.equal(shapes, reference["vit.spatial_shapes"])
    assert torch.equal(mask.long(), reference["vit.attention_mask"])
    with torch.no_grad():
        tower = encoder.vision_model
        torch.testing.assert_close(tower.embeddings(pixels, shapes), reference["vit.embeddings"], **TOL)
        hidden = tower(pixels, mask, shapes)
        torch.testing.assert_close(hidden, reference["vit.last_hidden_state"], **TOL)
        torch.testing.assert_close(tower.pool(hidden, mask), reference["vit.pooler_output"], **TOL)
        torch.testing.assert_close(encoder(pixels, mask, shapes), reference["vit.aligner_output"], **TOL)


def test_padded_patches_do_not_reach_real_ones(vision):
    """What sits in padded patch rows must not change the real patches' tokens."""
    encoder, folder = vision
    pixels, mask, shapes = _naflex_inputs(folder)
    real = int(mask[1].sum())
    assert real < pixels.shape[1]
    noisy = pixels.clone()
    noisy[1, real:] = torch.randn_like(noisy[1, real:])
    with torch.no_grad():
        a, b = encoder(pixels, mask, shapes), encoder(noisy, mask, shapes)
    torch.testing.assert_close(a[1, :real], b[1, :real])
    torch.testing.assert_close(a[0], b[0])


def test_bfloat16_input_computes_in_bfloat16(vision, reference):
    encoder, folder = vision
    pixels, mask, shapes = _naflex_inputs(folder)
    with torch.no_grad():
        out = encoder.to(torch.bfloat16)(pixels.to(torch.bfloat16), mask, shapes)
    encoder.float()
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference["vit.aligner_output"], atol=0.1, rtol=0.05)


def test_unsupported_configs_are_refused(vision):
    _, folder = vision
    with pytest.raises(ValueError, match="projector_type"):
        Aligner({"projector_type": "qformer", "input_dim": 4, "n_embed": 8})
    with pytest.raises(ValueError, match="hidden_act"):
        VisionTransformer(dict(folder.config["vit"], hidden_act="relu"))
    headless = VisionTransformer(dict(folder.config["vit"], vision_use_head=False))
    assert not any(k.startswith("head.") for k in headless.state_dict())
    with pytest.raises(ValueError, match="no pooling head"):
        headless.pool(torch.zeros(1, 4, 32), torch.ones(1, 4))
