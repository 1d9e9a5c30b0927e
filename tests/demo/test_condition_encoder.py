"""The demo family's condition encoder (paper §3.3: a pretrained SigLIP2, frozen): SigLIP pretraining
of the tiny SigLIP2 on the edit suite's training crops (hywu_core.demo.encoder_pretrain), and
a linear probe showing that its image tokens tell the image states apart on held-out sources.

The full pretraining takes minutes, so the accuracy check reads the shipped encoder
(demo_models/hywu_encoders/hywu_demo, trained with the default EncoderRecipe by the family retrain);
the pretraining itself is checked here with a tiny recipe."""
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hywu_core.demo.edits import PAIRS, STATES
from hywu_core.demo.encoder_pretrain import (
    CAPTION_STATE,
    CAPTIONS,
    EncoderPretrainError,
    EncoderRecipe,
    pretrain_condition_encoder,
    sigmoid_loss,
    state_probe,
)
from hywu_core.demo.images import crop_pool
from hywu_core.demo.run import DEMO_MODELS
from hywu_core.encoders import load_condition_encoder
from hywu_core.tiny_editor.encoders import build_tiny_siglip2, build_tiny_tokenizer

SHIPPED_ENCODER = DEMO_MODELS / "hywu_encoders" / "hywu_demo"
TINY = EncoderRecipe(width=16, layers=1, steps=3, batch_size=8, per_source=2, zoom_per_source=1, seed=3)
# Held-out ("test" split) accuracy floors for the pretrained encoder. Over the states an edit's
# source arrives in (7 of them; "sharpened" is only a target) the aim is 0.9: the shipped encoder
# reads 0.916 on test (0.804 on val). Over all 8 states it reads 0.827: clean, sharpened and vivid
# stay confused on unseen sources. A random encoder scores 0.50 (8-way), 0.64 (restore).
SOURCE_FLOOR = 0.9
STATE_FLOOR = 0.78
PAIR_FLOOR = 0.9
MARGIN = 0.2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on 64x64 crops gain nothing from intra-op threads on the shared test machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_captions_name_every_state_and_no_two_states_share_one():
    assert list(CAPTIONS) == list(STATES)
    every = [caption for captions in CAPTIONS.values() for caption in captions]
    assert len(every) == len(set(every)) == len(CAPTION_STATE)
    tokenizer = build_tiny_tokenizer(EncoderRecipe().max_length)
    for state, captions in CAPTIONS.items():
        assert len(captions) >= 3, state
        for caption in captions:
            ids = tokenizer(caption)["input_ids"]
            assert len(ids) < EncoderRecipe().max_length, f"{caption!r} would be truncated"
            assert tokenizer.unk_token_id not in ids, caption


def test_sigmoid_loss_counts_every_same_state_pair_as_positive():
    states = torch.tensor([0, 0, 1])
    agree = torch.tensor([[9.0, 9.0, -9.0], [9.0, 9.0, -9.0], [-9.0, -9.0, 9.0]])
    assert sigmoid_loss(agree, states, states) < 1e-3
    assert sigmoid_loss(-agree, states, states) > 8
    # only the diagonal positive (plain SigLIP labels) is wrong here: the off-diagonal same-state pairs count
    diagonal_only = torch.where(torch.eye(3, dtype=torch.bool), 9.0, -9.0)
    assert sigmoid_loss(diagonal_only, states, states) > 1
    expected = -torch.nn.functional.logsigmoid(torch.tensor(9.0)) * 7 / 9 - \
        torch.nn.functional.logsigmoid(torch.tensor(-9.0)) * 2 / 9
    assert math.isclose(sigmoid_loss(diagonal_only, states, states).item(), expected.item(), rel_tol=1e-5)


