"""LoRA bundles, and their ComfyUI LoRA key format checked against ComfyUI's own loader."""
import logging
import types

import pytest
import torch

from hywu_core.lora import LoRABundle
from hywu_core.targets import TargetSpec, derive_targets

from .tiny_backbones import ARCHITECTURES, SD3_UNET_CONFIG, TinyMoE, build, random_bundle


def test_bundle_accessors():
    spec = derive_targets(TinyMoE())
    bundle = random_bundle(spec, rank=4, batch=3, alpha=6.0)
    assert (bundle.batch_size, bundle.scale) == (3, 1.5)
    row = bundle.item(-1)
    assert row.batch_size == 1
    assert torch.equal(row.A["layers.1.mlp.experts.w2"], bundle.A["layers.1.mlp.experts.w2"][2:3])
    half = bundle.to(torch.float16)
    assert half.dtype == torch.float16 and half.B["layers.0.attn.qkv"].shape == (3, 24, 4)
    with pytest.raises(IndexError, match="row 3 out of range for batch size 3"):
        bundle.item(3)


def test_bundle_rejects_factors_that_do_not_fit_the_spec():
    spec = derive_targets(TinyMoE())
    good = random_bundle(spec, rank=4, batch=2)
    wrong = dict(good.A, **{"layers.0.attn.qkv": torch.zeros(2, 4, 9)})
    with pytest.raises(ValueError, match=r"layers\.0\.attn\.qkv: A \(2, 4, 9\), B \(2, 24, 4\); expected A \(N, 4, 8\)"):
        LoRABundle(spec, 4, 8.0, wrong, good.B)
    missing = {k: v for k, v in good.B.items() if k != "layers.1.mlp.gate"}
    with pytest.raises(ValueError, match=r"B does not match its target spec: missing \['layers\.1\.mlp\.gate'\]"):
        LoRABundle(spec, 4, 8.0, good.A, missing)


def test_comfy_state_dict_round_trip_expands_experts():
    spec = derive_targets(TinyMoE(experts=3))
    bundle = random_bundle(spec, rank=4, batch=2, alpha=3.0)
    rows = [bundle.to_comfy_state_dict(i) for i in range(2)]
    sd = rows[1]
    assert torch.equal(sd["diffusion_model.layers.0.mlp.experts.2.w3.lora_down.weight"],
                       bundle.A["layers.0.mlp.experts.w3"][1, 2])
    assert torch.equal(sd["diffusion_model.layers.0.mlp.experts.2.w3.lora_up.weight"],
                       bundle.B["layers.0.mlp.experts.w3"][1, 2])
    assert sd["diffusion_model.layers.1.attn.qkv.alpha"].item() == 3.0
    assert len(sd) == 3 * 2 * (2 + 3 * 3)                      # (lora_up, lora_down, alpha) x layers x modules
    back = LoRABundle.from_comfy_state_dicts(rows, spec)
    assert (back.rank, back.alpha) == (4, 3.0)
    for path in spec.module_paths():
        assert torch.equal(back.A[path], bundle.A[path]) and torch.equal(back.B[path], bundle.B[path])

    no_alpha = {k: v for k, v in sd.items() if not k.endswith(".alpha")}
    assert LoRABundle.from_comfy_state_dicts([no_alpha], spec).alpha == 4.0        # ComfyUI: no alpha = scale 1
    with pytest.raises(ValueError, match=r"keys outside the target spec: \['lora_unet_x'\]"):
        LoRABundle.from_comfy_state_dicts([dict(sd, lora_unet_x=torch.zeros(1))], spec)
    with pytest.raises(ValueError, match="lacks diffusion_model.layers.0.attn.qkv.lora_down.weight"):
        LoRABundle.from_comfy_state_dicts([{}], spec)


def test_virtual_expert_groups_have_no_comfy_form():
    spec = TargetSpec.from_pg_config({"prefix": "m.", "num_base_model_layers": 1, "pg_mapping": {
        "experts": {"type": "grouped", "num_experts": 2, "sub_weights": {"w1": {"lora_A_dim": 4, "lora_B_dim": 4}}}}})
    with pytest.raises(ValueError, match="expert group m.0.experts.w1 has no member module paths"):
        random_bundle(spec).to_comfy_state_dict(0)


def loaded_patches(model, state_dict, caplog):
    """comfy.lora.load_lora's patches for our keys; fails on any 'lora key not loaded' warning."""
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(model, {})
    with caplog.at_level(logging.WARNING):
        patches = comfy.lora.load_lora(state_dict, key_map)
    leftovers = [r.getMessage() for r in caplog.records if "lora key not loaded" in r.getMessage()]
    assert leftovers == []
    return patches


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_comfy_loader_recognises_every_key(comfy_lib, arch, caplog):
    """The keys ComfyUI's loader maps for any model (diffusion_model.<path>) cover every module we emit."""
    diffusion_model = build(arch)
    wrapper = torch.nn.Module()
    wrapper.diffusion_model = diffusion_model
    wrapper.model_config = types.SimpleNamespace(unet_config={})
    spec = derive_targets(diffusion_model)
    patches = loaded_patches(wrapper, random_bundle(spec, batch=1).to_comfy_state_dict(0), caplog)
    assert sorted(patches) == sorted(f"diffusion_model.{p}.weight" for p in spec.module_paths())


