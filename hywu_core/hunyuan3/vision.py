"""The SigLIP2 vision tower (`vision_model.*`) and the projector into the decoder width (`vision_aligner.*`).

Input is the naflex patch sequence of images.py: each image's patches padded to a fixed count, with a
patch mask and the patch grid. The learned square grid of position embeddings is resized per image to
that grid (bilinear, antialiased, in float32) and the padded rows get the first position's embedding.
Padded patches are not dropped: every query attends to the image's real patches only, and the tower
returns all rows, padded ones included, because the release scatters them into the sequence too.
The tower's output is the last layer after `post_layernorm`; the attention-pooling `head`, when the
config has one, is kept for its weights and only runs through `pool`.
"""
import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"gelu_pytorch_tanh": "tanh", "gelu": "none"}
VISION_PREFIXES = ("vision_model.", "vision_aligner.")


def _gelu(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"vit hidden_act {name!r} is not supported; expected one of {sorted(ACTIVATIONS)}")
    return nn.GELU(approximate=ACTIVATIONS[name])


def _key_mask(attention_mask, dtype):
    """(B, N) 1/0 patch mask -> additive (B, 1, 1, N): 0 for real patches, the dtype's minimum for padding."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class Embeddings(nn.Module):
    def __init__(self, config, ops):
        super().__init__()
        dim, patch = config["hidden_size"], config["patch_size"]
        self.grid = int(config["num_patches"] ** 0.5)
        self.patch_embedding = ops.Linear(config.get("num_channels", 3) * patch * patch, dim)
        self.position_embedding = ops.Embedding(config["num_patches"], dim)

    def positions(self, spatial_shapes, length, device, dtype):
        """(B, length, D): the position grid resized to each image's patch grid, padded with its first row."""
        table = self.position_embedding(torch.arange(self.grid * self.grid, device=device)).float()
        table = table.reshape(self.grid, self.grid, -1).permute(2, 0, 1)[None]
        out = []
        for rows, cols in spatial_shapes.tolist():
            grid = F.interpolate(table, size=(rows, cols), mode="bilinear", align_corners=False, antialias=True)
            grid = grid.reshape(table.shape[1], rows * cols).T.to(dtype)
            out.append(torch.cat([grid, grid[:1].expand(length - rows * cols, -1)]))
        return torch.stack(out)

    def forward(self, pixel_values, spatial_shapes):
        x = self.patch_embedding(pixel_values)
        return x + self.positions(spatial_shapes, x.shape[1], x.device, x.dtype)


class Attention(nn.Module):
    def __init__(self, config, ops):
        super().__init__()
        dim = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        if dim % self.heads:
            raise ValueError(f"vit hidden_size {dim} is not divisible by num_attention_heads {self.heads}")
        self.q_proj = ops.Linear(dim, dim)
        self.k_proj = ops.Linear(dim, dim)
        self.v_proj = ops.Linear(dim, dim)
        self.out_proj = ops.Linear(dim, dim)

    def forward(self, x, mask):
        b, n, d = x.shape
        q, k, v = (proj(x).view(b, n, self.heads, -1).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, config, ops):
        super().__init__()
        self.fc1 = ops.Linear(config["hidden_size"], config["intermediate_size"])
        self.act = _gelu(config["hidden_act"])
        self.fc2 = ops.Linear(config["intermediate_size"], config["hidden_size"])

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-norm block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config, ops):
        super().__init__()
        dim, eps = config["hidden_size"], config["layer_norm_eps"]
        self.layer_norm1 = ops.LayerNorm(dim, eps=eps)
        self.self_attn = Attention(config, ops)
        self.layer_norm2 = ops.LayerNorm(dim, eps=eps)
        self.mlp = MLP(config, ops)

    def forward(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, config, ops):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config, ops) for _ in range(config["num_hidden_layers"]))

    def forward(self, x, mask):
        for layer in self.layers:
            x = layer(x, mask)
        return x


