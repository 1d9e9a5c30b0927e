"""The decoder trunk of HunyuanImage-3 (checkpoint keys `model.wte`, `model.layers.{i}.*`, `model.ln_f`).

A parent module holds `DecoderTrunk` as `model` and the text head `build_lm_head(config)` as `lm_head` beside it,
which reproduces the checkpoint's names. The trunk does not embed or read out: the parent fills the input
embeddings (`wte` for text, image and timestep embeddings at their slots) and reads the result. The release reads
two things from the same last layer's output: the text head reads it after the final norm `ln_f`, while the image
head (final layer) and HY-WU's condition read it before.

Each decoder layer is pre-norm, with two residual branches, as the release builds it:

    h = h + self_attn(input_layernorm(h))
    h = h + mlp(post_attention_layernorm(h))          (mlp: a mixture of experts or a dense MLP, see moe.py)

Attention: one `qkv_proj` whose output holds, per KV head, its `groups` query heads, then its key, then its
value ([q * groups, k, v] per KV head); query head h uses KV head h // groups (grouped-query attention). RoPE
(rope.py) is applied before the per-head QK RMSNorm (`query_layernorm`, `key_layernorm`), as the release does,
then scaled dot-product attention under the caller's mask, then `o_proj`.

The mask is explicit: (B, 1, Q, K), boolean (True = may attend) or additive float, built by the caller; the
release attends causally, and bidirectionally inside each condition image block and the generated image block.

`KVCache` lets a call recompute only some tokens against the stored keys / values of the rest (see its docstring).
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .moe import feed_forward
from .rope import apply_rope, rope_cos_sin

RMS_NORMS = ("hf_rms", "rms")
LAYER_NORMS = ("fused", "torch_nn")


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight; the statistics in float32, the result in the input's dtype."""

    def __init__(self, size, eps=1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size, device=device, dtype=dtype))

    def forward(self, x):
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.to(x.dtype) * normed.to(x.dtype)


def _block_norm(config, ops, device, dtype):
    """The norm before attention and before the MLP: RMSNorm, or LayerNorm for the release's other norm types."""
    norm_type = config.get("norm_type", "hf_rms")
    eps = config.get("rms_norm_eps", 1e-5)
    if norm_type in RMS_NORMS:
        return RMSNorm(config["hidden_size"], eps, device=device, dtype=dtype)
    if norm_type in LAYER_NORMS:
        return ops.LayerNorm(config["hidden_size"], eps=eps, device=device, dtype=dtype)
    raise ValueError(f"norm_type {norm_type!r} is not supported; expected one of {RMS_NORMS + LAYER_NORMS}")


def head_dim(config):
    return config.get("attention_head_dim") or config["hidden_size"] // config["num_attention_heads"]


