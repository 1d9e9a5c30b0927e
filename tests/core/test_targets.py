"""Target specs derived from real ComfyUI backbones (tiny, random weights), selection, grouping, checks."""
import pytest
import torch

from hywu_core.targets import (
    TargetBlock,
    TargetMismatchError,
    TargetModule,
    TargetSpec,
    bind_expert_groups,
    derive_targets,
)

from .tiny_backbones import ARCHITECTURES, TinyMoE, build

# Blocks in layer order: the ModuleList entries (and a UNet's middle block) that hold a Linear.
EXPECTED_BLOCKS = {
    "sd15": ["input_blocks.1", "input_blocks.3", "middle_block"] + [f"output_blocks.{i}" for i in range(4)],
    "sdxl": ["input_blocks.1", "input_blocks.3", "input_blocks.5", "middle_block"]
            + [f"output_blocks.{i}" for i in range(6)],
    "sd3": ["joint_blocks.0", "joint_blocks.1"],
    "flux": ["double_blocks.0", "double_blocks.1", "single_blocks.0", "single_blocks.1"],
    "qwen_image": ["transformer_blocks.0", "transformer_blocks.1"],
    "wan21": ["blocks.0", "blocks.1"],
    "lumina2": ["noise_refiner.0", "context_refiner.0", "layers.0", "layers.1"],
    "hunyuan_image21": ["double_blocks.0", "double_blocks.1", "single_blocks.0", "single_blocks.1"],
}


@pytest.fixture(scope="module")
def backbones(comfy_lib):
    return {name: build(name) for name in ARCHITECTURES}