def test_a_few_pretraining_steps_save_a_loadable_encoder_that_left_its_random_init(tmp_path):
    folder = tmp_path / "pretrained"
    logged = []
    losses = pretrain_condition_encoder(folder, TINY, log=logged.append)
    assert len(losses) == TINY.steps and all(math.isfinite(loss) for loss in losses)
    assert logged and "loss" in logged[-1]
    assert not list(folder.glob("*.bin")), "weights must be saved as safetensors only"
    assert json.loads((folder / "preprocessor_config.json").read_text())["max_num_patches"] == TINY.max_patches

    encoder = load_condition_encoder(folder)
    crops = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    cond, mask = encoder.encode(crops, "fix the exposure")
    assert mask[:, :TINY.max_patches].all(), "a 64x64 crop must give all 8x8 = 64 image tokens"
    assert torch.isfinite(cond).all()

    initial = build_tiny_siglip2(tmp_path / "random", seed=TINY.seed, width=TINY.width, layers=TINY.layers,
                                 patch_size=TINY.patch_size, max_patches=TINY.max_patches,
                                 max_length=TINY.max_length)
    trained, random = weights(folder), weights(initial)
    assert trained.keys() == random.keys()
    changed = [name for name in trained if not torch.equal(trained[name], random[name])]
    assert "vision_model.embeddings.patch_embedding.weight" in changed
    assert any(name.startswith("text_model.") for name in changed)
    assert len(changed) > len(trained) // 2

    again = tmp_path / "again"
    pretrain_condition_encoder(again, TINY, log=None)
    repeated = weights(again)
    assert all(torch.equal(trained[name], repeated[name]) for name in trained), "same seed, different weights"


def test_pretraining_refuses_a_non_finite_loss_and_a_non_finite_learning_rate(tmp_path):
    with pytest.raises(EncoderPretrainError, match="lower the learning rate"):
        pretrain_condition_encoder(tmp_path / "diverged", replace(TINY, lr=1e30), log=None)
    with pytest.raises(EncoderPretrainError, match="finite lr"):
        pretrain_condition_encoder(tmp_path / "nan", replace(TINY, lr=float("nan")), log=None)


def test_the_shipped_encoder_tells_image_states_apart_on_held_out_sources_far_better_than_a_random_one(tmp_path):
    processor = json.loads((SHIPPED_ENCODER / "preprocessor_config.json").read_text())
    recipe = EncoderRecipe()
    if processor.get("max_num_patches") != recipe.max_patches or processor.get("patch_size") != recipe.patch_size:
        pytest.fail(f"{SHIPPED_ENCODER} is not the pretrained encoder of EncoderRecipe yet (max_num_patches "
                    f"{processor.get('max_num_patches')}, patch_size {processor.get('patch_size')}; the recipe has "
                    f"{recipe.max_patches} and {recipe.patch_size}): retrain the demo family (./hywu demo-family)",
                    pytrace=False)
    config = json.loads((SHIPPED_ENCODER / "config.json").read_text())["vision_config"]
    random_folder = build_tiny_siglip2(tmp_path / "random", seed=0, width=config["hidden_size"],
                                       layers=config["num_hidden_layers"], patch_size=recipe.patch_size,
                                       max_patches=recipe.max_patches, max_length=recipe.max_length)
    random = state_probe(random_folder, eval_split="test")
    shipped = state_probe(SHIPPED_ENCODER, eval_split="test")
    image_dependent = [name for name, pair in PAIRS.items() if pair.kind == "image-dependent"]
    assert shipped["n_fit"] == len(STATES) * len(crop_pool("train"))
    assert shipped["n_eval"] == len(STATES) * len(crop_pool("test"))
    assert sorted(shipped["pairs"]) == sorted(image_dependent)
    report = f"shipped {shipped}, random {random}"
    assert shipped["sources"] >= SOURCE_FLOOR, report
    assert shipped["sources"] >= random["sources"] + MARGIN, report
    assert shipped["states"] >= STATE_FLOOR, report
    assert shipped["states"] >= random["states"] + MARGIN, report
    for name in image_dependent:
        assert shipped["pairs"][name] >= PAIR_FLOOR, report
    hardest = min(random["pairs"], key=random["pairs"].get)
    assert shipped["pairs"][hardest] >= random["pairs"][hardest] + MARGIN, report