def test_comfy_sd3_model_patched_with_our_lora(comfy_lib, caplog):
    """A real comfy.model_base.SD3 (tiny MMDiT): load_lora + ModelPatcher add scale * B @ A, then restore."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    model = comfy.model_base.SD3(comfy.supported_models.SD3(dict(SD3_UNET_CONFIG, dtype=torch.float32)), device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    spec = derive_targets(model.diffusion_model)
    bundle = random_bundle(spec, rank=4, batch=2, alpha=2.0)
    patches = loaded_patches(model, bundle.to_comfy_state_dict(1), caplog)
    assert len(patches) == len(spec.module_paths())

    base = {p: model.diffusion_model.get_submodule(p).weight.detach().clone() for p in spec.module_paths()}
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                               offload_device=torch.device("cpu"))
    assert len(patcher.add_patches(patches, 1.0)) == len(patches)
    patcher.patch_model()
    for path in spec.module_paths():
        expected = base[path] + bundle.scale * bundle.B[path][1] @ bundle.A[path][1]
        torch.testing.assert_close(model.diffusion_model.get_submodule(path).weight, expected, rtol=1e-5, atol=1e-6)
    patcher.unpatch_model()
    for path in spec.module_paths():
        assert torch.equal(model.diffusion_model.get_submodule(path).weight, base[path])


def test_repeat_gives_identical_rows_that_share_the_one_lora(comfy_lib):
    spec = derive_targets(build("sd3"))
    one = random_bundle(spec, rank=4, batch=1)
    leaves = {p: t.clone().requires_grad_() for p, t in one.A.items()}
    many = LoRABundle(spec, one.rank, one.alpha, leaves, one.B).repeat(3)
    assert many.batch_size == 3
    path = spec.module_paths()[0]
    assert all(torch.equal(many.A[path][k], leaves[path][0]) for k in range(3))
    many.A[path].sum().backward()
    assert torch.equal(leaves[path].grad, torch.full_like(leaves[path], 3.0))
    with pytest.raises(ValueError, match="needs a bundle of one LoRA"):
        many.repeat(2)


def test_row_sliced_roles_export_as_one_exact_lora_per_linear():
    """w3 and w1 write the two halves of one fused Linear: ComfyUI's form is one LoRA of rank 2r on it whose
    up @ down * alpha / rank is exactly [scale B3 A3 ; scale B1 A1], and w2 stays a rank-r LoRA."""
    from hywu_core.targets import bind_expert_groups

    spec = bind_expert_groups(TargetSpec.from_pg_config({"prefix": "m.", "num_base_model_layers": 1, "pg_mapping": {
        "experts": {"type": "grouped", "num_experts": 2, "sub_weights": {
            "w1": {"lora_A_dim": 8, "lora_B_dim": 6}, "w2": {"lora_A_dim": 6, "lora_B_dim": 8},
            "w3": {"lora_A_dim": 8, "lora_B_dim": 6}}}}}),
        {"w3": ("gate_and_up", 0, 2), "w1": ("gate_and_up", 1, 2), "w2": ("down", 0, 1)})
    bundle = random_bundle(spec, rank=4, batch=1, alpha=6.0)
    sd = bundle.to_comfy_state_dict(0, prefix="")
    for e in range(2):
        stem = f"m.0.experts.{e}.gate_and_up"
        up, down = sd[f"{stem}.lora_up.weight"], sd[f"{stem}.lora_down.weight"]
        alpha = float(sd[f"{stem}.alpha"])
        assert up.shape == (12, 8) and down.shape == (8, 8) and alpha / 8 == bundle.scale
        delta = up @ down * alpha / down.shape[0]
        for sub, rows in (("w3", slice(0, 6)), ("w1", slice(6, 12))):
            a, b = bundle.A[f"m.0.experts.{sub}"][0, e], bundle.B[f"m.0.experts.{sub}"][0, e]
            torch.testing.assert_close(delta[rows], b @ a * bundle.scale, rtol=1e-6, atol=1e-6)
        assert sd[f"m.0.experts.{e}.down.lora_up.weight"].shape == (8, 4)
        assert float(sd[f"m.0.experts.{e}.down.alpha"]) == 6.0
    with pytest.raises(ValueError, match="not read back from ComfyUI's LoRA format"):
        LoRABundle.from_comfy_state_dicts([sd], spec, prefix="")
