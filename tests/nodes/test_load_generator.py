"""HYWULoadGenerator: generators in models/hywu, listed by the server and loaded exactly."""

import pytest
import torch

from hywu_core.condition import Condition
from hywu_core.generator import Generator
from hywu_core.generator_files import save_generator
from hywu_core.nnt import NNTConfig
from hywu_core.targets import TargetBlock, TargetModule, TargetSpec
from hywu_core.tokenizer import make_layout


def tiny_generator(seed: int = 0):
    torch.manual_seed(seed)
    spec = TargetSpec(blocks=tuple(
        TargetBlock(prefix=f"blocks.{i}", modules=(TargetModule("qkv", 16, 48), TargetModule("proj", 16, 16)))
        for i in range(2)))
    generator = Generator(NNTConfig(cond_dim=12, width=24, depth=1, heads=2), make_layout(spec, 4), alpha=4.0)
    with torch.no_grad():
        for p in generator.nnt.head_B.parameters():
            p.normal_(0, 0.1)
    return generator.eval()


@pytest.fixture
def generator_folder(pack, tmp_path):
    import folder_paths

    saved = folder_paths.folder_names_and_paths["hywu"]
    folder_paths.folder_names_and_paths["hywu"] = ([str(tmp_path)], {".safetensors"})
    yield tmp_path
    folder_paths.folder_names_and_paths["hywu"] = saved


def test_load_generator_node_returns_the_saved_generator(pack, generator_folder):
    original = tiny_generator()
    (generator_folder / "sub").mkdir()
    save_generator(generator_folder / "sub" / "tiny.safetensors", original)
    node = pack.nodes.HYWULoadGenerator
    options = node.GET_SCHEMA().inputs[0].options
    assert "sub/tiny.safetensors" in options
    loaded = node.execute(generator="sub/tiny.safetensors").result[0].model
    cond = torch.randn(2, 5, 12)
    with torch.no_grad():
        expected, got = original(Condition.from_tensors(cond)), loaded(Condition.from_tensors(cond))
    for key in expected.A:
        assert torch.equal(expected.A[key], got.A[key]) and torch.equal(expected.B[key], got.B[key])


def test_load_generator_refuses_paths_outside_the_model_folder(pack, generator_folder):
    node = pack.nodes.HYWULoadGenerator
    with pytest.raises(ValueError, match="points outside the model folder"):
        node.execute(generator="../escape.safetensors")
    with pytest.raises(ValueError, match="not found in"):
        node.execute(generator="missing.safetensors")


def test_server_lists_generators_and_official_folders(client, comfy_server):
    folder = comfy_server.models_dir / "hywu"
    save_generator(folder / "listed.safetensors", tiny_generator())
    official = folder / "HY-WU-release"
    official.mkdir()
    (official / "config.json").write_text('{"model_type": "parameter_generator"}')
    (official / "model.safetensors").write_bytes(b"")
    options = client.get_json("/object_info/HYWULoadGenerator")["HYWULoadGenerator"]["input"]["required"]["generator"]
    names = options[1]["options"] if isinstance(options[1], dict) and "options" in options[1] else options[0]
    assert "listed.safetensors" in names and "HY-WU-release" in names
    assert "HY-WU-release/model.safetensors" not in names