class KVCache:
    """Keys and values of every decoder layer for one batch of token sequences, so that a later call computes only
    the tokens that changed.

    A trunk call without `indices` fills it: its tokens are the whole sequence, indices 0..S-1 (a prefill; a new
    prefill replaces everything the cache held). A call with `indices` (B, Q) int64 computes only the tokens at
    those sequence indices: every layer writes their keys and values into the cache at those indices, replacing
    what was there (the cache swaps in new tensors, it never writes into old ones), and their queries attend over
    the whole cached sequence, so that call's mask is (B, 1, Q, length): the full mask's rows at `indices`
    (`gather_tokens(mask, indices, 2)`). Indices past the end grow the sequence and must continue it without a gap
    (text decoding appends a token this way). This is what the release does between denoising steps: step 0 runs
    the whole sequence, each later step recomputes the generated image's `<timestep>` and image tokens, which are
    not a suffix (`<eoi>` follows them).

    The cache cannot tell when what it holds is stale. Reusing it is right only while every entry that a recomputed
    query can see (per its mask) equals what a full recompute would give now:
    - the same tokens and input embeddings at every index that is not recomputed, and the same rope positions;
    - the same weights: changing weights, a LoRA or any other patch (e.g. the LoRA HY-WU writes per input) makes
      every entry stale; the caller must drop the cache (or prefill again) whenever that happens;
    - the same batch rows in the same order.
    Entries that depend on recomputed tokens but that the mask hides from them go stale harmlessly, as in the
    release: `<eoi>` after the generated image keeps step 0's keys and values, and the causal mask hides it from
    the image and `<timestep>` queries.
    """

    def __init__(self):
        self.keys, self.values = {}, {}
        self.length = 0
        self.batch_size = None

    def begin(self, batch_size, num_tokens, indices=None):
        """Called by the trunk once per forward, before the layers: set the sequence length this call attends
        over, and check `indices`."""
        if indices is None:
            self.keys.clear()
            self.values.clear()
            self.length, self.batch_size = num_tokens, batch_size
            return
        if not self.keys:
            raise ValueError("this KVCache is empty: run the whole sequence once (without indices) to fill it")
        if indices.dtype != torch.int64 or indices.shape != (self.batch_size, num_tokens):
            raise ValueError(f"indices must be int64 of shape (batch {self.batch_size}, tokens {num_tokens}) for this "
                             f"cache, got {tuple(indices.shape)} {indices.dtype}")
        ordered = indices.sort(dim=1).values
        length = max(self.length, int(ordered[:, -1].max()) + 1)
        valid = ((ordered[:, 0] >= 0).all() & (ordered[:, 1:] > ordered[:, :-1]).all()
                 & ((ordered >= self.length).sum(dim=1) == length - self.length).all())
        if not valid:
            raise ValueError(f"indices must be distinct, non-negative, and extend the cached {self.length} tokens "
                             "without a gap")
        self.length = length

    def update(self, layer_idx, keys, values, indices=None):
        """Store (or, with `indices`, write in) one layer's (B, kv_heads, Q, head_dim) keys / values; return the
        layer's keys / values over the whole cached sequence."""
        if indices is None:
            self.keys[layer_idx], self.values[layer_idx] = keys.contiguous(), values.contiguous()
            return keys, values
        index = indices[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
        for store, new in ((self.keys, keys), (self.values, values)):
            held = store[layer_idx]
            if held.shape[2] < self.length:
                held = F.pad(held, (0, 0, 0, self.length - held.shape[2]))
            store[layer_idx] = held.scatter(2, index, new.to(held.dtype))
        return self.keys[layer_idx], self.values[layer_idx]


def gather_tokens(x, indices, dim):
    """Per batch row, the entries of `x` at sequence `indices` (B, Q) along `dim`: a (B, 1, S, K) mask with dim 2
    gives its rows (B, 1, Q, K); a (B, S, 2) rope position table with dim 1 gives (B, Q, 2)."""
    shape = [1] * x.dim()
    shape[0], shape[dim] = indices.shape
    index = indices.view(shape).expand(*x.shape[:dim], indices.shape[1], *x.shape[dim + 1:])
    return x.gather(dim, index)


class Attention(nn.Module):
    def __init__(self, config, layer_idx, ops=nn, device=None, dtype=None):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config["num_attention_heads"]
        self.num_kv_heads = config.get("num_key_value_heads") or self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads "
                             f"({self.num_kv_heads})")
        self.groups = self.num_heads // self.num_kv_heads
        self.head_dim = head_dim(config)
        self.use_rope = config.get("use_rotary_pos_emb", True)
        hidden, bias = config["hidden_size"], config.get("attention_bias", False)
        factory = {"device": device, "dtype": dtype}
        qkv_size = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.qkv_proj = ops.Linear(hidden, qkv_size, bias=bias, **factory)
        self.o_proj = ops.Linear(self.num_heads * self.head_dim, hidden, bias=bias, **factory)
        self.qk_norm = config.get("use_qk_norm", False)
        if self.qk_norm:
            eps = config.get("rms_norm_eps", 1e-5)
            self.query_layernorm = RMSNorm(self.head_dim, eps, **factory)
            self.key_layernorm = RMSNorm(self.head_dim, eps, **factory)

    def split_heads(self, qkv):
        """(B, Q, qkv_size) -> q (B, heads, Q, head_dim), k and v (B, kv_heads, Q, head_dim), from the per-KV-head
        [q * groups, k, v] layout."""
        b, n, _ = qkv.shape
        per_kv = qkv.view(b, n, self.num_kv_heads, self.groups + 2, self.head_dim)
        q = per_kv[:, :, :, :self.groups].reshape(b, n, self.num_heads, self.head_dim)
        k, v = per_kv[:, :, :, self.groups], per_kv[:, :, :, self.groups + 1]
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x, mask, cos=None, sin=None, cache=None, indices=None):
        b, n, _ = x.shape
        q, k, v = self.split_heads(self.qkv_proj(x))
        if self.use_rope:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.qk_norm:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k = q.to(v.dtype), k.to(v.dtype)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v, indices)
            q = q.to(k.dtype)
        k = k.repeat_interleave(self.groups, dim=1)
        v = v.repeat_interleave(self.groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx, ops=nn, device=None, dtype=None):
        super().__init__()
        self.input_layernorm = _block_norm(config, ops, device, dtype)
        self.self_attn = Attention(config, layer_idx, ops=ops, device=device, dtype=dtype)
        self.post_attention_layernorm = _block_norm(config, ops, device, dtype)
        self.mlp = feed_forward(config, layer_idx, ops=ops, device=device, dtype=dtype)

    def forward(self, h, mask, cos=None, sin=None, cache=None, indices=None):
        h = h + self.self_attn(self.input_layernorm(h), mask, cos, sin, cache, indices)
        return h + self.mlp(self.post_attention_layernorm(h))