class PoolingAttention(nn.Module):
    """One query against the sequence, with the packed q/k/v projection of torch's MultiheadAttention."""

    def __init__(self, config, ops):
        super().__init__()
        dim = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = ops.Linear(dim, dim)

    def forward(self, query, x, mask):
        w = self.in_proj_weight.to(x)
        bias = self.in_proj_bias.to(x)
        b, d = x.shape[0], x.shape[-1]
        q = F.linear(query, w[:d], bias[:d])
        k, v = F.linear(x, w[d:], bias[d:]).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(b, -1, d))


class PoolingHead(nn.Module):
    """SigLIP's attention pooling: a learned probe attends over the patches, then a residual MLP."""

    def __init__(self, config, ops):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, config["hidden_size"]))
        self.attention = PoolingAttention(config, ops)
        self.layernorm = ops.LayerNorm(config["hidden_size"], eps=config["layer_norm_eps"])
        self.mlp = MLP(config, ops)

    def forward(self, x, mask):
        y = self.attention(self.probe.to(x).expand(x.shape[0], -1, -1), x, mask)
        y = y + self.mlp(self.layernorm(y))
        return y[:, 0]


class VisionTransformer(nn.Module):
    """SigLIP2 naflex vision tower; `config` is the `vit` dict of the model's config.json.

    forward(pixel_values (B, N, 3·p²), attention_mask (B, N), spatial_shapes (B, 2)) -> (B, N, hidden_size),
    computed in pixel_values' dtype.
    """

    def __init__(self, config, ops=nn):
        super().__init__()
        self.embeddings = Embeddings(config, ops)
        self.encoder = Encoder(config, ops)
        self.post_layernorm = ops.LayerNorm(config["hidden_size"], eps=config["layer_norm_eps"])
        if config.get("vision_use_head", True):
            self.head = PoolingHead(config, ops)

    def forward(self, pixel_values, attention_mask, spatial_shapes):
        x = self.embeddings(pixel_values, spatial_shapes)
        x = self.encoder(x, _key_mask(attention_mask, x.dtype))
        return self.post_layernorm(x)

    def pool(self, hidden, attention_mask):
        """(B, hidden_size): the attention-pooling head over forward's output (configs with a head only)."""
        if not hasattr(self, "head"):
            raise ValueError("this vit config has vision_use_head false: there is no pooling head")
        return self.head(hidden, _key_mask(attention_mask, hidden.dtype))


class Aligner(nn.Module):
    """The release's LightProjector: ViT features -> decoder width; `config` is the `vit_aligner` dict.

    "linear": one Linear (keys `layers.weight`); "mlp_gelu": Linear then `depth - 1` x (GELU, Linear)
    (keys `layers.0.*`, `layers.2.*`, ...), exact-erf GELU.
    """

    def __init__(self, config, ops=nn):
        super().__init__()
        kind, dim_in, dim = config["projector_type"], config["input_dim"], config["n_embed"]
        if kind == "linear":
            self.layers = ops.Linear(dim_in, dim)
        elif kind == "mlp_gelu":
            mods = [ops.Linear(dim_in, dim)]
            for _ in range(1, config["depth"]):
                mods += [nn.GELU(), ops.Linear(dim, dim)]
            self.layers = nn.Sequential(*mods)
        else:
            raise ValueError(f"vit_aligner projector_type {kind!r} is not supported; expected 'linear' or 'mlp_gelu'")

    def forward(self, x):
        return self.layers(x)


class VisionEncoder(nn.Module):
    """Tower + aligner under the checkpoint's own prefixes (`vision_model.*`, `vision_aligner.*`), from the
    model's whole config.json dict.

    forward(pixel_values (B, N, 3·p²), attention_mask (B, N), spatial_shapes (B, 2)) -> (B, N, n_embed): the
    embeddings that fill each image's N `<img>` slots, padded rows included.
    """

    def __init__(self, config, ops=nn):
        super().__init__()
        self.vision_model = VisionTransformer(config["vit"], ops)
        self.vision_aligner = Aligner(config["vit_aligner"], ops)

    def forward(self, pixel_values, attention_mask, spatial_shapes):
        return self.vision_aligner(self.vision_model(pixel_values, attention_mask, spatial_shapes))
