"""Parameter tokenization (§3.4 rank-anchored, and the official release's flat layout): exact round trips."""
import pytest
import torch

from hywu_core.lora import LoRABundle, factor_shapes
from hywu_core.targets import TargetBlock, TargetModule, TargetSpec, derive_targets
from hywu_core.tokenizer import ParameterLayout, make_layout

from .tiny_backbones import ARCHITECTURES, TinyMoE, build, random_bundle

KINDS = ("rank_anchored", "official_flat")


@pytest.fixture(scope="module")
def specs(comfy_lib):
    out = {name: derive_targets(build(name)) for name in ARCHITECTURES}
    out["tiny_moe"] = derive_targets(TinyMoE())
    return out


def lora_numel(bundle):
    return sum(t[0].numel() for t in list(bundle.A.values()) + list(bundle.B.values()))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ARCHITECTURES + ("tiny_moe",))
def test_round_trip_is_bitwise(specs, arch, kind):
    spec = specs[arch]
    layout = make_layout(spec, rank=4, kind=kind)
    bundle = random_bundle(spec, rank=4, batch=2, alpha=6.0)
    tokens = layout.tokenize(bundle)
    assert tokens.shape == (2, layout.num_layers, layout.tokens_per_layer, 4, spec.gcd())
    assert layout.num_layers == len(spec.blocks)
    assert not tokens[:, ~layout.mask].any(), "padding tokens must be zero"
    assert int(layout.mask.sum()) * 4 * spec.gcd() == lora_numel(bundle), "with d = gcd no element is padding"
    assert torch.equal(layout.mask, layout.token_kind >= 0)
    back = layout.detokenize(tokens, alpha=6.0)
    assert back.alpha == 6.0 and back.rank == 4 and back.spec == spec
    for path in spec.module_paths():
        assert torch.equal(back.A[path], bundle.A[path]), path
        assert torch.equal(back.B[path], bundle.B[path]), path


@pytest.mark.parametrize("arch", ["sd15", "sdxl", "flux", "lumina2"])
def test_uneven_blocks_are_padded_and_masked_not_dropped(specs, arch):
    layout = make_layout(specs[arch], rank=4)
    per_layer = layout.mask.sum(dim=1)
    assert int(per_layer.max()) == layout.tokens_per_layer
    assert int(per_layer.min()) < layout.tokens_per_layer
    assert all(bool(layout.mask[i, :n].all()) for i, n in enumerate(per_layer.tolist())), "real tokens come first"


def test_token_dim_override(specs):
    spec = specs["flux"]                                            # gcd 32
    finer = make_layout(spec, rank=4, token_dim=16)
    assert finer.tokens_per_layer == 2 * make_layout(spec, rank=4).tokens_per_layer
    bundle = random_bundle(spec, batch=1)
    assert torch.equal(finer.detokenize(finer.tokenize(bundle), 8.0).A["single_blocks.1.linear2"],
                       bundle.A["single_blocks.1.linear2"])
    with pytest.raises(ValueError, match=r"token_dim 12 does not divide d_in=32 of double_blocks\.0\.img_mod\.lin; "
                                         r"use a divisor of 32"):
        make_layout(spec, rank=4, token_dim=12)
    flat = make_layout(spec, rank=4, kind="official_flat", token_dim=12)   # flat tiles take any width
    tokens = flat.tokenize(bundle)
    assert torch.equal(flat.detokenize(tokens, 8.0).B["double_blocks.1.txt_mlp.2"], bundle.B["double_blocks.1.txt_mlp.2"])


def test_rank_anchored_tokens_are_rank_by_segment_slices():
    """§3.4: A (r, d_in) -> d_in/d tokens A[:, t*d:(t+1)*d]; B^T (r, d_out) -> d_out/d tokens; per module A then B."""
    spec = TargetSpec((TargetBlock("blk", (TargetModule("a", 4, 6), TargetModule("e", 2, 4, experts=2))),))
    bundle = random_bundle(spec, rank=3, batch=1)
    layout = make_layout(spec, rank=3, token_dim=2)
    tokens = layout.tokenize(bundle)[0, 0]
    A, B = bundle.A["blk.a"][0], bundle.B["blk.a"][0]
    eA, eB = bundle.A["blk.e"][0], bundle.B["blk.e"][0]
    expected = [A[:, 0:2], A[:, 2:4], B[0:2].T, B[2:4].T, B[4:6].T,
                eA[0], eB[0, 0:2].T, eB[0, 2:4].T, eA[1], eB[1, 0:2].T, eB[1, 2:4].T]
    assert tokens.shape == (11, 3, 2)
    for t, want in enumerate(expected):
        assert torch.equal(tokens[t], want), t
    assert layout.token_kind[0].tolist() == [0, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1]


OFFICIAL_CONFIG = {"prefix": "layers.", "num_base_model_layers": 2, "pg_mapping": {
    "q": {"lora_A_dim": 4, "lora_B_dim": 6},
    "ex": {"type": "grouped", "num_experts": 2, "sub_weights": {"w1": {"lora_A_dim": 4, "lora_B_dim": 3}}},
    "o": {"lora_A_dim": 5, "lora_B_dim": 4}}}

