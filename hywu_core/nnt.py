"""The Neural Network Transformer (NNT): condition U -> parameter tokens T (paper §3.5).

The latent starts as learnable parameter embeddings (one per layer and per within-layer position)
and goes through `depth` pre-norm blocks:

    x = x + InterLayerAttention(RMSNorm(x))      over l, for every within-layer position
    x = x + IntraLayerAttention(RMSNorm(x))      over the within-layer axis (s * r), for every layer
    x = x + CrossAttention(RMSNorm(x), U)        every latent position reads the condition
    x = x + FFN(RMSNorm(x))

(the order of the two self-attentions is the public release's). Separate output heads map the
latent to A tokens and B tokens; the B head starts at zero, so a fresh NNT generates B == 0 and
the adapted backbone starts exactly at the base model.

Latent shape (N, l, S, C): S = s * r / g, where g = `rank_group` rank rows share one latent
vector of width C (g * C/g channels; the release's `dim_accumulation`). g = 1 gives one latent
per (layer, token, rank) index as in §3.5.

Two position schemes (`positions`):
- "independent" (ours, §3.5): independent RoPE on the layer, token and rank indices, each axis on
  its own third of every head's channels; no RoPE in the cross-attention.
- "official" (the public HY-WU release): inter-layer RoPE on the layer index, intra-layer 2D RoPE
  on (token, rank group), cross-attention queries at (layer, within-layer index) and condition
  keys on the diagonal (i + o, i + o) with o = max(s, r / g).

`attention="full"` replaces the two factorized self-attentions by one self-attention over all
l * S latent positions (kept to measure what factorization saves, see hywu_core.bench.attention).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

ATTENTIONS = ("factorized", "full")
POSITIONS = ("independent", "official")


@dataclass
class NNTConfig:
    """Size and variant of an NNT; the token shape (l, s, r, d) comes from the parameter layout."""

    cond_dim: int                       # D, channels of the condition U
    width: int = 256                    # C, latent channels
    depth: int = 4                      # number of blocks
    heads: int = 4
    ffn_dim: int = 0                    # 0 means 4 * width
    rank_group: int = 1                 # g, rank rows per latent vector (release: dim_accumulation)
    attention: str = "factorized"       # or "full"
    positions: str = "independent"      # or "official"
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self):
        if self.ffn_dim == 0:
            self.ffn_dim = 4 * self.width
        if self.attention not in ATTENTIONS:
            raise ValueError(f"NNTConfig.attention={self.attention!r}: use one of {ATTENTIONS}")
        if self.positions not in POSITIONS:
            raise ValueError(f"NNTConfig.positions={self.positions!r}: use one of {POSITIONS}")
        if self.attention == "full" and self.positions == "official":
            raise ValueError("NNTConfig: the official position scheme is factorized; "
                             "use positions='independent' with attention='full'")
        if self.width % self.heads:
            raise ValueError(f"NNTConfig: width {self.width} is not divisible by heads {self.heads}")
        head_dim = self.width // self.heads
        multiple, least = (2, 6) if self.positions == "independent" else (4, 4)
        if head_dim % multiple or head_dim < least:
            raise ValueError(f"NNTConfig: head size width/heads = {head_dim} must be a multiple of {multiple} and at "
                             f"least {least} (RoPE rotates channel pairs on each position axis)")
        if self.width % self.rank_group:
            raise ValueError(f"NNTConfig: width {self.width} is not divisible by rank_group {self.rank_group}")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> NNTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"NNTConfig: unknown fields {unknown} (known: {sorted(known)})")
        return cls(**values)


def rope_angles(positions: Tensor, axes_dims: list[int], theta: float) -> Tensor:
    """Rotation angles (T, sum(axes_dims) / 2) for integer positions (T, len(axes_dims)).

    Axis i rotates its own block of axes_dims[i] channels (pairs of neighbours) with the usual
    RoPE frequencies theta^(-2j / axes_dims[i]).
    """
    parts = []
    for axis, dim in enumerate(axes_dims):
        omega = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim)
        parts.append(positions[:, axis, None].float() * omega)
    return torch.cat(parts, dim=-1)


def rotation(angles: Tensor) -> tuple[Tensor, Tensor]:
    """(cos, sin) of RoPE angles: taken once per forward and shared by every block's q and k."""
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, angles: Tensor | tuple[Tensor, Tensor]) -> Tensor:
    """Rotate channel pairs (x[2j], x[2j+1]) of x (..., T, head_dim) by angles (T, head_dim / 2),
    given as angles or as their rotation(angles)."""
    cos, sin = angles if isinstance(angles, tuple) else rotation(angles)
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], dim=-1).flatten(-2).type_as(x)


