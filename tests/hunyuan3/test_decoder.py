"""The decoder trunk (hywu_core.hunyuan3.decoder, moe, rope) against the reference's recorded tensors.

tests/data/hunyuan3/ holds the tiny checkpoint and what the reference computed with it: the edit run's sequence
(`inputs.*`: 2D RoPE image sections and positions, cos / sin, the attention mask, the generated image's slots),
one denoising step's trunk input and every decoder layer's output (`step.*`), and the img_ratio prefill's last
layer output with ln_f's output at its last 64 positions and the last position's logits (`condition.*`).
"""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hywu_core.hunyuan3.config import open_folder
from hywu_core.hunyuan3.decoder import (
    DecoderTrunk,
    KVCache,
    build_lm_head,
    gather_tokens,
)
from hywu_core.hunyuan3.moe import MLP, MoE, feed_forward
from hywu_core.hunyuan3.rope import rope_cos_sin, rope_positions
from tests.hunyuan3.helpers import DATA


def max_diff(a, b):
    return (a - b).abs().max().item()


def assert_close(ours, theirs, atol=1e-5):
    """Max abs diff within atol relative to the reference's scale (at least 1)."""
    assert ours.shape == theirs.shape
    assert max_diff(ours, theirs) <= atol * max(1.0, theirs.abs().max().item())


@pytest.fixture(scope="module")
def folder():
    return open_folder(str(DATA / "tiny_model"))


@pytest.fixture(scope="module")
def ref():
    manifest = json.loads((DATA / "reference.json").read_text())
    return manifest, load_file(str(DATA / "reference.safetensors"))


def unpack_mask(manifest, tensors, name):
    shape = manifest["tensors"][name]["unpacked_shape"]
    bits = np.unpackbits(tensors[name].to(torch.uint8).numpy(), axis=-1, count=shape[-1], bitorder="little")
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


@pytest.fixture(scope="module")
def trunk(folder):
    model = DecoderTrunk(folder.config).eval()
    model.load_state_dict(folder.state_dict("model."), strict=True)
    return model


@pytest.fixture(scope="module")
def step(ref):
    """The denoising step's trunk inputs for both CFG rows: embeddings, mask, rope positions, cos / sin."""
    manifest, t = ref
    embeds = t["step.inputs_embeds"]
    rows = embeds.shape[0]
    mask = unpack_mask(manifest, t, "inputs.attention_mask").expand(rows, -1, -1, -1)
    return {"embeds": embeds, "mask": mask, "positions": t["inputs.rope_pos_yx"],
            "cos": t["inputs.rope_cos"].expand(rows, -1, -1), "sin": t["inputs.rope_sin"].expand(rows, -1, -1)}


