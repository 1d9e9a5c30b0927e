"""Generator files: ours (single .safetensors) round trip, the official release folder, clear errors."""
import json

import pytest
import torch
from safetensors.torch import save_file

from hywu_core.condition import Condition
from hywu_core.generator_files import GeneratorFileError, load_generator, save_generator

from .official_reference import TINY_CONFIG, reference_forward, write_official_folder


def assert_bundles_equal(a, b):
    assert list(a.A) == list(b.A) and a.scale == b.scale
    for path in a.A:
        assert torch.equal(a.A[path], b.A[path]) and torch.equal(a.B[path], b.B[path]), path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip_is_bitwise(tmp_path, generator, dtype):
    generator = generator.to(dtype)
    path = tmp_path / "gen.safetensors"
    save_generator(path, generator)
    loaded = load_generator(path)
    assert loaded.config == generator.config and loaded.alpha == generator.alpha
    assert loaded.spec.to_json() == generator.spec.to_json()
    assert loaded.layout.to_json() == generator.layout.to_json()
    for name, tensor in generator.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor) and loaded.state_dict()[name].dtype == dtype, name
    cond = torch.randn(2, 5, 12)
    with torch.no_grad():
        assert_bundles_equal(generator(Condition.from_tensors(cond)), loaded(Condition.from_tensors(cond)))


def test_truncated_foreign_and_missing_files_give_clear_errors(tmp_path, generator):
    path = tmp_path / "gen.safetensors"
    save_generator(path, generator)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(GeneratorFileError, match="truncated"):
        load_generator(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(GeneratorFileError, match="not a readable safetensors file"):
        load_generator(garbage)
    foreign = tmp_path / "some_lora.safetensors"
    save_file({"lora_up.weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(GeneratorFileError, match="not a HY-WU generator file"):
        load_generator(foreign)
    with pytest.raises(GeneratorFileError, match="no such file or folder"):
        load_generator(tmp_path / "nope.safetensors")


def test_weights_that_do_not_match_the_config_are_named(tmp_path, generator):
    path = tmp_path / "gen.safetensors"
    save_generator(path, generator)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors.pop("nnt.head_A.bias")
    tensors["nnt.cond_in.weight"] = torch.zeros(24, 13)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(GeneratorFileError, match=r"missing: nnt.head_A.bias.*wrong shape: nnt.cond_in.weight \(24, 13\)"):
        load_generator(path)


def test_official_folder_loads_and_matches_the_reference_forward(tmp_path):
    weights = write_official_folder(tmp_path / "hy-wu")
    generator = load_generator(tmp_path / "hy-wu")
    assert generator.config.positions == "official" and generator.config.rank_group == 2
    assert generator.layout.kind == "official_flat"
    cond = torch.randn(2, 5, TINY_CONFIG["input_dim"])
    with torch.no_grad():
        bundle = generator(Condition.from_tensors(cond))
    assert bundle.scale == TINY_CONFIG["alpha"] / TINY_CONFIG["rank"]
    for i in range(2):
        expected = reference_forward(weights, TINY_CONFIG, cond[i])
        assert float(expected.pop("scale")) == bundle.scale
        got = {}
        for path in bundle.A:
            got[f"{path}.lora_A"], got[f"{path}.lora_B"] = bundle.A[path][i], bundle.B[path][i]
        assert sorted(got) == sorted(expected)
        for key, value in expected.items():
            assert got[key].shape == value.shape, key
            torch.testing.assert_close(got[key].double(), value, rtol=1e-4, atol=1e-5, msg=key)


def test_official_folder_errors(tmp_path):
    folder = tmp_path / "hy-wu"
    write_official_folder(folder)
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG | {"model_type": "llama"}))
    with pytest.raises(GeneratorFileError, match="model_type is 'llama'"):
        load_generator(folder)
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    (folder / "model.safetensors").rename(folder / "elsewhere.safetensors")
    with pytest.raises(GeneratorFileError, match="no model.safetensors"):
        load_generator(folder)
    with pytest.raises(GeneratorFileError, match="no config.json"):
        load_generator(tmp_path)


def test_sharded_official_folder_loads_like_the_single_file(tmp_path):
    weights = write_official_folder(tmp_path / "single")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps(TINY_CONFIG))
    names = sorted(weights)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: weights[k] for k in part}, str(sharded / shard))
        weight_map |= {k: shard for k in part}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    single, split = load_generator(tmp_path / "single"), load_generator(sharded / "config.json")
    for name, tensor in single.state_dict().items():
        assert torch.equal(split.state_dict()[name], tensor), name
