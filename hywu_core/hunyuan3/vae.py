"""The HunyuanImage-3 autoencoder: a DC-AE style 3D-conv VAE that the model holds as `vae` (keys `vae.*`).

An image is treated as a short clip: the frame is repeated `ffactor_temporal` times, and the encoder
downsamples space by `ffactor_spatial` and time by `ffactor_temporal`, so one image gives one latent
frame. Every down/up step is a 3x3x3 conv whose output is folded between space(-time) and channels,
plus a parameter-free shortcut (channel group means going down, channel repeats going up); the
encoder's output and the decoder's input carry the same kind of shortcut. The middle of each side is
ResBlock -> single-head self-attention over all positions -> ResBlock.

The encoder gives the moments of a diagonal Gaussian (logvar clamped to [-30, 20]); a latent is
mean + std * noise, the noise drawn in the moments' dtype, on the generator's device. The diffusion
model works on (z - shift_factor) * scaling_factor; images come back as z / scaling_factor +
shift_factor decoded, of which the release keeps the last of the decoded frames. Images are in
[-1, 1] on both sides (the decoder's output is not clamped).

The release can also tile, slice and split large convolutions along time; with its defaults none of
that is on, and the split is the same arithmetic, so none of it is reproduced here. In float32 on one
CPU thread this module reproduces the release's tensors bit for bit.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _to_channels(x, rt):
    """(B, C, T*rt, 2H, 2W) -> (B, rt*2*2*C, T, H, W): each (rt, 2, 2) neighbourhood into channels, offsets major."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // rt, rt, h // 2, 2, w // 2, 2)
    return x.permute(0, 3, 5, 7, 1, 2, 4, 6).reshape(b, rt * 4 * c, t // rt, h // 2, w // 2)


def _from_channels(x, rt):
    """Inverse of `_to_channels`: (B, rt*2*2*C, T, H, W) -> (B, C, T*rt, 2H, 2W)."""
    b, c, t, h, w = x.shape
    c //= rt * 4
    x = x.reshape(b, rt, 2, 2, c, t, h, w)
    return x.permute(0, 4, 5, 1, 6, 2, 7, 3).reshape(b, c, t * rt, h * 2, w * 2)


def _swish(x):
    """x * sigmoid(x), written out as the release does (F.silu rounds differently in the last bits)."""
    return x * torch.sigmoid(x)


def _group_mean(x, channels):
    """Average consecutive channel groups of x down to `channels` channels."""
    b, c, *rest = x.shape
    return x.reshape(b, channels, c // channels, *rest).mean(dim=2)


class ResnetBlock(nn.Module):
    """GroupNorm -> swish -> conv, twice, plus the input (through a 1x1x1 conv when the width changes)."""

    def __init__(self, cin, cout, ops, factory):
        super().__init__()
        self.norm1 = ops.GroupNorm(32, cin, eps=1e-6, **factory)
        self.conv1 = ops.Conv3d(cin, cout, 3, padding=1, **factory)
        self.norm2 = ops.GroupNorm(32, cout, eps=1e-6, **factory)
        self.conv2 = ops.Conv3d(cout, cout, 3, padding=1, **factory)
        if cin != cout:
            self.nin_shortcut = ops.Conv3d(cin, cout, 1, **factory)

    def forward(self, x):
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over every (t, y, x) position, with a residual connection."""

    def __init__(self, c, ops, factory):
        super().__init__()
        self.norm = ops.GroupNorm(32, c, eps=1e-6, **factory)
        self.q = ops.Conv3d(c, c, 1, **factory)
        self.k = ops.Conv3d(c, c, 1, **factory)
        self.v = ops.Conv3d(c, c, 1, **factory)
        self.proj_out = ops.Conv3d(c, c, 1, **factory)

    def forward(self, x):
        b, c, t, h, w = x.shape
        n = self.norm(x)
        # (B, 1, positions, C), made contiguous as the release does: SDPA's CPU kernel rounds by layout
        q, k, v = (p(n).reshape(b, 1, c, t * h * w).transpose(-1, -2).contiguous() for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(a.transpose(-1, -2).reshape(b, c, t, h, w))


class Middle(nn.Module):
    """ResBlock -> attention -> ResBlock at the lowest resolution (keys mid.block_1, mid.attn_1, mid.block_2)."""

    def __init__(self, c, ops, factory):
        super().__init__()
        self.block_1 = ResnetBlock(c, c, ops, factory)
        self.attn_1 = AttnBlock(c, ops, factory)
        self.block_2 = ResnetBlock(c, c, ops, factory)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Downsample(nn.Module):
    """Halve H and W (and T when `temporal`): conv to cout / factor channels, fold into channels, plus a
    shortcut that folds the input the same way and averages channel groups down to cout."""

    def __init__(self, cin, cout, temporal, ops, factory):
        super().__init__()
        self.rt = 2 if temporal else 1
        self.conv = ops.Conv3d(cin, cout // (self.rt * 4), 3, padding=1, **factory)
        self.cout = cout

    def forward(self, x):
        h = _to_channels(self.conv(x), self.rt)
        return h + _group_mean(_to_channels(x, self.rt), self.cout)


class Upsample(nn.Module):
    """Double H and W (and T when `temporal`): conv to cout * factor channels, unfold out of channels, plus a
    shortcut that repeats each input channel and unfolds the same way."""

    def __init__(self, cin, cout, temporal, ops, factory):
        super().__init__()
        self.rt = 2 if temporal else 1
        self.conv = ops.Conv3d(cin, cout * self.rt * 4, 3, padding=1, **factory)
        self.repeats = cout * self.rt * 4 // cin

    def forward(self, x):
        h = _from_channels(self.conv(x), self.rt)
        return h + _from_channels(x.repeat_interleave(self.repeats, dim=1), self.rt)


class Level(nn.Module):
    """One resolution: residual blocks (`block`), then an optional resampler under `resampler_key`."""

    def __init__(self, blocks, resampler_key, resampler):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.resampler_key = resampler_key if resampler is not None else None
        if resampler is not None:
            self.add_module(resampler_key, resampler)

    def forward(self, x):
        for block in self.block:
            x = block(x)
        return getattr(self, self.resampler_key)(x) if self.resampler_key else x


class Encoder(nn.Module):
    """(B, in_channels, T, H, W) -> moments (B, 2 * z_channels, T / ffactor_temporal, H / f, W / f).

    Level i halves space while i < log2(ffactor_spatial), and also time from level
    log2(ffactor_spatial / ffactor_temporal) on, so time is reduced in the last spatial levels."""

    def __init__(self, in_channels, z_channels, widths, layers_per_block, ffactor_spatial, ffactor_temporal,
                 match_channel, ops, factory):
        super().__init__()
        c = widths[0]
        self.conv_in = ops.Conv3d(in_channels, c, 3, padding=1, **factory)
        self.down = nn.ModuleList()
        for i, width in enumerate(widths):
            blocks = []
            for _ in range(layers_per_block):
                blocks.append(ResnetBlock(c, width, ops, factory))
                c = width
            resampler = None
            if i < math.log2(ffactor_spatial):
                temporal = i >= math.log2(ffactor_spatial // ffactor_temporal)
                cout = widths[i + 1] if match_channel else c
                resampler, c = Downsample(c, cout, temporal, ops, factory), cout
            self.down.append(Level(blocks, "downsample", resampler))
        self.mid = Middle(c, ops, factory)
        self.norm_out = ops.GroupNorm(32, c, eps=1e-6, **factory)
        self.conv_out = ops.Conv3d(c, 2 * z_channels, 3, padding=1, **factory)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h))) + _group_mean(h, self.conv_out.out_channels)


class Decoder(nn.Module):
    """(B, z_channels, T, h, w) -> (B, out_channels, T * ffactor_temporal, h * f, w * f).

    `widths` run from the latent side (the encoder's widths reversed); each level has
    layers_per_block + 1 blocks; level i doubles space while i < log2(ffactor_spatial) and time while
    i < log2(ffactor_temporal), so time is restored in the first levels."""

    def __init__(self, z_channels, out_channels, widths, layers_per_block, ffactor_spatial, ffactor_temporal,
                 match_channel, ops, factory):
        super().__init__()
        c = widths[0]
        self.conv_in = ops.Conv3d(z_channels, c, 3, padding=1, **factory)
        self.mid = Middle(c, ops, factory)
        self.up = nn.ModuleList()
        for i, width in enumerate(widths):
            blocks = []
            for _ in range(layers_per_block + 1):
                blocks.append(ResnetBlock(c, width, ops, factory))
                c = width
            resampler = None
            temporal = i < math.log2(ffactor_temporal)
            if i < math.log2(ffactor_spatial) or temporal:
                cout = widths[i + 1] if match_channel else c
                resampler, c = Upsample(c, cout, temporal, ops, factory), cout
            self.up.append(Level(blocks, "upsample", resampler))
        self.norm_out = ops.GroupNorm(32, c, eps=1e-6, **factory)
        self.conv_out = ops.Conv3d(c, out_channels, 3, padding=1, **factory)

    def forward(self, z):
        h = self.conv_in(z) + z.repeat_interleave(self.conv_in.out_channels // z.shape[1], dim=1)
        h = self.mid(h)
        for level in self.up:
            h = level(h)
        return self.conv_out(_swish(self.norm_out(h)))


@dataclass
class DiagonalGaussian:
    """The encoder's posterior for an image batch: mean and logvar, both (B, latent_channels, H / f, W / f)."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @property
    def std(self):
        return torch.exp(0.5 * self.logvar)


class HunyuanVAE(nn.Module):
    """The `vae` of HunyuanImage-3; arguments are the fields of config.json's `vae` sub-dict.

    Image space: (B, in_channels, H, W) in [-1, 1], H and W multiples of ffactor_spatial.
    VAE latent z: (B, latent_channels, H / ffactor_spatial, W / ffactor_spatial).
    Model latent: (z - shift_factor) * scaling_factor (a missing or zero factor is skipped, as the release does).
    """

    CONFIG_FIELDS = ("in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block",
                     "ffactor_spatial", "ffactor_temporal", "scaling_factor", "shift_factor",
                     "downsample_match_channel", "upsample_match_channel")

    def __init__(self, *, latent_channels, block_out_channels, layers_per_block, ffactor_spatial, ffactor_temporal,
                 in_channels=3, out_channels=3, scaling_factor=None, shift_factor=None,
                 downsample_match_channel=True, upsample_match_channel=True, ops=nn, device=None, dtype=None):
        super().__init__()
        widths = list(block_out_channels)
        if 2 ** (len(widths) - 1) < ffactor_spatial or ffactor_temporal > ffactor_spatial:
            raise ValueError(f"a VAE with {len(widths)} levels downsamples at most {2 ** (len(widths) - 1)}x; "
                             f"ffactor_spatial={ffactor_spatial}, ffactor_temporal={ffactor_temporal} does not fit")
        factory = {"device": device, "dtype": dtype}
        self.latent_channels = latent_channels
        self.ffactor_spatial = ffactor_spatial
        self.ffactor_temporal = ffactor_temporal
        self.scaling_factor = scaling_factor or 1.0
        self.shift_factor = shift_factor or 0.0
        self.encoder = Encoder(in_channels, latent_channels, widths, layers_per_block, ffactor_spatial,
                               ffactor_temporal, downsample_match_channel, ops, factory)
        self.decoder = Decoder(latent_channels, out_channels, widths[::-1], layers_per_block, ffactor_spatial,
                               ffactor_temporal, upsample_match_channel, ops, factory)

    @classmethod
    def from_config(cls, config, ops=nn, device=None, dtype=None):
        """Build from config.json's `vae` dict; the tiling-only fields (sample_size, ...) are not used."""
        return cls(**{k: config[k] for k in cls.CONFIG_FIELDS if k in config}, ops=ops, device=device, dtype=dtype)

    def encode(self, image):
        """(B, 3, H, W) in [-1, 1] -> DiagonalGaussian; the frame is repeated ffactor_temporal times first."""
        f = self.ffactor_spatial
        if image.ndim != 4 or image.shape[-2] % f or image.shape[-1] % f:
            raise ValueError(f"the VAE encodes (B, C, H, W) images with H and W multiples of {f}; "
                             f"got shape {tuple(image.shape)}")
        clip = image.unsqueeze(2).expand(-1, -1, self.ffactor_temporal, -1, -1)
        mean, logvar = self.encoder(clip).squeeze(2).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar.clamp(-30.0, 20.0))

    @staticmethod
    def sample(posterior, generator=None):
        """mean + std * noise; the noise is one randn of the posterior's shape and dtype on the generator's
        device (then moved), so a seeded CPU generator gives the release's latent."""
        mean = posterior.mean
        device = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype).to(mean.device)
        return mean + posterior.std * noise

    def to_model_latent(self, z):
        """VAE latent -> the diffusion model's latent space: (z - shift_factor) * scaling_factor."""
        return (z - self.shift_factor) * self.scaling_factor

    def from_model_latent(self, x):
        """Model latent -> VAE latent: x / scaling_factor + shift_factor."""
        return x / self.scaling_factor + self.shift_factor

    def decode(self, z):
        """VAE latent (B, C, h, w) -> image (B, 3, h * f, w * f), about [-1, 1]: the last decoded frame."""
        return self.decoder(z.unsqueeze(2))[:, :, -1]