def test_every_trunk_key_of_the_checkpoint_loads_strictly(folder):
    trunk = DecoderTrunk(folder.config)
    result = trunk.load_state_dict(folder.state_dict("model."), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(trunk.state_dict()) == {k[len("model."):] for k in folder.keys("model.")}
    head = build_lm_head(folder.config)
    head.load_state_dict(folder.state_dict("lm_head."), strict=True)


def test_rope_positions_and_tables_match_the_reference(ref, trunk):
    _, t = ref
    for row, sections in zip(t["inputs.rope_pos_yx"], t["inputs.rope_image_info"]):
        blocks = [(start, h, w) for start, _, h, w in sections.tolist()]
        assert torch.equal(rope_positions(row.shape[0], blocks), row)
    cos, sin = trunk.rope(t["inputs.rope_pos_yx"][:1])
    assert max_diff(cos, t["inputs.rope_cos"]) == 0 and max_diff(sin, t["inputs.rope_sin"]) == 0


def test_rope_positions_worked_example():
    """A 2 x 3 block at index 2 spans indices 2..7; its grid sits at y0 = 2 + (6 - 2) // 2, x0 = 2 + (6 - 3) // 2;
    text resumes at 8."""
    positions = rope_positions(10, [(2, 2, 3)])
    assert positions[:, 0].tolist() == [0, 1, 4, 4, 4, 5, 5, 5, 8, 9]
    assert positions[:, 1].tolist() == [0, 1, 3, 4, 5, 3, 4, 5, 8, 9]


def test_every_layer_matches_the_reference(ref, trunk, step):
    _, t = ref
    with torch.no_grad():
        out = trunk(step["embeds"], step["mask"], step["cos"], step["sin"], return_layers=True)
    for i, layer_out in enumerate(out.layers):
        assert_close(layer_out, t[f"step.model.layers.{i}.call0.output"])
    assert torch.equal(out.last_layer, out.layers[-1])
    assert_close(out.normed, trunk.ln_f(out.last_layer))


def test_final_norm_and_text_head_match_the_reference(ref, folder, trunk):
    _, t = ref
    head = build_lm_head(folder.config)
    head.load_state_dict(folder.state_dict("lm_head."))
    with torch.no_grad():
        normed = trunk.ln_f(t["condition.hidden_states"])
        last = t["condition.ln_f.output_last64"]
        assert_close(normed[:, -last.shape[1]:], last)
        assert_close(head(normed[:, -1]), t["condition.last_logits"])


def image_step_indices(ref):
    """The tokens the release recomputes after step 0: the generated image's <timestep>, then its image tokens."""
    _, t = ref
    image_mask = t["inputs.image_mask"].bool()
    image = torch.stack([row.nonzero().flatten() for row in image_mask])
    return torch.cat([t["inputs.timesteps_index"][:, -1:], image], dim=1)


def test_cached_image_step_equals_a_full_recompute(ref, trunk, step):
    indices = image_step_indices(ref)
    seq_len = step["embeds"].shape[1]
    assert indices[:, -1].max() < seq_len - 1, "the recomputed tokens are not a suffix: <eoi> follows the image"
    embeds = step["embeds"].clone()
    fresh = torch.randn(indices.shape + embeds.shape[-1:], generator=torch.Generator().manual_seed(3))
    embeds.scatter_(1, indices[..., None].expand_as(fresh), fresh)
    positions = gather_tokens(step["positions"], indices, 1)
    cos, sin = trunk.rope(positions)
    cache = KVCache()
    with torch.no_grad():
        trunk(step["embeds"], step["mask"], step["cos"], step["sin"], kv_cache=cache)
        for _ in range(2):      # the cache stays valid across steps: the same tokens are rewritten each time
            cached = trunk(fresh, gather_tokens(step["mask"], indices, 2), cos, sin, kv_cache=cache, indices=indices)
        full = trunk(embeds, step["mask"], step["cos"], step["sin"])
    assert cache.length == seq_len
    assert max_diff(cached.last_layer, gather_tokens(full.last_layer, indices, 1)) < 1e-5
    assert max_diff(cached.normed, gather_tokens(full.normed, indices, 1)) < 1e-5


def test_cache_appends_tokens_like_text_decoding(trunk):
    gen = torch.Generator().manual_seed(5)
    embeds = torch.randn(2, 12, trunk.ln_f.weight.shape[0], generator=gen)
    causal = torch.ones(12, 12, dtype=torch.bool).tril()[None, None].expand(2, -1, -1, -1)
    cos, sin = trunk.rope(rope_positions(12))
    cache = KVCache()
    with torch.no_grad():
        full = trunk(embeds, causal, cos, sin).last_layer
        trunk(embeds[:, :8], causal[..., :8, :8], cos[:8], sin[:8], kv_cache=cache)
        for start, stop in ((8, 9), (9, 12)):
            indices = torch.arange(start, stop).expand(2, -1)
            out = trunk(embeds[:, start:stop], causal[..., start:stop, :stop], cos[start:stop], sin[start:stop],
                        kv_cache=cache, indices=indices)
            assert max_diff(out.last_layer, full[:, start:stop]) < 1e-5
    assert cache.length == 12


def test_query_heads_read_their_own_kv_head(folder):
    """Query head h of KV head h // groups: per KV head, qkv_proj rows hold [groups query heads, key, value]."""
    config = dict(folder.config, use_rotary_pos_emb=False, use_qk_norm=False)
    attn = DecoderTrunk(config).layers[0].self_attn
    torch.nn.init.normal_(attn.qkv_proj.weight)
    heads, kv_heads, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
    groups = heads // kv_heads
    assert groups > 1
    x = torch.randn(2, 5, config["hidden_size"])
    mask = torch.ones(5, 5, dtype=torch.bool).tril()[None, None].expand(2, -1, -1, -1)
    w = attn.qkv_proj.weight.view(kv_heads, groups + 2, d, -1)
    outs = []
    for h in range(heads):
        kv, j = divmod(h, groups)
        q, k, v = x @ w[kv, j].T, x @ w[kv, groups].T, x @ w[kv, groups + 1].T
        scores = (q @ k.transpose(1, 2) / d ** 0.5).masked_fill(~mask[:, 0], float("-inf"))
        outs.append(scores.softmax(-1) @ v)
    expected = attn.o_proj(torch.cat(outs, dim=-1))
    with torch.no_grad():
        assert max_diff(attn(x, mask), expected) < 1e-5


def test_moe_matches_a_per_token_loop_for_any_batch(folder):
    moe = feed_forward(folder.config, 0)
    assert isinstance(moe, MoE)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.3)
    top_k = folder.config["moe_topk"]
    for shape in ((1, 1), (3, 7), (2, 40)):
        x = torch.randn(*shape, folder.config["hidden_size"])
        expected = []
        for token in x.reshape(-1, x.shape[-1]):
            probs = moe.gate.wg(token.float()).softmax(-1)
            weights, chosen = probs.topk(top_k)
            weights = weights / weights.sum()
            routed = sum(w * moe.experts[int(e)](token) for w, e in zip(weights, chosen))
            expected.append(moe.shared_mlp(token) + routed)
        with torch.no_grad():
            assert_close(moe(x), torch.stack(expected).view_as(x))


