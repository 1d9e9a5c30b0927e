"""The image side of the HunyuanImage-3 trunk: timestep embedders, the patch embed and the final layer.

- `timestep_embedding`: sinusoidal features, cos half first, frequencies exp(-ln(max_period) * i / half).
- `TimestepEmbedder`: those features -> Linear -> GELU -> Linear. The model holds several: `timestep_emb`
  (the embedding written at each `<timestep>` token; t = 0 for clean condition images), `time_embed`
  (conditions the patch embed), `time_embed_2` (conditions the final layer), and `guidance_emb` /
  `timestep_r_emb` only in cfg-distilled / meanflow checkpoints.
- `PatchEmbed` (`patch_embed`): model latent (B, C, h, w) + time embedding -> conv -> AdaGN ResBlock(s)
  -> tokens (B, h' * w', hidden), row-major (y outer, x inner).
- `FinalLayer` (`final_layer`): the trunk's outputs at the image tokens (B, h' * w', hidden, taken before
  the trunk's final norm) + time embedding -> AdaGN ResBlock(s) -> GroupNorm -> SiLU -> conv -> (B, C, h, w),
  the flow velocity in model-latent space.

With patch_size 1 each side has one ResBlock and h' = h; with patch_size p in {2, 4, 8} each side has
p // 2 ResBlocks that each halve (patch embed) or double (final layer) the resolution, as the release
builds them. `image_modules` builds all of them from config.json under their checkpoint names; the model
uses them as

    tokens, h', w' = patch_embed(latent, time_embed(t))
    velocity = final_layer(trunk_outputs_at_image_tokens, time_embed_2(t), h', w')
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

PATCH_SIZES = (1, 2, 4, 8)


def timestep_embedding(t, dim, max_period=10000):
    """(N,) timesteps, possibly fractional -> (N, dim) float32 [cos(t * f), sin(t * f)] (a zero column if dim is
    odd), f_i = exp(-ln(max_period) * i / (dim // 2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbedder(nn.Module):
    """(N,) timesteps -> (N, out_size): sinusoidal features -> Linear -> GELU -> Linear (keys mlp.0, mlp.2)."""

    def __init__(self, hidden_size, frequency_embedding_size=256, max_period=10000, out_size=None, ops=nn,
                 device=None, dtype=None):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.max_period = max_period
        factory = {"device": device, "dtype": dtype}
        self.mlp = nn.Sequential(
            ops.Linear(frequency_embedding_size, hidden_size, **factory),
            nn.GELU(),
            ops.Linear(hidden_size, out_size or hidden_size, **factory),
        )

    def forward(self, t, dtype=None):
        """`dtype`: what the features are cast to before the MLP; default the first Linear's weight dtype,
        as the release does."""
        freq = timestep_embedding(t, self.frequency_embedding_size, self.max_period)
        return self.mlp(freq.to(dtype or self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """2D residual block with adaptive GroupNorm: the time embedding gives (scale, shift) and the second norm's
    output becomes norm(h) * (1 + scale) + shift. `resample` ("down": 2x2 average pooling, "up": nearest 2x)
    applies to both branches, between the first norm/SiLU and the first conv."""

    def __init__(self, cin, emb_channels, cout, resample=None, ops=nn, factory=None):
        super().__init__()
        factory = factory or {}
        self.in_layers = nn.Sequential(
            ops.GroupNorm(32, cin, **factory),
            nn.SiLU(),
            ops.Conv2d(cin, cout, 3, padding=1, **factory),
        )
        self.resample = resample
        self.emb_layers = nn.Sequential(nn.SiLU(), ops.Linear(emb_channels, 2 * cout, **factory))
        self.out_layers = nn.Sequential(
            ops.GroupNorm(32, cout, **factory),
            nn.SiLU(),
            nn.Identity(),  # the release's (inactive) dropout; keeps the conv's key at out_layers.3
            ops.Conv2d(cout, cout, 3, padding=1, **factory),
        )
        self.skip_connection = nn.Identity() if cin == cout else ops.Conv2d(cin, cout, 1, **factory)

    def _resample(self, x):
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x, emb):
        norm_in, act_in, conv_in = self.in_layers
        h = conv_in(self._resample(act_in(norm_in(x))))
        x = self._resample(x)
        scale, shift = self.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
        norm_out, act_out, _, conv_out = self.out_layers
        h = conv_out(act_out(norm_out(h) * (1 + scale) + shift))
        return self.skip_connection(x) + h


def _check_patch_size(patch_size):
    if patch_size not in PATCH_SIZES:
        raise ValueError(f"patch_size must be one of {PATCH_SIZES} (config.json `patch_size`); got {patch_size}")


class PatchEmbed(nn.Module):
    """`patch_embed`: model latent (B, latent_channels, h, w) and time embedding (B, emb_channels) ->
    tokens (B, h' * w', hidden_size), token (y, x) at index y * w' + x; also returns (h', w')."""

    def __init__(self, patch_size, latent_channels, emb_channels, hidden_channels, hidden_size, ops=nn,
                 device=None, dtype=None):
        super().__init__()
        _check_patch_size(patch_size)
        factory = {"device": device, "dtype": dtype}
        self.patch_size = patch_size
        layers = [ops.Conv2d(latent_channels, hidden_channels, 3, padding=1, **factory)]
        if patch_size == 1:
            layers.append(ResBlock(hidden_channels, emb_channels, hidden_size, ops=ops, factory=factory))
        else:
            n = patch_size // 2
            for i in range(n):
                cout = hidden_size if i == n - 1 else hidden_channels
                layers.append(ResBlock(hidden_channels, emb_channels, cout, "down", ops, factory))
        self.model = nn.ModuleList(layers)

    def forward(self, latent, t_emb):
        p = self.patch_size
        if latent.shape[-2] % p or latent.shape[-1] % p:
            raise ValueError(f"latent height and width must be multiples of patch_size {p}; got {tuple(latent.shape)}")
        conv, *blocks = self.model
        x = conv(latent)
        for block in blocks:
            x = block(x, t_emb)
        _, _, h, w = x.shape
        return x.flatten(2).transpose(1, 2), h, w


class FinalLayer(nn.Module):
    """`final_layer`: tokens (B, h' * w', hidden_size) in PatchEmbed's order and time embedding (B, emb_channels)
    -> (B, latent_channels, h, w)."""

    def __init__(self, patch_size, hidden_size, emb_channels, hidden_channels, latent_channels, ops=nn,
                 device=None, dtype=None):
        super().__init__()
        _check_patch_size(patch_size)
        factory = {"device": device, "dtype": dtype}
        if patch_size == 1:
            layers = [ResBlock(hidden_size, emb_channels, hidden_channels, ops=ops, factory=factory)]
        else:
            layers = [ResBlock(hidden_size if i == 0 else hidden_channels, emb_channels, hidden_channels, "up", ops,
                               factory) for i in range(patch_size // 2)]
        layers.append(nn.Sequential(
            ops.GroupNorm(32, hidden_channels, **factory),
            nn.SiLU(),
            ops.Conv2d(hidden_channels, latent_channels, 3, padding=1, **factory),
        ))
        self.model = nn.ModuleList(layers)

    def forward(self, tokens, t_emb, h, w):
        b, n, c = tokens.shape
        if n != h * w:
            raise ValueError(f"{n} image tokens do not form a {h}x{w} grid")
        *blocks, out = self.model
        x = tokens.transpose(1, 2).reshape(b, c, h, w)
        for block in blocks:
            x = block(x, t_emb)
        return out(x)


def image_modules(config, ops=nn, device=None, dtype=None):
    """{attribute name: module} for the image-side modules config.json asks for, named as the checkpoint keys'
    first component: timestep_emb, patch_embed, time_embed, final_layer, time_embed_2, and guidance_emb /
    timestep_r_emb when `cfg_distilled` / `use_meanflow` is set."""
    if config.get("img_proj_type", "unet") != "unet":
        raise ValueError(f"img_proj_type {config['img_proj_type']!r} is not supported; the release builds only 'unet'")
    hidden = config["hidden_size"]
    patch = config.get("patch_size", 1)
    width = config.get("patch_embed_hidden_dim", 1024)
    latent = config["vae"]["latent_channels"]
    factory = {"ops": ops, "device": device, "dtype": dtype}
    names = ["timestep_emb"]
    names += ["guidance_emb"] if config.get("cfg_distilled") else []
    names += ["timestep_r_emb"] if config.get("use_meanflow") else []
    modules = {name: TimestepEmbedder(hidden, **factory) for name in names}
    modules["patch_embed"] = PatchEmbed(patch, latent, hidden, width, hidden, **factory)
    modules["time_embed"] = TimestepEmbedder(hidden, **factory)
    modules["final_layer"] = FinalLayer(patch, hidden, hidden, width, latent, **factory)
    modules["time_embed_2"] = TimestepEmbedder(hidden, **factory)
    return modules
