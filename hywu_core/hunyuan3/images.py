"""Image preparation for HunyuanImage-3, as the release does it.

Every image the model sees sits in a *ratio bucket*: a (height, width) of about base_size² pixels whose
aspect ratio is one of a fixed list (33 ratios stepping from 1:4 to 4:1, plus four fixed sizes). The
model names a bucket by its index, the `<img_ratio_i>` token.

A conditioning image is used twice:
- the VAE copy: resized with LANCZOS to its nearest-ratio bucket, either covering the bucket and
  center-cropped (an explicit output size) or stretched onto it (output size "auto"), then scaled
  to [-1, 1] as a (3, H, W) tensor;
- the ViT copy: the SigLIP2 "naflex" input — the whole image resized (bilinear, antialiased, in
  uint8) to the largest patch grid that keeps its aspect ratio within `max_num_patches`,
  normalised, cut into 16x16 patches and padded to `max_num_patches` rows with a patch mask.
"""
import math
import platform
import re
from dataclasses import dataclass
from typing import NamedTuple

import torch
from PIL import Image, ImageOps

# Sizes the release appends to every group whose step list lacks their ratio, whatever the base size.
EXTRA_SIZES = ((1024, 768), (1280, 720), (768, 1024), (720, 1280))
# PIL resample codes the naflex resize accepts (as a transformers image-processor config writes them).
NAFLEX_RESAMPLE = {2: "bilinear", 3: "bicubic"}


class Bucket(NamedTuple):
    height: int
    width: int

    @property
    def ratio(self):
        return self.height / self.width