class TrunkOutput(NamedTuple):
    normed: torch.Tensor        # ln_f(last_layer): what lm_head reads
    last_layer: torch.Tensor    # the last decoder layer's output, before ln_f: the image head's and HY-WU's input
    layers: tuple = None        # every decoder layer's output, in order, when asked for


class DecoderTrunk(nn.Module):
    """`wte`, `layers`, `ln_f` of config.json (a dict), built through `ops` (torch.nn by default)."""

    def __init__(self, config, ops=nn, device=None, dtype=None):
        super().__init__()
        self.head_dim = head_dim(config)
        self.rope_theta = config.get("rope_theta", 10000.0)
        hidden = config["hidden_size"]
        self.wte = ops.Embedding(config["vocab_size"], hidden, padding_idx=config.get("pad_token_id", 0),
                                 device=device, dtype=dtype)
        self.layers = nn.ModuleList(DecoderLayer(config, i, ops=ops, device=device, dtype=dtype)
                                    for i in range(config["num_hidden_layers"]))
        self.ln_f = RMSNorm(hidden, config.get("rms_norm_eps", 1e-5), device=device, dtype=dtype)

    def rope(self, positions):
        """(..., 2) (y, x) rope positions (rope.rope_positions, or rows of it) -> cos, sin (..., head_dim)."""
        return rope_cos_sin(positions, self.head_dim, self.rope_theta)

    def forward(self, inputs_embeds, attention_mask, cos=None, sin=None, kv_cache=None, indices=None,
                return_layers=False):
        """inputs_embeds (B, Q, hidden); attention_mask (B, 1, Q, K) bool or additive, or None to attend to every
        key; cos / sin (B, Q, head_dim) or (Q, head_dim) float32 of the Q tokens (`rope`).

        Without a cache the Q tokens are the whole sequence and K = Q. With `kv_cache` and no `indices` the call
        also fills the cache; with `indices` (B, Q), the sequence indices of the Q tokens, it computes only those
        against the cache (K = the cached length, see KVCache)."""
        b, n, _ = inputs_embeds.shape
        if kv_cache is not None:
            kv_cache.begin(b, n, indices)
        elif indices is not None:
            raise ValueError("indices select tokens of a KVCache; pass kv_cache too")
        keys = kv_cache.length if kv_cache is not None else n
        if attention_mask is not None and tuple(attention_mask.shape[-2:]) != (n, keys):
            raise ValueError(f"attention_mask must end in (queries {n}, keys {keys}), got "
                             f"{tuple(attention_mask.shape)}")
        h = inputs_embeds
        layers = []
        for layer in self.layers:
            h = layer(h, attention_mask, cos, sin, kv_cache, indices)
            if return_layers:
                layers.append(h)
        return TrunkOutput(self.ln_f(h), h, tuple(layers) if return_layers else None)


def build_lm_head(config, ops=nn, device=None, dtype=None):
    """The text head `lm_head` (a top-level checkpoint key, beside `model`): hidden -> vocab logits, no bias.
    Apply it to `TrunkOutput.normed`."""
    return ops.Linear(config["hidden_size"], config["vocab_size"], bias=False, device=device, dtype=dtype)