def linear_paths(model, prefixes):
    """Every Linear under the given block prefixes, found independently of derive_targets."""
    return sorted(name for name, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and any(name.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_spec_covers_every_linear_of_the_repeated_blocks(backbones, arch):
    model = backbones[arch]
    spec = derive_targets(model)
    assert [b.prefix for b in spec.blocks] == EXPECTED_BLOCKS[arch]
    assert sorted(spec.module_paths()) == linear_paths(model, EXPECTED_BLOCKS[arch])
    for path, module in spec.items():
        linear = model.get_submodule(path)
        assert (module.d_in, module.d_out, module.grouped) == (linear.in_features, linear.out_features, False)
    spec.verify(model)
    assert TargetSpec.from_json(spec.to_json()) == spec


def test_unet_blocks_differ_in_modules_and_shapes(backbones):
    spec = derive_targets(backbones["sdxl"])
    by_prefix = {b.prefix: b for b in spec.blocks}
    assert [m.name for m in by_prefix["input_blocks.1"].modules] == ["0.emb_layers.1"]
    assert len(by_prefix["input_blocks.5"].modules) > len(by_prefix["input_blocks.3"].modules) > 1
    emb_widths = [by_prefix[p].modules[0].d_out for p in ("input_blocks.1", "input_blocks.3", "output_blocks.5")]
    assert emb_widths == [32, 64, 32]


def test_include_and_exclude_select_by_path(backbones):
    model = backbones["flux"]
    spec = derive_targets(model, include=[r"_attn\.qkv$", r"linear1$"], exclude=[r"^double_blocks\.1\."])
    assert spec.module_paths() == ["double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.qkv",
                                   "single_blocks.0.linear1", "single_blocks.1.linear1"]
    with pytest.raises(ValueError, match="no Linear module selected"):
        derive_targets(model, include=["no_such_module"])


def test_block_lists_override(backbones):
    spec = derive_targets(backbones["lumina2"], block_lists=["layers"])
    assert [b.prefix for b in spec.blocks] == ["layers.0", "layers.1"]
    with pytest.raises(ValueError, match=r"names 'blocks', which is not a submodule.*'layers'"):
        derive_targets(backbones["lumina2"], block_lists=["blocks"])


def test_verify_names_the_first_mismatches(backbones):
    flux_spec = derive_targets(backbones["flux"])
    with pytest.raises(TargetMismatchError, match=r"double_blocks\.0\.img_mod\.lin: missing"):
        flux_spec.verify(backbones["wan21"])
    widened = TargetSpec((TargetBlock("double_blocks.0", (TargetModule("img_attn.qkv", 32, 100),)),))
    with pytest.raises(TargetMismatchError, match=r"double_blocks\.0\.img_attn\.qkv: shape differs, model has "
                                                  r"\(d_in=32, d_out=96\), spec has \(d_in=32, d_out=100\)"):
        widened.verify(backbones["flux"])
    not_linear = TargetSpec((TargetBlock("double_blocks.0", (TargetModule("img_norm1", 32, 32),)),))
    with pytest.raises(TargetMismatchError, match="img_norm1: is a LayerNorm, not a Linear"):
        not_linear.verify(backbones["flux"])


def test_grouped_experts_become_one_role_per_sub_weight():
    model = TinyMoE(dim=8, hidden=12, experts=3)
    spec = derive_targets(model)
    block = spec.blocks[0]
    assert [b.prefix for b in spec.blocks] == ["layers.0", "layers.1"]
    assert [m.name for m in block.modules] == ["attn.qkv", "mlp.experts.w1", "mlp.experts.w2", "mlp.experts.w3",
                                               "mlp.gate"]
    w2 = block.modules[2]
    assert (w2.d_in, w2.d_out, w2.experts) == (12, 8, 3)
    assert w2.members == ("mlp.experts.0.w2", "mlp.experts.1.w2", "mlp.experts.2.w2")
    spec.verify(model)
    assert TargetSpec.from_json(spec.to_json()) == spec
    assert len(derive_targets(model, expert_pattern=None).blocks[0].modules) == 11

    model.layers[1].mlp.experts[2]["w1"] = torch.nn.Linear(8, 10)
    with pytest.raises(ValueError, match=r"layers\.1\.mlp\.experts\.w1 mixes shapes \[\(8, 10\), \(8, 12\)\]"):
        derive_targets(model)
    with pytest.raises(TargetMismatchError, match=r"layers\.1\.mlp\.experts\.2\.w1: shape differs"):
        spec.verify(model)


def test_official_pg_config_round_trip():
    config = {"prefix": "model.layers.", "num_base_model_layers": 3, "pg_mapping": {
        "self_attn.qkv_proj": {"lora_A_dim": 16, "lora_B_dim": 24},
        "mlp.experts": {"type": "grouped", "num_experts": 4, "sub_weights": {
            "w1": {"lora_A_dim": 16, "lora_B_dim": 12}, "w2": {"lora_A_dim": 12, "lora_B_dim": 16}}},
        "self_attn.o_proj": {"lora_A_dim": 16, "lora_B_dim": 16}}}
    spec = TargetSpec.from_pg_config(config)
    assert spec.module_paths()[:4] == ["model.layers.0.self_attn.qkv_proj", "model.layers.0.mlp.experts.w1",
                                       "model.layers.0.mlp.experts.w2", "model.layers.0.self_attn.o_proj"]
    w1 = spec.blocks[2].modules[1]
    assert (w1.experts, w1.members, w1.grouped) == (4, (), True)
    assert spec.to_pg_config() == config
    with pytest.raises(ValueError, match="same modules in every layer"):
        TargetSpec(spec.blocks[:2] + (TargetBlock("model.layers.2", spec.blocks[0].modules[:1]),)).to_pg_config()


def test_spec_rejects_bad_input():
    with pytest.raises(ValueError, match="lists module 'a.x' twice"):
        TargetSpec((TargetBlock("a", (TargetModule("x", 4, 4),)), TargetBlock("a", (TargetModule("x", 4, 4),))))
    with pytest.raises(ValueError, match="2 member paths for 3 experts"):
        TargetModule("e", 4, 4, experts=3, members=("e.0", "e.1"))
    with pytest.raises(ValueError, match="not a target spec JSON"):
        TargetSpec.from_json('{"blocks": []}')


def test_official_expert_groups_bind_to_a_models_fused_experts():
    """The official release's `mlp.experts.w1/w2/w3` roles land where a model says: here w3 on the first half of
    each expert's fused gate_and_up, w1 on the second, w2 on down_proj."""
    spec = TargetSpec.from_pg_config({"prefix": "layers.", "num_base_model_layers": 1, "pg_mapping": {
        "mlp.experts": {"type": "grouped", "num_experts": 2, "sub_weights": {
            "w1": {"lora_A_dim": 8, "lora_B_dim": 6}, "w2": {"lora_A_dim": 6, "lora_B_dim": 8},
            "w3": {"lora_A_dim": 8, "lora_B_dim": 6}}}}})
    slots = {"w3": ("gate_and_up", 0, 2), "w1": ("gate_and_up", 1, 2), "w2": ("down", 0, 1)}
    bound = bind_expert_groups(spec, slots)
    w1, w2, w3 = bound.blocks[0].modules
    assert w1.members == ("mlp.experts.0.gate_and_up", "mlp.experts.1.gate_and_up") and w1.out_slice == (6, 12)
    assert w3.out_slice == (0, 6) and w2.members[1] == "mlp.experts.1.down" and w2.out_slice is None
    assert TargetSpec.from_json(bound.to_json()) == bound

    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Module()])
    model.layers[0].mlp = torch.nn.Module()
    model.layers[0].mlp.experts = torch.nn.ModuleList(
        torch.nn.ModuleDict({"gate_and_up": torch.nn.Linear(8, 12), "down": torch.nn.Linear(6, 8)}) for _ in range(2))
    bound.verify(model)
    model.layers[0].mlp.experts[1]["gate_and_up"] = torch.nn.Linear(8, 10)
    with pytest.raises(TargetMismatchError, match=r"experts\.1\.gate_and_up: shape differs.*output rows 6\.\.11"):
        bound.verify(model)
    with pytest.raises(TargetMismatchError, match="this model does not say where such sub weights go"):
        bind_expert_groups(spec, None)
    with pytest.raises(TargetMismatchError, match="sub weight 'w2' .* is not one this model defines"):
        bind_expert_groups(spec, {"w1": slots["w1"], "w3": slots["w3"]})
    with pytest.raises(ValueError, match=r"out_slice \(2, 4\) must be rows \[start, start \+ d_out\)"):
        TargetModule("x", 4, 3, out_slice=(2, 4))