class RatioBuckets:
    """The release's resolution group: bucket `i` is the size behind `<img_ratio_i>`.

    From the square base_size x base_size, the height grows and the width shrinks by `step`
    (base_size // 16) at a time until 2·base x base/2, and the other way to base/2 x 2·base; each
    side clamps at its limit and is floored to a multiple of `align`. The list is sorted by ratio
    (height / width); then each EXTRA_SIZES entry whose ratio is not yet present is appended, unsorted.
    """

    def __init__(self, base_size, align=16, step=None):
        step = base_size // 16 if step is None else step
        if base_size % align or not align <= step <= base_size // 2:
            raise ValueError(f"image_base_size {base_size} does not give ratio buckets: it must be a multiple of "
                             f"{align} and at least {16 * align} (step base/16 >= {align}); use the released 1024")
        self.base_size, self.align, self.step = base_size, align, step
        def toward(value, target):
            return min(value + step, target) if target > value else max(value - step, target)

        lo, hi = base_size // 2, base_size * 2
        sizes = [Bucket(base_size, base_size)]
        for end_h, end_w in ((hi, lo), (lo, hi)):
            h = w = base_size
            while (h, w) != (end_h, end_w):
                h, w = toward(h, end_h), toward(w, end_w)
                sizes.append(Bucket(h // align * align, w // align * align))
        sizes.sort(key=lambda b: b.ratio)
        for h, w in EXTRA_SIZES:
            if all(b.ratio != h / w for b in sizes):
                sizes.append(Bucket(h, w))
        self.buckets = sizes

    @classmethod
    def from_config(cls, config):
        return cls(int(config["image_base_size"]))

    def __len__(self):
        return len(self.buckets)

    def __getitem__(self, index):
        return self.buckets[index]

    def nearest(self, width, height):
        """Index of the bucket whose ratio is closest to height / width (the first one on a tie)."""
        ratio = height / width
        gaps = [abs(b.ratio - ratio) for b in self.buckets]
        return gaps.index(min(gaps))


def output_bucket(size, buckets):
    """The generated image's (ratio index, Bucket) for a requested size, or None for "auto".

    `size` is "auto" (the model picks the ratio token), "HxW" such as "1024x768", "W:H" such as "16:9",
    "<img_ratio_i>", or a (height, width) pair of ints. Like the release, any size snaps to the bucket
    of the nearest ratio: the result is always a bucket.
    """
    if isinstance(size, str):
        text = size.strip()
        if text == "auto":
            return None
        token = re.fullmatch(r"<img_ratio_(\d+)>", text)
        pair = re.fullmatch(r"(\d+)\s*([x:])\s*(\d+)", text)
        if token:
            index = int(token.group(1))
            if index >= len(buckets):
                raise ValueError(f"{size!r} names ratio bucket {index}, but there are {len(buckets)} "
                                 f"(0..{len(buckets) - 1})")
            return index, buckets[index]
        if pair is None:
            raise ValueError(f"image size {size!r} is not understood; write 'auto', 'HxW' (e.g. '1024x768'), "
                             "'W:H' (e.g. '16:9') or '<img_ratio_i>'")
        a, sep, b = int(pair.group(1)), pair.group(2), int(pair.group(3))
        height, width = (a, b) if sep == "x" else (b, a)
    elif (isinstance(size, (tuple, list)) and len(size) == 2
          and all(isinstance(s, int) and not isinstance(s, bool) for s in size)):
        height, width = size
    else:
        raise ValueError(f"image size {size!r} is not understood; give 'auto', 'HxW', 'W:H', '<img_ratio_i>' "
                         "or a (height, width) pair of ints")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size {size!r} has a zero side; both height and width must be positive")
    index = buckets.nearest(width, height)
    return index, buckets[index]


def as_rgb(image):
    """The image as the release reads it: EXIF orientation applied, then converted to RGB (alpha dropped)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}; convert tensors with image_from_tensor")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"the image is empty ({image.width}x{image.height} pixels); give an image with pixels")
    return ImageOps.exif_transpose(image).convert("RGB")


def image_from_tensor(pixels):
    """A PIL RGB image from a ComfyUI IMAGE (height, width, channels) or (1, H, W, C) float tensor in [0, 1].

    Values are rounded to the nearest uint8, so an image loaded from 8-bit pixels comes back exactly.
    """
    if pixels.ndim == 4 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3, 4) or 0 in pixels.shape:
        raise ValueError(f"expected one image as (height, width, 1|3|4) in [0, 1], got shape {tuple(pixels.shape)}; "
                         "pass the images of a batch one at a time")
    data = (pixels.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[data.shape[-1]]
    image = Image.frombytes(mode, (data.shape[1], data.shape[0]), data.squeeze(-1).contiguous().numpy().tobytes())
    return image.convert("RGB")


def fit_to_bucket(image, bucket, crop=True):
    """`image` resized with LANCZOS to exactly `bucket`.

    crop=True (an explicit output size): scale so the image covers the bucket, then cut the center.
    crop=False (output size "auto"): stretch onto the bucket, aspect ratio not kept.
    """
    th, tw = bucket
    if not crop:
        return image.resize((tw, th), resample=Image.Resampling.LANCZOS)
    w, h = image.size
    if h / w < th / tw:
        rh, rw = th, round(th / h * w)
    else:
        rh, rw = round(tw / w * h), tw
    top, left = round((rh - th) / 2.0), round((rw - tw) / 2.0)
    return image.resize((rw, rh), resample=Image.Resampling.LANCZOS).crop((left, top, left + tw, top + th))


def _uint8_chw(image):
    """(3, H, W) uint8 view of an RGB PIL image, channels innermost in memory as torchvision leaves it."""
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(image.height, image.width, 3).permute(2, 0, 1)


def vae_pixels(image):
    """The VAE input: (3, H, W) float32, (u8 / 255 - 0.5) / 0.5, so in [-1, 1]."""
    return _uint8_chw(image).float().div(255).sub(0.5).div(0.5)


def naflex_size(height, width, patch_size, max_patches, eps=1e-5):
    """(height, width) in pixels, multiples of patch_size, of the largest scaling of the image that keeps
    at most max_patches patches (each side rounded up to whole patches, at least one): the binary search
    over the scale that SigLIP2's naflex processor runs."""
    def side(scale, size):
        return int(max(patch_size, math.ceil(size * scale / patch_size) * patch_size))

    lo, hi = eps / 10, 100.0
    while hi - lo >= eps:
        mid = (lo + hi) / 2
        if (side(mid, height) / patch_size) * (side(mid, width) / patch_size) <= max_patches:
            lo = mid
        else:
            hi = mid
    return side(lo, height), side(lo, width)


class ViTInput(NamedTuple):
    pixel_values: torch.Tensor     # (max_patches, patch_size² · 3) float32, rows past the image are zeros
    attention_mask: torch.Tensor   # (max_patches,) int32, 1 for the image's patches
    spatial_shape: torch.Tensor    # (2,) int64: the patch grid (rows, columns)


@dataclass(frozen=True)
class NaflexPreprocessor:
    """SigLIP2's naflex preprocessing with the values of the model's `vit_processor` config."""

    patch_size: int = 16
    max_patches: int = 256
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    resample: str = "bilinear"

    @classmethod
    def from_config(cls, config):
        """From the `vit_processor` dict of the model's config.json."""
        resample = config.get("resample", 2)
        if resample not in NAFLEX_RESAMPLE or not config.get("do_resize", True):
            raise ValueError(f"vit_processor asks for resample={resample}, do_resize={config.get('do_resize')}; "
                             f"only resizing with {sorted(NAFLEX_RESAMPLE)} (bilinear, bicubic) is supported")
        if not (config.get("do_rescale", True) and config.get("do_normalize", True)):
            raise ValueError("vit_processor turns off rescaling or normalising; SigLIP2 needs both")
        return cls(patch_size=int(config.get("patch_size", 16)), max_patches=int(config.get("max_num_patches", 256)),
                   mean=tuple(config.get("image_mean", cls.mean)), std=tuple(config.get("image_std", cls.std)),
                   rescale_factor=float(config.get("rescale_factor", 1 / 255)), resample=NAFLEX_RESAMPLE[resample])

    def _resize(self, pixels, height, width):
        """Antialiased resize of (3, H, W) uint8 as torchvision does it on the CPU: in uint8 where the CPU
        has the vector kernel (or for bicubic), else in float32 rounded back."""
        if pixels.shape[1:] == (height, width):
            return pixels
        native = (self.resample == "bicubic" or torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
                  or platform.machine() in ("aarch64", "arm64"))
        x = pixels[None] if native else pixels[None].float()
        x = torch.nn.functional.interpolate(x, size=(height, width), mode=self.resample, align_corners=False,
                                            antialias=True)
        return x[0] if native else x[0].clamp_(0, 255).round_().to(torch.uint8)

    def __call__(self, image):
        """ViTInput for an RGB PIL image."""
        pixels = _uint8_chw(image)
        p = self.patch_size
        height, width = naflex_size(image.height, image.width, p, self.max_patches)
        pixels = self._resize(pixels, height, width)
        mean = torch.tensor(self.mean, dtype=torch.float32) * (1.0 / self.rescale_factor)
        std = torch.tensor(self.std, dtype=torch.float32) * (1.0 / self.rescale_factor)
        x = (pixels.float() - mean[:, None, None]) / std[:, None, None]
        rows, cols = height // p, width // p
        patches = x.reshape(3, rows, p, cols, p).permute(1, 3, 2, 4, 0).reshape(rows * cols, p * p * 3)
        values = torch.zeros(self.max_patches, p * p * 3)
        values[: rows * cols] = patches
        mask = torch.zeros(self.max_patches, dtype=torch.int32)
        mask[: rows * cols] = 1
        return ViTInput(values, mask, torch.tensor([rows, cols]))


class CondImage(NamedTuple):
    bucket_index: int              # ratio index of the VAE copy (its `<img_ratio_i>`)
    vae: torch.Tensor              # (3, H, W) float32 in [-1, 1], (H, W) = buckets[bucket_index]
    vit: ViTInput
    original_size: tuple           # (width, height) of the RGB image before any resize


def prepare_cond_image(image, buckets, naflex, crop=True):
    """Both copies of a conditioning image (a PIL image of any mode; EXIF orientation applied).

    crop=True for an explicit output size, False when the output size is "auto" (the release stretches
    the image onto its bucket then). Images are upsampled to their bucket as the release does, but one
    with a side shorter than a ViT patch (naflex.patch_size pixels) is refused: the release would blow
    it up to a bucket of at least base_size / 2 pixels a side, and nothing of it would survive.
    """
    rgb = as_rgb(image)
    if min(rgb.size) < naflex.patch_size:
        raise ValueError(f"an input image is {rgb.width}x{rgb.height} pixels, too small for HunyuanImage-3: each "
                         f"side needs at least {naflex.patch_size} pixels (inputs are resized to a ratio bucket of "
                         f"about {buckets.base_size}x{buckets.base_size}); give a larger image")
    index = buckets.nearest(rgb.width, rgb.height)
    fitted = fit_to_bucket(rgb, buckets[index], crop=crop)
    return CondImage(index, vae_pixels(fitted), naflex(rgb), rgb.size)


def restore_aspect(output, cond_sizes, buckets):
    """The release's last step for output size "auto": if the first conditioning image whose bucket is the
    output's bucket has a ratio 0.01 or more away from it, resize the output (LANCZOS) to that image's
    aspect ratio at about base_size² pixels. `cond_sizes` are the images' original (width, height)."""
    index = buckets.nearest(output.width, output.height)
    for width, height in cond_sizes:
        if buckets.nearest(width, height) == index:
            if abs(height / width - buckets[index].ratio) >= 0.01:
                scale = math.sqrt(buckets.base_size ** 2 / (width * height))
                return output.resize((round(width * scale), round(height * scale)), resample=Image.Resampling.LANCZOS)
            break
    return output