def test_dense_layers_before_the_first_moe_layer(folder):
    config = dict(folder.config, moe_layer_num_skipped=1)
    assert isinstance(feed_forward(config, 0), MLP) and isinstance(feed_forward(config, 1), MoE)
    keys = set(DecoderTrunk(config).layers[0].mlp.state_dict())
    assert keys == {"gate_and_up_proj.weight", "down_proj.weight"}


def test_router_stays_float32_in_a_bfloat16_model(folder):
    trunk = DecoderTrunk(folder.config, dtype=torch.bfloat16)
    assert trunk.layers[0].mlp.gate.wg.weight.dtype == torch.float32
    assert trunk.layers[0].mlp.experts[0].down_proj.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"moe_topk": 9}, "moe_topk"),
    ({"norm_type": "batch"}, "norm_type"),
    ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
])
def test_unsupported_configs_are_named(folder, change, message):
    with pytest.raises(ValueError, match=message):
        DecoderTrunk(dict(folder.config, **change))


def test_rope_errors():
    with pytest.raises(ValueError, match="past the sequence length"):
        rope_positions(10, [(5, 2, 3)])
    with pytest.raises(ValueError, match="divisible by 4"):
        rope_cos_sin(torch.zeros(3, 2, dtype=torch.long), 6)


def test_cache_misuse_is_refused(trunk):
    x = torch.randn(1, 4, trunk.ln_f.weight.shape[0])
    mask = torch.ones(4, 4, dtype=torch.bool).tril()[None, None]
    cos, sin = trunk.rope(rope_positions(4))
    one = torch.tensor([[3]])
    with pytest.raises(ValueError, match="empty"):
        trunk(x[:, :1], mask[..., :1, :], cos[:1], sin[:1], kv_cache=KVCache(), indices=one)
    with pytest.raises(ValueError, match="pass kv_cache"):
        trunk(x[:, :1], mask[..., :1, :], cos[:1], sin[:1], indices=one)
    with pytest.raises(ValueError, match="attention_mask must end in"):
        trunk(x, mask[..., :3], cos, sin)
    cache = KVCache()
    trunk(x, mask, cos, sin, kv_cache=cache)
    with pytest.raises(ValueError, match="without a gap"):
        trunk(x[:, :1], torch.ones(1, 1, 1, 6, dtype=torch.bool), cos[:1], sin[:1], kv_cache=cache,
              indices=torch.tensor([[5]]))
    with pytest.raises(ValueError, match="distinct"):
        trunk(x[:, :2], mask[..., :2, :], cos[:2], sin[:2], kv_cache=cache, indices=torch.tensor([[1, 1]]))
    with pytest.raises(ValueError, match="indices must be int64 of shape"):
        trunk(x[:, :1], mask[..., :1, :], cos[:1], sin[:1], kv_cache=cache, indices=torch.tensor([[1, 2]]))
