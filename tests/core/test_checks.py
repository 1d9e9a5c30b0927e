"""Hostile input refused early and clearly: non-finite floats, foreign choices, link loops, shard
indexes that leave their folder, and generator configs that the weights present do not back."""
import json
import os
import resource
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hywu_core import checks
from hywu_core.generator_files import GeneratorFileError, load_generator, save_generator
from hywu_core.lora_files import check_filename_prefix
from hywu_core.lora_tools import blend, bound

from .helpers import randomize_b_head, small_generator
from .official_reference import TINY_CONFIG, write_official_folder


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_floats_are_refused_by_name(generator, value):
    with pytest.raises(ValueError, match=f"strength is {value}: give a finite number"):
        checks.finite(value, "strength")
    bundle = generator.layout.detokenize(torch.zeros(1, *generator.layout.token_shape), generator.alpha)
    with pytest.raises(ValueError, match="t is .*: give a finite number"):
        blend(bundle, bundle, value)
    with pytest.raises(ValueError, match="max_norm is .*: give a finite number"):
        bound(bundle, value)
    assert checks.finite(0.5, "t") == 0.5


@pytest.mark.parametrize("value", ["float64", "__class__", "cuda:7", "", None, ["cpu"]])
def test_values_outside_the_choices_are_refused(value):
    with pytest.raises(ValueError, match=r"is not a choice of this input: use one of auto, cpu"):
        checks.one_of(value, ["auto", "cpu"], "device")
    assert checks.one_of("cpu", ["auto", "cpu"], "device") == "cpu"


def test_walk_once_ends_on_link_loops_and_lists_each_folder_once(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "gen.safetensors").write_bytes(b"")
    os.symlink(".", tmp_path / "loopA")
    os.symlink(".", tmp_path / "loopB")
    os.symlink("..", tmp_path / "sub" / "up")
    os.symlink(tmp_path / "sub", tmp_path / "again")
    start = time.monotonic()
    listed = [os.path.relpath(root, tmp_path) for root, _, _ in checks.walk_once(tmp_path)]
    assert time.monotonic() - start < 1
    assert sorted(listed) == [".", "again"] or sorted(listed) == [".", "sub"]


@pytest.mark.parametrize("filename_prefix", ["", " ", ".", "..", "hywu/..", "hywu/...", "a/b/../.."])
def test_a_save_prefix_without_a_file_name_is_refused(filename_prefix):
    with pytest.raises(ValueError, match="names no file: give a path that ends in a file name"):
        check_filename_prefix(filename_prefix)
    assert check_filename_prefix("hywu/my_edit") == "hywu/my_edit"


def test_a_json_file_over_the_limit_is_refused_before_it_is_read(tmp_path):
    huge = tmp_path / "config.json"
    with open(huge, "wb") as f:
        f.truncate(checks.MAX_JSON_BYTES + 1)
    with pytest.raises(ValueError, match="far too large for a model's JSON file"):
        checks.read_json(huge)


def write_index(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {f"w{i}": name for i, name in enumerate(names)}}))
    return index


@pytest.mark.parametrize("escape", ["../outside.safetensors", "sub/../../outside.safetensors", "ABSOLUTE", "link"])
def test_shard_names_must_stay_in_their_folder_whether_or_not_the_file_exists(tmp_path, escape):
    outside = tmp_path / "outside.safetensors"
    folder = tmp_path / "model"
    if escape == "ABSOLUTE":
        escape = str(outside)
    if escape == "link":
        folder.mkdir()
        os.symlink(outside, folder / "link")
    messages = []
    for exists in (False, True):
        if exists:
            save_file({"x": torch.zeros(1)}, str(outside))
        with pytest.raises(ValueError, match="is outside the folder") as refused:
            checks.index_shards(write_index(folder, ["model-1.safetensors", escape]))
        messages.append(str(refused.value))
    assert messages[0] == messages[1]
    assert checks.index_shards(write_index(folder, ["b.safetensors", "a.safetensors", "a.safetensors"])) == [
        folder / "a.safetensors", folder / "b.safetensors"]


def rewrite(path, metadata=None, drop=None):
    """Rewrite a generator file with metadata entries replaced and the tensors under `drop` removed."""
    with safe_open(str(path), "pt") as f:
        stored = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if not (drop and k.startswith(drop))}
    save_file(tensors, str(path), metadata=stored | (metadata or {}))


