"""Timestep embedders, patch embed and final layer against the reference's step hooks on the tiny checkpoint."""
import math
import types

import pytest
import torch
from safetensors import safe_open
from torch import nn

from hywu_core.hunyuan3.config import open_folder
from hywu_core.hunyuan3.image_embed import (
    FinalLayer,
    PatchEmbed,
    image_modules,
    timestep_embedding,
)
from tests.hunyuan3.helpers import DATA

NAMES = ("timestep_emb", "patch_embed", "time_embed", "final_layer", "time_embed_2")


def reference(*names):
    with safe_open(DATA / "reference.safetensors", framework="pt") as f:
        return [f.get_tensor(n) for n in names]


def hook_calls(module):
    with safe_open(DATA / "reference.safetensors", framework="pt") as f:
        names = f.keys()
    calls = sorted({k.split(".")[2] for k in names if k.startswith(f"step.{module}.call")})
    assert calls
    return [f"step.{module}.{call}" for call in calls]


def assert_close(ours, ref, rel=1e-5):
    assert ours.shape == ref.shape
    diff = (ours - ref).abs().max().item()
    assert diff <= rel * max(1.0, ref.abs().max().item()), diff


@pytest.fixture(scope="module")
def folder():
    return open_folder(DATA / "tiny_model")


@pytest.fixture(scope="module")
def modules(folder):
    built = image_modules(folder.config)
    for name, module in built.items():
        module.load_state_dict(folder.state_dict(name + "."), strict=True)
    return built


def test_every_image_side_key_loads(folder, modules):
    assert tuple(modules) == NAMES
    ours = {f"{name}.{k}" for name, m in modules.items() for k in m.state_dict()}
    theirs = {k for k in folder.weight_map if k.split(".")[0] in NAMES}
    assert ours == theirs


@pytest.mark.parametrize("name", ["timestep_emb", "time_embed", "time_embed_2"])
@torch.no_grad()
def test_timestep_embedders_match_reference(modules, name):
    for call in hook_calls(name):
        t, out = reference(f"{call}.input0", f"{call}.output")
        assert_close(modules[name](t), out)


@torch.no_grad()
def test_patch_embed_matches_reference(modules):
    for call in hook_calls("patch_embed"):
        latent, t_emb, out = reference(f"{call}.input0", f"{call}.input1", f"{call}.output")
        tokens, h, w = modules["patch_embed"](latent, t_emb)
        assert (h, w) == tuple(latent.shape[-2:])
        assert_close(tokens, out)


@torch.no_grad()
def test_final_layer_matches_reference(modules):
    (call,) = hook_calls("final_layer")
    tokens, t_emb, out = reference(f"{call}.input0", f"{call}.input1", f"{call}.output")
    assert_close(modules["final_layer"](tokens, t_emb, *out.shape[-2:]), out)


def test_timestep_embedding_is_cos_first():
    t = torch.tensor([0.0, 3.5])
    emb = timestep_embedding(t, 8)
    freqs = torch.tensor([math.exp(-math.log(10000) * i / 4) for i in range(4)])
    assert torch.allclose(emb, torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], -1))
    odd = timestep_embedding(t, 9)
    assert odd.shape == (2, 9) and torch.equal(odd[:, :8], emb) and not odd[:, 8].any()


@pytest.mark.parametrize("patch_size", [2, 4])
@torch.no_grad()
def test_larger_patches_round_trip_the_grid(patch_size):
    embed = PatchEmbed(patch_size, 8, 64, 32, 64)
    final = FinalLayer(patch_size, 64, 64, 32, 8)
    latent, t_emb = torch.randn(2, 8, 8, 16), torch.randn(2, 64)
    tokens, h, w = embed(latent, t_emb)
    assert tokens.shape == (2, h * w, 64) and (h, w) == (8 // patch_size, 16 // patch_size)
    assert final(tokens, t_emb, h, w).shape == latent.shape


def test_layers_come_from_ops_and_device_passes_through(folder):
    ops = types.SimpleNamespace(**{name: type(name, (getattr(nn, name),), {})
                                   for name in ("Linear", "Conv2d", "GroupNorm")})
    built = image_modules(folder.config, ops=ops, device="meta")
    for module in built.values():
        for m in module.modules():
            for name in ("Linear", "Conv2d", "GroupNorm"):
                if isinstance(m, getattr(nn, name)):
                    assert type(m) is getattr(ops, name)
        assert all(p.device.type == "meta" for p in module.parameters())


def test_distilled_configs_add_their_embedders(folder):
    built = image_modules(dict(folder.config, cfg_distilled=True, use_meanflow=True))
    assert {"guidance_emb", "timestep_r_emb"} <= set(built)


def test_bad_inputs_are_refused(folder, modules):
    with pytest.raises(ValueError, match="patch_size must be one of"):
        image_modules(dict(folder.config, patch_size=3))
    with pytest.raises(ValueError, match="img_proj_type"):
        image_modules(dict(folder.config, img_proj_type="linear"))
    with pytest.raises(ValueError, match="do not form a 4x5 grid"):
        modules["final_layer"](torch.zeros(1, 21, 64), torch.zeros(1, 64), 4, 5)
    with pytest.raises(ValueError, match="multiples of patch_size 2"):
        PatchEmbed(2, 8, 64, 32, 64)(torch.zeros(1, 8, 5, 4), torch.zeros(1, 64))
