"""Condition encoder (paper §3.3): tiny SigLIP2 / SigLIP / CLIP folders load and give U = [image ; text]."""
import json
import os
import resource
import shutil
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hywu_core.encoders import load_condition_encoder
from hywu_core.tiny_editor.encoders import build_tiny_clip, build_tiny_siglip, build_tiny_siglip2

BUILDERS = {"siglip2": build_tiny_siglip2, "siglip": build_tiny_siglip, "clip": build_tiny_clip}
TEXT_LENGTH = 16  # the tiny builders' default max_length


def images(count: int, height: int = 40, width: int = 30, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, height, width, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return {family: build(root / family) for family, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def encoders(folders):
    return {family: load_condition_encoder(folder) for family, folder in folders.items()}


@pytest.fixture
def siglip2(encoders):
    return encoders["siglip2"]


def folder_size(folder) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


@pytest.mark.parametrize("family", list(BUILDERS))
def test_family_loads_and_encodes(encoders, folders, family):
    encoder = encoders[family]
    assert encoder.family == family
    assert folder_size(folders[family]) < 5 * 2**20
    cond, mask = encoder.encode(images(2), ["blur the image", "make it more sharp"])
    assert cond.dtype == torch.float32 and mask.dtype == torch.bool
    assert cond.shape[:2] == mask.shape and cond.shape[0] == 2 and cond.shape[2] == encoder.width
    assert torch.isfinite(cond).all()
    text_mask = mask[:, -TEXT_LENGTH:]
    assert text_mask.sum(1).tolist() == [4, 5]  # 3 and 4 words, each plus <eos>; the rest is padding
    assert (cond[~mask] == 0).all() and (cond[mask].abs().sum(-1) > 0).all()


def test_siglip2_image_tokens_follow_aspect_ratio(siglip2):
    """NaFlex: patches beyond the image's own grid are padding, masked out of U."""
    cond, portrait_mask = siglip2.encode(images(1, 40, 30), "blur")
    _, square_mask = siglip2.encode(images(1, 32, 32), "blur")
    assert portrait_mask.shape == square_mask.shape == (1, 16 + TEXT_LENGTH)
    assert square_mask[0, :16].all()
    assert portrait_mask[0, :16].sum() == 12  # 4:3 within 16 patches of 8 px: a 4x3 grid, 4 padded
    assert (cond[0, 12:16] == 0).all()


def test_clip_text_tokens_are_zero_padded_to_vision_width(encoders):
    """CLIP's towers differ (48 vs 32): U takes the wider width and the text channels beyond 32 are 0."""
    clip = encoders["clip"]
    assert (clip.vision_width, clip.text_width, clip.width) == (48, 32, 48)
    cond, mask = clip.encode(images(1), "add noise")
    image_length = cond.shape[1] - TEXT_LENGTH
    assert image_length == 1 + 16  # CLS + 4x4 patches
    assert (cond[0, image_length:, 32:] == 0).all()
    assert (cond[0, :image_length, 32:] != 0).any()


def test_one_instruction_broadcasts_over_the_batch(siglip2):
    batch = images(3)
    single, single_mask = siglip2.encode(batch, "darken the sky")
    listed, listed_mask = siglip2.encode(batch, ["darken the sky"] * 3)
    assert torch.equal(single, listed) and torch.equal(single_mask, listed_mask)
    assert torch.equal(siglip2.encode(batch, ["darken the sky"])[0], single)


def test_per_item_instructions_match_solo_runs(siglip2):
    batch = images(2)
    texts = ["blur the image", "colorize the old photo"]
    cond, mask = siglip2.encode(batch, texts)
    assert not torch.allclose(cond[0, -TEXT_LENGTH:], cond[1, -TEXT_LENGTH:])
    for index, text in enumerate(texts):
        solo, solo_mask = siglip2.encode(batch[index:index + 1], text)
        assert torch.equal(solo_mask[0], mask[index])
        torch.testing.assert_close(solo[0], cond[index], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_references_lengthen_u_after_the_source_tokens(encoders, family):
    encoder = encoders[family]
    batch, reference = images(2), images(2, 24, 24, seed=1)
    plain, plain_mask = encoder.encode(batch, "take the outfit from image2")
    cond, mask = encoder.encode(batch, "take the outfit from image2", references=[reference, reference])
    image_length = plain.shape[1] - TEXT_LENGTH
    assert cond.shape[1] == plain.shape[1] + 2 * image_length
    torch.testing.assert_close(cond[:, :image_length], plain[:, :image_length], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cond[:, -TEXT_LENGTH:], plain[:, -TEXT_LENGTH:], atol=1e-5, rtol=1e-5)
    first, second = cond[:, image_length:2 * image_length], cond[:, 2 * image_length:3 * image_length]
    assert torch.equal(first, second)
    assert not torch.allclose(first, plain[:, :image_length])
    assert torch.equal(mask[:, -TEXT_LENGTH:], plain_mask[:, -TEXT_LENGTH:])


def test_one_reference_image_is_shared_by_every_item(siglip2):
    batch, reference = images(3), images(1, seed=2)
    shared, _ = siglip2.encode(batch, "use image 1 as the base", references=[reference])
    repeated, _ = siglip2.encode(batch, "use image 1 as the base", references=[reference.expand(3, -1, -1, -1)])
    assert torch.equal(shared, repeated)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_encoding_is_deterministic(encoders, folders, family):
    batch = images(2)
    first, first_mask = encoders[family].encode(batch, "sharpen")
    second, second_mask = encoders[family].encode(batch.clone(), "sharpen")
    reloaded, _ = load_condition_encoder(folders[family]).encode(batch, "sharpen")
    assert torch.equal(first, second) and torch.equal(first_mask, second_mask)
    assert torch.equal(first, reloaded)


def test_builder_is_seeded_and_leaves_the_global_rng_alone(tmp_path, siglip2):
    batch = images(2)
    state = torch.random.get_rng_state()
    again = load_condition_encoder(build_tiny_siglip2(tmp_path / "again", seed=0))
    other = load_condition_encoder(build_tiny_siglip2(tmp_path / "other", seed=1))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(again.encode(batch, "denoise")[0], siglip2.encode(batch, "denoise")[0])
    assert not torch.allclose(other.encode(batch, "denoise")[0], siglip2.encode(batch, "denoise")[0])


def test_saving_and_reloading_gives_the_same_u(tmp_path, siglip2):
    for part in (siglip2.model, siglip2.tokenizer, siglip2.image_processor):
        part.save_pretrained(tmp_path)
    batch = images(2)
    reloaded = load_condition_encoder(tmp_path)
    assert torch.equal(reloaded.encode(batch, "brighten")[0], siglip2.encode(batch, "brighten")[0])


def test_dtype_is_honoured(folders):
    encoder = load_condition_encoder(folders["siglip2"], dtype=torch.bfloat16)
    cond, _ = encoder.encode(images(1), "grayscale")
    assert encoder.dtype == cond.dtype == torch.bfloat16 and torch.isfinite(cond).all()


def nan_image():
    bad = images(2)
    bad[1, 3, 4, 0] = float("nan")
    return bad


def inf_image():
    bad = images(2)
    bad[0, 0, 0, 2] = float("inf")
    return bad


BAD_INPUTS = {
    "count mismatch": (lambda: (images(2), ["blur", "sharpen", "denoise"], None),
                       ValueError, "got 3 instructions for 2 images: give one instruction"),
    "empty list": (lambda: (images(2), [], None), ValueError, "no instruction given"),
    "empty": (lambda: (images(1), "", None), ValueError, "instruction 0 is empty"),
    "whitespace": (lambda: (images(2), ["blur", " \n\t"], None), ValueError, "instruction 1 is empty"),
    "not a string": (lambda: (images(1), [3], None), TypeError, "instruction 0 must be a string"),
    "nan": (lambda: (nan_image(), "blur", None), ValueError, "images contains NaN or Inf"),
    "inf": (lambda: (inf_image(), "blur", None), ValueError, "images contains NaN or Inf"),
    "rgba": (lambda: (torch.rand(1, 8, 8, 4), "blur", None), ValueError, "drop the alpha channel"),
    "channels first": (lambda: (torch.rand(1, 3, 8, 8), "blur", None), ValueError, "must have shape (N, H, W, 3)"),
    "uint8": (lambda: (torch.zeros(1, 8, 8, 3, dtype=torch.uint8), "blur", None), ValueError, "divide 8-bit"),
    "not a tensor": (lambda: ([[0.5]], "blur", None), TypeError, "images must be a torch tensor"),
    "empty batch": (lambda: (torch.rand(0, 8, 8, 3), "blur", None), ValueError, "images is empty"),
    "reference count": (lambda: (images(3), "blur", [images(1), images(2)]), ValueError,
                        "references[1] has 2 images but there are 3 source images"),
    "reference nan": (lambda: (images(2), "blur", [nan_image()]), ValueError, "references[0] contains NaN"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_with_a_clear_message(siglip2, case):
    make, error, message = BAD_INPUTS[case]
    batch, instructions, references = make()
    with pytest.raises(error) as raised:
        siglip2.encode(batch, instructions, references)
    assert message in str(raised.value)
    cond, _ = siglip2.encode(images(1), "blur")  # the encoder still works afterwards
    assert torch.isfinite(cond).all()


def copy_without(folder, tmp_path, *names):
    target = tmp_path / "broken"
    shutil.copytree(folder, target)
    for name in names:
        (target / name).unlink()
    return target


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist or is not a folder"):
        load_condition_encoder(tmp_path / "nowhere")


@pytest.mark.parametrize("removed, message", [
    (("tokenizer.json", "tokenizer_config.json"), "missing tokenizer.json or tokenizer_config.json"),
    (("preprocessor_config.json",), "missing preprocessor_config.json or processor_config.json"),
    (("config.json",), "missing config.json"),
    (("model.safetensors",), "missing model.safetensors: it must be a complete"),
])
def test_incomplete_folder_names_what_is_missing(folders, tmp_path, removed, message):
    with pytest.raises(FileNotFoundError, match=message.replace(".", r"\.")):
        load_condition_encoder(copy_without(folders["siglip2"], tmp_path, *removed))


def test_pickle_checkpoint_is_refused_with_the_fix(folders, tmp_path):
    broken = copy_without(folders["siglip2"], tmp_path, "model.safetensors")
    (broken / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="only a .bin checkpoint is there; convert it to safetensors"):
        load_condition_encoder(broken)


def test_single_tower_model_is_refused(folders, tmp_path):
    broken = copy_without(folders["siglip2"], tmp_path)
    (broken / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 32}))
    with pytest.raises(ValueError, match="holds a 'vit' model, not a dual image\\+text encoder: use one of siglip2"):
        load_condition_encoder(broken)


def test_non_finite_features_are_refused(folders):
    """A broken encoder (here: a NaN weight) must not pass NaN on to the generator."""
    encoder = load_condition_encoder(folders["siglip2"])
    with torch.no_grad():
        encoder.model.text_model.final_layer_norm.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="produced NaN/Inf features in torch.float32"):
        encoder.encode(images(1), "blur")


def edit_config(folder, tower: str, **changes):
    config = json.loads((folder / "config.json").read_text())
    config[f"{tower}_config"].update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("tower, changes, message", [
    ("vision", {"num_hidden_layers": 1_000_000}, "vision tower has num_hidden_layers=1000000 but the weights hold 2"),
    ("text", {"num_hidden_layers": 0}, "text tower has num_hidden_layers=0 but the weights hold 2"),
    ("text", {"hidden_size": 2**20, "intermediate_size": 2**22},
     r"weights do not match config.json \(wrong shape: text_model.embeddings.token_embedding.weight"),
    ("vision", {"num_patches": 2**30}, "wrong shape: vision_model.embeddings.position_embedding.weight"),
])
def test_a_config_the_weights_do_not_back_is_refused_before_building(folders, tmp_path, tower, changes, message):
    """transformers would build (and initialise) what config.json says: a million layers, or a
    4 TB matrix; the check reads only headers and builds on the meta device."""
    broken = copy_without(folders["siglip2"], tmp_path)
    edit_config(broken, tower, **changes)
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
    with pytest.raises(ValueError, match=message):
        load_condition_encoder(broken)
    assert time.monotonic() - start < 5
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 100


def test_a_huge_config_json_is_refused_unread(folders, tmp_path):
    broken = copy_without(folders["siglip2"], tmp_path)
    with open(broken / "config.json", "ab") as f:
        f.truncate(64 * 2**20)
    with pytest.raises(ValueError, match="far too large for a model's JSON file"):
        load_condition_encoder(broken)


@pytest.mark.parametrize("shard", ["../model.safetensors", "/etc/passwd", "link.safetensors"])
def test_shards_outside_the_encoder_folder_are_refused(folders, tmp_path, shard):
    broken = copy_without(folders["siglip2"], tmp_path)
    (broken / "model.safetensors").rename(tmp_path / "model.safetensors")
    if shard == "link.safetensors":
        os.symlink(tmp_path / "model.safetensors", broken / shard)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        weight_map = {name: shard for name in f.keys()}
    (broken / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(ValueError, match=f"shard '{shard}' is outside the folder"):
        load_condition_encoder(broken)


def test_a_sharded_encoder_inside_its_folder_loads(folders, tmp_path, siglip2):
    sharded = copy_without(folders["siglip2"], tmp_path, "model.safetensors")
    tensors = load_file(folders["siglip2"] / "model.safetensors")
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, str(sharded / shard), metadata={"format": "pt"})
        weight_map |= {k: shard for k in part}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cond, _ = load_condition_encoder(sharded).encode(images(1), "blur")
    assert torch.equal(cond, siglip2.encode(images(1), "blur")[0])