def hostile_config(generator, **changes):
    return {"nnt_config": json.dumps(generator.config.to_dict() | changes)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("metadata, message", [
    (lambda g: hostile_config(g, depth=1_000_000), "says depth 1000000, but the weights hold 2 NNT block"),
    (lambda g: hostile_config(g, depth=2.0), "stored depth 2.0 is not a positive integer"),
    (lambda g: hostile_config(g, heads="2"), "damaged generator metadata"),
    (lambda g: hostile_config(g, rope_theta=float("nan")), "stored rope_theta nan is not a finite positive number"),
    (lambda g: {"layout": g.layout.to_json().replace('"rank": 4', '"rank": 4000000')},
     "needs 6 token.* of rank 4000000 per layer .* but the weights embed 24"),
    (lambda g: {"alpha": "nan"}, "LoRA alpha nan .* is not a finite positive scale of at most 1000"),
    (lambda g: {"alpha": "inf"}, "LoRA alpha inf"),
    (lambda g: {"alpha": "1e30"}, "LoRA alpha 1e\\+30 \\(scale alpha / rank = 2.5e\\+29\\)"),
    (lambda g: {"alpha": "-8"}, "LoRA alpha -8.0"),
])
def test_generator_configs_the_weights_do_not_back_are_refused_before_building(tmp_path, generator, metadata,
                                                                                message):
    path = tmp_path / "hostile.safetensors"
    save_generator(path, generator)
    rewrite(path, metadata(generator))
    before, start = peak_rss_mb(), time.monotonic()
    with pytest.raises(GeneratorFileError, match=message) as refused:
        load_generator(path)
    assert str(path) in str(refused.value)
    assert time.monotonic() - start < 2 and peak_rss_mb() - before < 50


def test_a_target_spec_longer_than_the_layer_embedding_is_refused(tmp_path, generator):
    path = tmp_path / "hostile.safetensors"
    save_generator(path, generator)
    spec = json.loads(generator.spec.to_json())
    spec["blocks"] = [dict(spec["blocks"][0], prefix=f"blocks.{i}") for i in range(100_000)]
    rewrite(path, {"spec": json.dumps(spec)})
    with pytest.raises(GeneratorFileError, match="target spec has 100000 block.*embed 2 layer"):
        load_generator(path)


def test_a_generator_missing_its_blocks_is_refused(tmp_path, generator):
    path = tmp_path / "hostile.safetensors"
    save_generator(path, generator)
    rewrite(path, drop="nnt.blocks.1.")
    with pytest.raises(GeneratorFileError, match="says depth 2, but the weights hold 1 NNT block"):
        load_generator(path)


@pytest.mark.parametrize("changes, message", [
    ({"num_pg_layers": 1_000_000}, "says depth 1000000, but the weights hold 2 NNT block"),
    ({"num_base_model_layers": 10**9}, "target spec has 1000000000 block.*embed 3 layer"),
    ({"num_pg_layers": "2"}, "num_pg_layers '2' is not a positive integer"),
    ({"alpha": float("inf")}, "LoRA alpha inf"),
    ({"alpha": 1e30}, "LoRA alpha 1e\\+30"),
    ({"pg_mapping": {"self_attn.qkv_proj": 3}}, "unusable pg_mapping"),
])
def test_official_configs_the_weights_do_not_back_are_refused(tmp_path, changes, message):
    folder = tmp_path / "hy-wu"
    write_official_folder(folder)
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG | changes))
    start = time.monotonic()
    with pytest.raises(GeneratorFileError, match=message) as refused:
        load_generator(folder)
    assert str(folder / "config.json") in str(refused.value)
    assert time.monotonic() - start < 2


def test_official_shards_outside_the_folder_are_refused(tmp_path):
    folder = tmp_path / "hy-wu"
    write_official_folder(folder)
    (folder / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    write_index(folder, ["../elsewhere.safetensors"])
    with pytest.raises(GeneratorFileError, match="shard '../elsewhere.safetensors' is outside the folder"):
        load_generator(folder)


def test_a_sane_generator_still_loads(tmp_path):
    generator = small_generator(depth=3)
    randomize_b_head(generator)
    path = tmp_path / "sane.safetensors"
    save_generator(path, generator)
    assert load_generator(path).config == generator.config