# Layer 0 of the official tokens for rank 2, token_dim 3, each matrix's element = code + its row-major
# index (q.A 100, ex.w1.A 200, o.A 300, q.B 400, ex.w1.B 500, o.B 600), worked out by hand from the
# release's Tokenizer2DBatchedLoRA: A matrices in pg_mapping order, then B matrices; each matrix
# flattened and cut into 2 x 3 tiles, its last tile zero-padded.
OFFICIAL_LAYER0 = [
    [[100, 101, 102], [103, 104, 105]], [[106, 107, 0], [0, 0, 0]],                                   # q.lora_A (2, 4)
    [[200, 201, 202], [203, 204, 205]], [[206, 207, 208], [209, 210, 211]],
    [[212, 213, 214], [215, 0, 0]],                                                                  # ex.w1.lora_A (2, 2, 4)
    [[300, 301, 302], [303, 304, 305]], [[306, 307, 308], [309, 0, 0]],                              # o.lora_A (2, 5)
    [[400, 401, 402], [403, 404, 405]], [[406, 407, 408], [409, 410, 411]],                          # q.lora_B (6, 2)
    [[500, 501, 502], [503, 504, 505]], [[506, 507, 508], [509, 510, 511]],                          # ex.w1.lora_B (2, 3, 2)
    [[600, 601, 602], [603, 604, 605]], [[606, 607, 0], [0, 0, 0]],                                  # o.lora_B (4, 2)
]


def coded_bundle(spec, rank, codes, batch=2):
    """Factors whose elements are code + row-major index (+1000 per layer, +10000 per batch row)."""
    A, B = {}, {}
    for layer, block in enumerate(spec.blocks):
        for m in block.modules:
            path = block.path(m.name)
            for factor, out, shape in zip("AB", (A, B), factor_shapes(m, rank)):
                base = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
                out[path] = torch.stack([base + codes[f"{m.name}.{factor}"] + 1000 * layer + 10000 * n
                                         for n in range(batch)])
    return LoRABundle(spec, rank, 2.0, A, B)


def test_official_flat_layout_matches_the_release_by_hand():
    spec = TargetSpec.from_pg_config(OFFICIAL_CONFIG)
    codes = {"q.A": 100, "ex.w1.A": 200, "o.A": 300, "q.B": 400, "ex.w1.B": 500, "o.B": 600}
    layout = make_layout(spec, rank=2, kind="official_flat", token_dim=3)
    tokens = layout.tokenize(coded_bundle(spec, 2, codes))
    assert tokens.shape == (2, 2, 13, 2, 3)
    expected = torch.tensor(OFFICIAL_LAYER0, dtype=torch.float32)
    pad = torch.tensor(OFFICIAL_LAYER0) == 0
    for layer in range(2):
        for n in range(2):
            assert torch.equal(tokens[n, layer], torch.where(pad, 0.0, expected + 1000 * layer + 10000 * n))
    assert layout.token_kind.tolist() == [[0] * 7 + [1] * 6] * 2      # the release's lora_A/B_token_count: 7, 6
    assert bool(layout.mask.all())
    # element (expert 1, rank row 0, column 2) of ex.w1.lora_A: flat index 10 -> token 2 + 1, row 1, column 1
    assert float(tokens[0, 0, 3, 1, 1]) == 210.0
    back = layout.detokenize(tokens, 2.0)
    assert torch.equal(back.A["layers.1.ex.w1"], coded_bundle(spec, 2, codes).A["layers.1.ex.w1"])


def test_official_flat_orders_modules_by_first_substring_match():
    """The release sorts by the index of the first pg_mapping name contained in the key: 'proj' claims
    'attn.proj.lora_A', which therefore sits right after 'proj.lora_A', before 'mlp.lora_A'."""
    mapping = {"proj": {"lora_A_dim": 3, "lora_B_dim": 3}, "mlp": {"lora_A_dim": 3, "lora_B_dim": 3},
               "attn.proj": {"lora_A_dim": 3, "lora_B_dim": 3}}
    spec = TargetSpec.from_pg_config({"prefix": "l.", "num_base_model_layers": 1, "pg_mapping": mapping})
    codes = {"proj.A": 1, "mlp.A": 2, "attn.proj.A": 3, "proj.B": 4, "mlp.B": 5, "attn.proj.B": 6}
    layout = make_layout(spec, rank=1, kind="official_flat", token_dim=3)
    tokens = layout.tokenize(coded_bundle(spec, 1, codes, batch=1))
    assert tokens[0, 0, :, 0, 0].tolist() == [1, 3, 2, 4, 6, 5]


def test_layout_json_round_trip_and_checks(specs):
    spec = specs["sdxl"]
    for kind in KINDS:
        layout = make_layout(spec, rank=4, kind=kind, token_dim=8)
        again = ParameterLayout.from_json(layout.to_json(), spec)
        assert (again.kind, again.token_shape) == (kind, layout.token_shape)
        assert torch.equal(again.token_kind, layout.token_kind)
    with pytest.raises(ValueError, match="come from different generators"):
        ParameterLayout.from_json(make_layout(specs["sd15"], rank=4).to_json(), spec)


def test_bad_input_is_named(specs):
    spec = specs["wan21"]
    layout = make_layout(spec, rank=4)
    with pytest.raises(ValueError, match=r"do not fit this layout: expected \(N, 2, 22, 4, 32\)"):
        layout.detokenize(torch.zeros(1, 2, 21, 4, 32), 1.0)
    with pytest.raises(ValueError, match="different target spec"):
        layout.tokenize(random_bundle(specs["flux"]))
    with pytest.raises(ValueError, match="has rank 8, the layout rank 4"):
        layout.tokenize(random_bundle(spec, rank=8))
    with pytest.raises(ValueError, match="unknown parameter layout 'flat'"):
        make_layout(spec, 4, kind="flat")


def test_half_precision_round_trip(specs):
    spec = specs["qwen_image"]
    bundle = random_bundle(spec, batch=3, dtype=torch.bfloat16)
    for kind in KINDS:
        layout = make_layout(spec, rank=4, kind=kind)
        tokens = layout.tokenize(bundle)
        assert tokens.dtype == torch.bfloat16
        back = layout.detokenize(tokens, 8.0)
        assert all(torch.equal(back.B[p], bundle.B[p]) for p in spec.module_paths())