def grid(*lengths: int, device=None) -> Tensor:
    """All index tuples of a grid, row-major: (prod(lengths), len(lengths)) int64."""
    axes = torch.meshgrid(*(torch.arange(n, device=device) for n in lengths), indexing="ij")
    return torch.stack([a.flatten() for a in axes], dim=-1)


def attention_mask(real: Tensor) -> Tensor | None:
    """Boolean SDPA mask (..., T, T) from real positions (..., T): real queries see real keys only.

    Padding queries see every key, so no row is empty (an empty row would turn into NaN and leak
    into the gradients); their outputs are discarded. None when nothing is padding.
    """
    if bool(real.all()):
        return None
    return real.unsqueeze(-2) | ~real.unsqueeze(-1)


class Attention(nn.Module):
    """Multi-head attention with optional RoPE on queries and keys; runs on torch SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(width, width)
        self.to_k = nn.Linear(width, width)
        self.to_v = nn.Linear(width, width)
        self.to_out = nn.Linear(width, width)

    def split_heads(self, x: Tensor) -> Tensor:
        return rearrange(x, "... t (h c) -> ... h t c", h=self.heads)

    def forward(self, x: Tensor, context: Tensor | None = None, q_angles: Tensor | tuple | None = None,
                k_angles: Tensor | tuple | None = None, mask: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q, k, v = self.split_heads(self.to_q(x)), self.split_heads(self.to_k(context)), self.split_heads(self.to_v(context))
        if q_angles is not None:
            q = apply_rope(q, q_angles)
        if k_angles is not None:
            k = apply_rope(k, k_angles)
        batch = q.shape[:-3]            # SDPA's fused kernels take one batch axis: fold (N, l) or (N, S)
        q, k, v = q.flatten(0, -4), k.flatten(0, -4), v.flatten(0, -4)
        if mask is not None:
            mask = mask.expand(*batch, *mask.shape[-3:]).flatten(0, -4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).unflatten(0, batch)
        return self.to_out(rearrange(out, "... h t c -> ... t (h c)"))


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc_in = nn.Linear(width, hidden)
        self.fc_out = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(F.silu(self.fc_in(x)))


class NNTBlock(nn.Module):
    """One NNT block on the latent (N, l, S, C); see the module docstring for the order."""

    def __init__(self, config: NNTConfig):
        super().__init__()
        width, eps = config.width, config.norm_eps
        self.factorized = config.attention == "factorized"
        if self.factorized:
            self.norm_inter, self.inter_attn = nn.RMSNorm(width, eps=eps), Attention(width, config.heads)
            self.norm_intra, self.intra_attn = nn.RMSNorm(width, eps=eps), Attention(width, config.heads)
        else:
            self.norm_self, self.self_attn = nn.RMSNorm(width, eps=eps), Attention(width, config.heads)
        self.norm_cross, self.cross_attn = nn.RMSNorm(width, eps=eps), Attention(width, config.heads)
        self.norm_ffn, self.ffn = nn.RMSNorm(width, eps=eps), FeedForward(width, config.ffn_dim)

    def forward(self, x: Tensor, cond: Tensor, rope: dict, masks: dict) -> Tensor:
        l = x.shape[1]
        if self.factorized:
            # inter-layer: attend over l, for every within-layer position (contiguous keeps bf16 GEMMs
            # bitwise equal to the release's)
            h = rearrange(self.norm_inter(x), "n l S c -> n S l c").contiguous()
            out = self.inter_attn(h, q_angles=rope["inter"], k_angles=rope["inter"], mask=masks["inter"])
            x = x + rearrange(out, "n S l c -> n l S c")
            # intra-layer: attend over the s * r within-layer positions, for every layer
            h = self.norm_intra(x)
            x = x + self.intra_attn(h, q_angles=rope["intra"], k_angles=rope["intra"], mask=masks["intra"])
        else:
            h = rearrange(self.norm_self(x), "n l S c -> n (l S) c")
            out = self.self_attn(h, q_angles=rope["full"], k_angles=rope["full"], mask=masks["full"])
            x = x + rearrange(out, "n (l S) c -> n l S c", l=l)
        h = rearrange(self.norm_cross(x), "n l S c -> n (l S) c")
        out = self.cross_attn(h, context=cond, q_angles=rope["cross_q"], k_angles=rope["cross_k"], mask=masks["cross"])
        x = x + rearrange(out, "n (l S) c -> n l S c", l=l)
        return x + self.ffn(self.norm_ffn(x))


class NNT(nn.Module):
    """Condition (N, L, cond_dim) -> parameter tokens (N, l, s, r, d) for `layout` (§3.5).

    `layout` gives num_layers (l), tokens_per_layer (s), rank (r), token_dim (d), mask (l, s) and
    token_kind (l, s): 0 = A token, 1 = B token, -1 = padding. Padding tokens come out exactly 0.
    """

    def __init__(self, config: NNTConfig, layout):
        super().__init__()
        self.config = config
        self.l, self.s, self.r, self.d = layout.num_layers, layout.tokens_per_layer, layout.rank, layout.token_dim
        g = config.rank_group
        if self.r % g:
            raise ValueError(f"NNT: LoRA rank {self.r} is not divisible by rank_group {g}")
        self.S = self.s * self.r // g
        kind = torch.as_tensor(layout.token_kind, dtype=torch.long, device="cpu").reshape(self.l, self.s)
        real = torch.as_tensor(layout.mask, dtype=torch.bool, device="cpu").reshape(self.l, self.s)
        if not torch.equal(real, kind >= 0):
            raise ValueError("NNT: layout.mask and layout.token_kind disagree on which tokens are padding")
        self.register_buffer("token_kind", kind, persistent=False)
        self.register_buffer("latent_real", real.repeat_interleave(self.r // g, dim=1), persistent=False)

        width, part = config.width, config.width // g
        self.cond_in = nn.Linear(config.cond_dim, width)
        self.cond_norm = nn.RMSNorm(width, eps=config.norm_eps)
        self.embed_within = nn.Embedding(self.s * self.r, part)
        self.embed_layer = nn.Embedding(self.l, part)
        self.embed_norm = nn.RMSNorm(width, eps=config.norm_eps)
        self.blocks = nn.ModuleList(NNTBlock(config) for _ in range(config.depth))
        self.norm_out = nn.RMSNorm(width, eps=config.norm_eps)
        self.head_A = nn.Linear(part, self.d)
        self.head_B = nn.Linear(part, self.d)
        nn.init.zeros_(self.head_B.weight)
        nn.init.zeros_(self.head_B.bias)

    def initial_latent(self) -> Tensor:
        """Learnable parameter embeddings (l, S, C): layer embedding + within-layer embedding."""
        x = self.embed_layer.weight[:, None, :] + self.embed_within.weight[None, :, :]   # (l, s*r, C/g)
        return self.embed_norm(x.reshape(self.l, self.S, self.config.width))

    def position_angles(self, cond_len: int, device) -> dict:
        """RoPE angles for each attention of a block, per the configured position scheme."""
        cfg, hd = self.config, self.config.head_dim
        l, s, w = self.l, self.s, self.r // cfg.rank_group
        if cfg.positions == "official":
            half = [hd // 2, hd // 2]
            diagonal = torch.arange(cond_len, device=device)[:, None].expand(cond_len, 2) + max(s, w)
            return {
                "inter": rope_angles(grid(l, device=device), [hd], cfg.rope_theta),
                "intra": rope_angles(grid(s, w, device=device), half, cfg.rope_theta),
                "cross_q": rope_angles(grid(l, s * w, device=device), half, cfg.rope_theta),
                "cross_k": rope_angles(diagonal, half, cfg.rope_theta),
            }
        pairs = hd // 2
        axes = [2 * (pairs - 2 * (pairs // 3)), 2 * (pairs // 3), 2 * (pairs // 3)]    # layer, token, rank
        return {
            "inter": rope_angles(F.pad(grid(l, device=device), (0, 2)), axes, cfg.rope_theta),     # (l, 0, 0)
            "intra": rope_angles(F.pad(grid(s, w, device=device), (1, 0)), axes, cfg.rope_theta),  # (0, s, r)
            "full": rope_angles(grid(l, s, w, device=device), axes, cfg.rope_theta),               # (l, s, r)
            "cross_q": None,
            "cross_k": None,
        }

    def attention_masks(self, cond_mask: Tensor | None) -> dict:
        real = self.latent_real
        return {
            "inter": None if (m := attention_mask(real.T)) is None else m[:, None],     # (S, 1, l, l)
            "intra": None if (m := attention_mask(real)) is None else m[:, None],       # (l, 1, S, S)
            "full": None if (m := attention_mask(real.reshape(-1))) is None else m[None],   # (1, lS, lS)
            "cross": None if cond_mask is None else cond_mask[:, None, None, :],
        }

    def forward(self, cond: Tensor, cond_mask: Tensor | None = None) -> Tensor:
        if cond.dim() != 3 or cond.shape[-1] != self.config.cond_dim:
            raise ValueError(f"NNT: condition must have shape (N, L, {self.config.cond_dim}), got {tuple(cond.shape)}")
        if cond_mask is not None:
            cond_mask = cond_mask.to(device=cond.device, dtype=torch.bool)
            if cond_mask.shape != cond.shape[:2]:
                raise ValueError(f"NNT: cond_mask must have shape {tuple(cond.shape[:2])}, got {tuple(cond_mask.shape)}")
            if not bool(cond_mask.any(dim=1).all()):
                raise ValueError("NNT: a condition in the batch has no real token (its cond_mask row is all False)")
        n = cond.shape[0]
        u = self.cond_norm(self.cond_in(cond.to(self.cond_in.weight.dtype)))
        x = self.initial_latent().expand(n, -1, -1, -1)
        angles = self.position_angles(cond.shape[1], cond.device)
        rope = {k: None if v is None else rotation(v) for k, v in angles.items()}
        masks = self.attention_masks(cond_mask)
        for block in self.blocks:
            x = block(x, u, rope, masks)
        return self.to_tokens(x)

    def to_tokens(self, x: Tensor) -> Tensor:
        """Latent (N, l, S, C) -> tokens (N, l, s, r, d) through the A and B heads; padding is 0."""
        n = x.shape[0]
        # each latent vector holds g rank rows of width C/g: (S = s * r/g, C) -> (s, r, C/g)
        x = rearrange(self.norm_out(x), "n l (s w) (g c) -> n (l s) (w g) c", s=self.s, g=self.config.rank_group)
        kind = self.token_kind.reshape(-1)
        a_rows, b_rows = (kind == 0).nonzero()[:, 0], (kind == 1).nonzero()[:, 0]
        tokens = x.new_zeros(n, self.l * self.s, self.r, self.d)
        tokens[:, a_rows] = self.head_A(x[:, a_rows])
        tokens[:, b_rows] = self.head_B(x[:, b_rows])
        return tokens.reshape(n, self.l, self.s, self.r, self.d)
