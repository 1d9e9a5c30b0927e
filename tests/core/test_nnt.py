"""The NNT (paper §3.5): shapes, padding, batching, masks, RoPE, zero-init of the B head."""
import copy

import pytest
import torch

from hywu_core.condition import Condition
from hywu_core.generator import Generator
from hywu_core.nnt import NNT, Attention, FeedForward, NNTConfig, apply_rope, rope_angles
from hywu_core.targets import derive_targets
from hywu_core.tokenizer import make_layout

from .helpers import randomize_b_head, small_generator


def test_tokens_shape_padding_exactly_zero_and_heads_by_token_kind(generator):
    layout = generator.layout
    tokens = generator.nnt(torch.randn(3, 5, 12))
    assert tokens.shape == (3, layout.num_layers, layout.tokens_per_layer, layout.rank, layout.token_dim)
    assert not bool(layout.mask.all()), "the spec must produce padding for this test to mean anything"
    assert torch.equal(tokens[:, ~layout.mask], torch.zeros_like(tokens[:, ~layout.mask]))
    assert bool((tokens[:, layout.mask] != 0).all())


@pytest.mark.parametrize("variant", [{}, {"attention": "full"}, {"positions": "official", "width": 32, "rank_group": 2}])
def test_batched_generation_equals_one_condition_at_a_time(variant):
    gen = small_generator(**variant).eval()
    randomize_b_head(gen)
    cond = torch.randn(3, 5, 12)
    with torch.no_grad():
        batched = gen.nnt(cond)
        single = torch.cat([gen.nnt(cond[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(batched[0], batched[1]), "different conditions must give different LoRAs"


def test_fresh_generator_has_b_exactly_zero_and_a_nonzero():
    bundle = small_generator()(Condition.from_tensors(torch.randn(2, 5, 12)))
    for path in bundle.A:
        assert torch.equal(bundle.B[path], torch.zeros_like(bundle.B[path])), path
        assert bool(bundle.A[path].abs().sum() > 0), path
        assert torch.equal(bundle.B[path] @ bundle.A[path], torch.zeros_like(bundle.B[path] @ bundle.A[path]))


def test_masked_condition_tokens_are_ignored(generator):
    cond = torch.randn(2, 6, 12)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    changed = cond.clone()
    changed[0, 4:] = 100.0
    with torch.no_grad():
        a, b = generator.nnt(cond, mask), generator.nnt(changed, mask)
        unmasked = generator.nnt(changed)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.allclose(a[0], unmasked[0], atol=1e-3)


def test_condition_shape_and_empty_mask_errors(generator):
    with pytest.raises(ValueError, match=r"condition must have shape \(N, L, 12\)"):
        generator.nnt(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="no real token"):
        generator.nnt(torch.randn(2, 3, 12), torch.tensor([[1, 1, 1], [0, 0, 0]], dtype=torch.bool))


def test_gradients_reach_every_parameter_and_are_finite_with_padding(generator):
    generator.train()
    tokens = generator.nnt(torch.randn(2, 5, 12), torch.tensor([[1, 1, 1, 0, 0], [1] * 5], dtype=torch.bool))
    tokens.square().sum().backward()
    for name, p in generator.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert bool(p.grad.abs().sum() > 0), f"{name} gets no gradient"


def test_rope_is_a_rotation_with_relative_positions():
    q, k = torch.randn(1, 4, 12), torch.randn(1, 4, 12)
    axes = [4, 4, 4]
    positions = torch.tensor([[0, 1, 2], [3, 0, 1], [5, 5, 5], [1, 2, 3]])
    rq = apply_rope(q, rope_angles(positions, axes, 10000.0))
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    shifted = positions + torch.tensor([7, 2, 4])     # shifting every index changes no attention score
    scores = apply_rope(q, rope_angles(positions, axes, 1e4)) @ apply_rope(k, rope_angles(positions, axes, 1e4)).mT
    scores_shifted = apply_rope(q, rope_angles(shifted, axes, 1e4)) @ apply_rope(k, rope_angles(shifted, axes, 1e4)).mT
    torch.testing.assert_close(scores, scores_shifted, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(scores, q @ k.mT, atol=1e-3)


def test_independent_rope_axes_layer_token_rank():
    """§3.5: each of the l, s, r indices rotates its own channel pairs; the factorized attentions use
    the same angles as the full one, restricted to the axis they attend over."""
    nnt = small_generator(width=36, heads=2).nnt                       # head size 18: 9 pairs, 3 per axis
    rope = nnt.position_angles(cond_len=5, device="cpu")
    full = rope["full"].reshape(nnt.l, nnt.s, nnt.r, 9)
    by_axis = {"layer": full[..., 0:3], "token": full[..., 3:6], "rank": full[..., 6:9]}
    for axis, dim in (("layer", 0), ("token", 1), ("rank", 2)):
        angles = by_axis[axis]
        assert not torch.equal(angles.select(dim, 0), angles.select(dim, 1)), f"{axis} index does not rotate its pairs"
        for other in {0, 1, 2} - {dim}:
            assert torch.equal(angles, angles.select(other, 0).unsqueeze(other).expand_as(angles)), (
                f"{axis} pairs also depend on axis {other}")
    torch.testing.assert_close(rope["inter"], rope["full"].reshape(nnt.l, -1, 9)[:, 0])
    torch.testing.assert_close(rope["intra"][:, 3:], rope["full"].reshape(nnt.l, -1, 9)[0, :, 3:])
    assert torch.equal(rope["intra"][:, :3], torch.zeros_like(rope["intra"][:, :3]))
    assert rope["cross_q"] is None and rope["cross_k"] is None


def test_full_attention_is_the_same_model_with_one_self_attention():
    fact, full = small_generator(), small_generator(attention="full")
    assert type(fact.nnt) is type(full.nnt) is NNT
    n_fact = sum(p.numel() for p in fact.nnt.parameters())
    n_full = sum(p.numel() for p in full.nnt.parameters())
    attention_params = 4 * (24 * 24 + 24) + 24      # one attention + its RMSNorm, per block
    assert n_fact - n_full == 2 * attention_params


@pytest.mark.parametrize("bad, message", [
    (dict(width=25, heads=2), "not divisible by heads"),
    (dict(attention="sparse"), "attention='sparse'"),
    (dict(positions="official", attention="full"), "official position scheme is factorized"),
    (dict(width=8, heads=2), "at least 6"),
])
def test_config_errors_name_the_problem(bad, message):
    with pytest.raises(ValueError, match=message):
        NNTConfig(**(dict(cond_dim=4, width=24, heads=2) | bad))


def tiny_sd3_mmdit(comfy):
    """ComfyUI's SD3 MMDiT at a tiny size (2 joint blocks, hidden 128) with random weights."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

    torch.manual_seed(0)
    model = OpenAISignatureMMDITWrapper(
        input_size=None, patch_size=2, in_channels=4, depth=2, num_patches=64, pos_embed_max_size=8,
        adm_in_channels=8, context_embedder_config={"target": "torch.nn.Linear",
                                                    "params": {"in_features": 16, "out_features": 128}},
        dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:        # comfy leaves both uninitialised
            tensor.normal_(0.0, 0.05)
    return model.eval()


def with_lora_merged(model, bundle, item=0):
    """A copy of `model` with W + scale * B @ A in every target Linear."""
    patched = copy.deepcopy(model)
    with torch.no_grad():
        for path in bundle.A:
            weight = patched.get_submodule(path).weight
            weight.copy_(weight + bundle.scale * (bundle.B[path][item] @ bundle.A[path][item]))
    return patched


def test_fresh_generator_leaves_a_comfy_mmdit_bitwise_unchanged(comfy_lib):
    model = tiny_sd3_mmdit(comfy_lib)
    layout = make_layout(derive_targets(model), 4)
    generator = Generator(NNTConfig(cond_dim=16, width=24, depth=1, heads=2), layout, alpha=4.0).eval()
    x, t, context, y = torch.randn(1, 4, 8, 8), torch.tensor([0.5]), torch.randn(1, 5, 16), torch.randn(1, 8)
    with torch.no_grad():
        base = model(x, t, context=context, y=y)
        assert bool(torch.isfinite(base).all())
        fresh = generator(Condition.from_tensors(torch.randn(1, 3, 16)))
        assert torch.equal(with_lora_merged(model, fresh)(x, t, context=context, y=y), base)
        randomize_b_head(generator)
        trained = generator(Condition.from_tensors(torch.randn(1, 3, 16)))
        assert not torch.equal(with_lora_merged(model, trained)(x, t, context=context, y=y), base)


def test_fresh_nnt_b_head_is_exactly_zero_and_a_head_is_not():
    nnt = small_generator().nnt
    assert torch.equal(nnt.head_B.weight, torch.zeros_like(nnt.head_B.weight))
    assert torch.equal(nnt.head_B.bias, torch.zeros_like(nnt.head_B.bias))
    assert bool((nnt.head_A.weight != 0).all())
    with torch.no_grad():
        tokens = nnt(torch.randn(2, 5, 12)).flatten(1, 2)             # (N, l*s, r, d)
    kind = nnt.token_kind.reshape(-1)
    assert torch.equal(tokens[:, kind == 1], torch.zeros_like(tokens[:, kind == 1]))
    assert bool((tokens[:, kind == 0] != 0).all())


@pytest.mark.parametrize("variant", [{}, {"attention": "full"}, {"positions": "official", "width": 32, "rank_group": 2}])
def test_every_attention_is_one_sdpa_call_over_its_whole_axis(monkeypatch, variant):
    """Each attention of each block is one torch SDPA call with the batch and the other axes folded
    into SDPA's batch axis: (batch, queries, keys) = inter (N*S, l, l), intra (N*l, S, S),
    full (N, l*S, l*S), cross (N, l*S, L)."""
    import torch.nn.functional as F

    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(q, k, v, *args, **kwargs):
        calls.append((q.shape[0], q.shape[-2], k.shape[-2]))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    nnt = small_generator(**variant).nnt
    n, cond_len, l, S = 3, 5, nnt.l, nnt.S
    with torch.no_grad():
        nnt(torch.randn(n, cond_len, 12))
    if nnt.config.attention == "factorized":
        per_block = [(n * S, l, l), (n * l, S, S), (n, l * S, cond_len)]
    else:
        per_block = [(n, l * S, l * S), (n, l * S, cond_len)]
    assert calls == per_block * nnt.config.depth


@pytest.mark.parametrize("attention", ["factorized", "full"])
def test_norms_are_rmsnorm_before_every_attention_and_ffn(attention):
    """Pre-norm RMSNorm: every normalisation is nn.RMSNorm (one per attention and FFN of a block, plus
    condition, starting latent and output), and with the fresh unit weights each attention, its
    condition keys and each FFN read unit-RMS vectors."""
    nnt = small_generator(attention=attention).nnt
    norms = [m for m in nnt.modules() if "norm" in type(m).__name__.lower()]
    assert all(type(m) is torch.nn.RMSNorm and m.eps == nnt.config.norm_eps for m in norms), norms
    assert len(norms) == (4 if attention == "factorized" else 3) * nnt.config.depth + 3

    inputs = []

    def record(module, args, kwargs):
        inputs.append(args[0])
        if kwargs.get("context") is not None:
            inputs.append(kwargs["context"])

    for module in nnt.modules():
        if isinstance(module, (Attention, FeedForward)):
            module.register_forward_pre_hook(record, with_kwargs=True)
    with torch.no_grad():
        nnt(torch.randn(2, 5, 12) * 7.0)
    assert len(inputs) == (5 if attention == "factorized" else 4) * nnt.config.depth
    for x in inputs:
        torch.testing.assert_close(x.square().mean(-1).sqrt(), torch.ones(x.shape[:-1]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("variant", [{}, {"positions": "official", "width": 32, "rank_group": 2}])
def test_starting_latent_is_a_learnable_parameter_embedding(variant):
    """The latent the first block reads is the same for every condition and is built from two
    trained embeddings: one per layer (l, C/g) and one per within-layer (token, rank) index (s*r, C/g),
    giving (l, S, C) with S = s*r/g, a distinct vector at every position."""
    nnt = small_generator(**variant).nnt
    g, part = nnt.config.rank_group, nnt.config.width // nnt.config.rank_group
    parameters = dict(nnt.named_parameters())
    for name, shape in (("embed_layer.weight", (nnt.l, part)), ("embed_within.weight", (nnt.s * nnt.r, part))):
        assert parameters[name].shape == shape and parameters[name].requires_grad, name

    latent = nnt.initial_latent()
    assert latent.shape == (nnt.l, nnt.s * nnt.r // g, nnt.config.width) and nnt.S == nnt.s * nnt.r // g
    flat = latent.detach().reshape(-1, nnt.config.width)
    assert len(torch.unique(flat, dim=0)) == len(flat)

    (latent * torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert bool(nnt.embed_layer.weight.grad.abs().gt(0).all())
    assert bool(nnt.embed_within.weight.grad.abs().gt(0).all())

    seen = []
    nnt.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        nnt(torch.randn(2, 5, 12))
        nnt(torch.randn(1, 3, 12))
        expected = nnt.initial_latent()
    assert torch.equal(seen[0], expected.expand(2, -1, -1, -1))
    assert torch.equal(seen[1], expected.expand(1, -1, -1, -1))
