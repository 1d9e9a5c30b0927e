"""Source images of the demo edit suite (paper §5.1): 64x64 RGB crops in three fixed, disjoint splits.

Images are ComfyUI IMAGE items: float32 (H, W, 3) in [0, 1]; batches are (N, H, W, 3). The
pixel measures below take any leading batch shape and return one value per image.

Two kinds of source image, every one named:
  "skimage:<name>"        a sample image that ships inside the scikit-image wheel, read from its
                          file in skimage/data/ with PIL. (Not through skimage.data.<name>(): for
                          a file missing from the wheel that fetcher needs pooch and the network,
                          and under pytest it turns the miss into a skip, hiding it.) Each is
                          area-downscaled to a shorter side of SOURCE_SIDE pixels, so a crop holds
                          structure rather than a flat patch. Grayscale ones are tinted with a
                          two-colour ramp (hue fixed by the name), so every source has colour to remove.
  "procedural:<kind>:<n>" a SOURCE_SIDE^2 canvas drawn by torch from (kind, n): shapes on a gradient,
                          a rotated lit checkerboard, a multi-octave smooth noise field, plaid stripes.

The split is by source image, not by crop: TRAIN_SOURCES (every model's training data), VAL_SOURCES
(every choice: steps, ranks, which edits the demo shows) and TEST_SOURCES (the reported figures,
read once) share no image (and
scikit-image's `cat` is the same photo as `chelsea`, `motorcycle_right` a twin of the left view,
so neither is used). `crop_pool(split)` takes PER_SOURCE crops from each source of the split at
positions drawn from the source's name, keeping only crops that `crop_is_usable` accepts: each
edit of the suite then moves its directional score measurably.
"""
from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SOURCE_SIDE = 128
PER_SOURCE = 8
CROP_SIZE = 64
SPLITS = ("train", "val", "test")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights PIL's convert("L") uses

# sample name -> file in skimage/data/ of the scikit-image wheel (skimage.data.<name>() reads the same file)
SKIMAGE_FILES = {"astronaut": "astronaut.png", "coffee": "coffee.png", "rocket": "rocket.jpg",
                 "immunohistochemistry": "ihc.png", "camera": "camera.png", "coins": "coins.png",
                 "moon": "moon.png", "brick": "brick.png", "grass": "grass.png", "page": "page.png",
                 "chelsea": "chelsea.png", "retina": "retina.jpg", "motorcycle_left": "motorcycle_left.png",
                 "clock": "clock_motion.png", "gravel": "gravel.png", "text": "text.png"}
SKIMAGE_TRAIN = ("astronaut", "coffee", "rocket", "immunohistochemistry",
                 "camera", "coins", "moon", "brick", "grass", "page")
SKIMAGE_VAL = ("chelsea", "retina", "clock")
SKIMAGE_TEST = ("motorcycle_left", "gravel", "text")
PROCEDURAL_KINDS = ("shapes", "checker", "noise", "stripes")
PROCEDURAL_SEEDS = {"train": (0, 1, 2), "val": (100, 101), "test": (200, 201)}


def _split_sources(skimage_names: tuple[str, ...], split: str) -> tuple[str, ...]:
    return tuple(f"skimage:{n}" for n in skimage_names) + \
        tuple(f"procedural:{k}:{s}" for k in PROCEDURAL_KINDS for s in PROCEDURAL_SEEDS[split])


TRAIN_SOURCES = _split_sources(SKIMAGE_TRAIN, "train")
VAL_SOURCES = _split_sources(SKIMAGE_VAL, "val")
TEST_SOURCES = _split_sources(SKIMAGE_TEST, "test")


class ImagePoolError(ValueError):
    """An unknown split or source name, or a crop size the sources cannot give; the message says which exist."""


@dataclass(frozen=True)
class Crop:
    """One pool item: `image` (size, size, 3) cut from `source` at (top, left) of its SOURCE_SIDE image."""

    image: Tensor
    source: str
    top: int
    left: int


def _stable_seed(*parts) -> int:
    """A seed from names that is the same in every process (Python's hash() is salted per process)."""
    return zlib.crc32(":".join(str(p) for p in parts).encode())


def luminance(images: Tensor) -> Tensor:
    """BT.601 luma (..., H, W) of images (..., H, W, 3)."""
    weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device)
    return (images * weights).sum(-1)


def mean_luminance(images: Tensor) -> Tensor:
    """Mean BT.601 luma per image: the brighten / darken score."""
    return luminance(images).mean((-2, -1))


def mean_saturation(images: Tensor) -> Tensor:
    """Mean HSV saturation (max - min) / max per image (0 where max is 0): the colour / grayscale score."""
    high = images.amax(-1)
    low = images.amin(-1)
    return ((high - low) / high.clamp_min(1e-6)).mean((-2, -1))


def laplacian_variance(images: Tensor) -> Tensor:
    """Variance of the 4-neighbour Laplacian of the luma over the interior pixels: the sharpness score.

    Written with shifted slices (no convolution) so the value is bitwise the same on any thread count.
    """
    y = luminance(images)
    lap = y[..., :-2, 1:-1] + y[..., 2:, 1:-1] + y[..., 1:-1, :-2] + y[..., 1:-1, 2:] - 4 * y[..., 1:-1, 1:-1]
    return lap.flatten(-2).var(-1, unbiased=False)


def hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """HSV in [0, 1] (any equal shapes) to RGB (..., 3)."""
    k = torch.stack([(n + h * 6) % 6 for n in (5.0, 3.0, 1.0)], -1)
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return v.unsqueeze(-1) - (v * s).unsqueeze(-1) * ramp


def _random_colour(generator: torch.Generator, low: float = 0.3, high: float = 0.95) -> Tensor:
    """A saturated colour whose HSV value lies in [low, high]."""
    h, s, v = torch.rand(3, generator=generator)
    return hsv_to_rgb(h, 0.35 + 0.55 * s, low + (high - low) * v)


def _dark_light(generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two colours far apart in brightness, so patterns made of them have contrast."""
    return _random_colour(generator, 0.2, 0.45), _random_colour(generator, 0.65, 0.95)


def _downscale(image: Tensor, side: int) -> Tensor:
    """(H, W, 3) area-downscaled so the shorter side is `side` (never upscaled)."""
    h, w = image.shape[:2]
    factor = side / min(h, w)
    if factor >= 1:
        return image
    size = (max(side, round(h * factor)), max(side, round(w * factor)))
    return F.interpolate(image.permute(2, 0, 1)[None], size=size, mode="area")[0].permute(1, 2, 0).contiguous()


def _tint(gray: Tensor, name: str) -> Tensor:
    """A grayscale (H, W) image through a dark-to-light two-colour ramp whose hues come from `name`."""
    hue = torch.rand(1, generator=torch.Generator().manual_seed(_stable_seed("tint", name)))[0]
    dark = hsv_to_rgb(hue, torch.tensor(0.75), torch.tensor(0.12))
    light = hsv_to_rgb((hue + 0.35) % 1, torch.tensor(0.45), torch.tensor(1.0))
    return dark + gray[..., None] * (light - dark)


def skimage_file(name: str):
    """The file of scikit-image sample `name` inside the installed wheel (skimage/data/)."""
    from importlib.resources import files

    path = files("skimage") / "data" / SKIMAGE_FILES[name]
    if not path.is_file():
        raise ImagePoolError(f"scikit-image sample {name!r} ({SKIMAGE_FILES[name]}) is not in the installed "
                             f"scikit-image ({path}); reinstall the environment with ./hywu setup")
    return path


def _skimage_array(name: str):
    """The sample as uint8 (H, W) or (H, W, 3), read from the wheel with PIL."""
    import numpy as np
    from PIL import Image

    with Image.open(skimage_file(name)) as image:
        return np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"))


def _skimage_source(name: str) -> Tensor:
    image = torch.from_numpy(_skimage_array(name).astype("float32") / 255.0)
    if image.ndim == 2:
        image = _tint(_downscale(image[..., None], SOURCE_SIDE)[..., 0], name)
    else:
        image = _downscale(image[..., :3], SOURCE_SIDE)
    return image.clamp(0, 1).contiguous()


def _grid(side: int) -> tuple[Tensor, Tensor]:
    coords = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    return torch.meshgrid(coords, coords, indexing="ij")


def _gradient(generator: torch.Generator, side: int) -> Tensor:
    y, x = _grid(side)
    angle = torch.rand(1, generator=generator)[0] * 2 * math.pi
    t = (x - 0.5) * torch.cos(angle) + (y - 0.5) * torch.sin(angle)
    t = ((t - t.min()) / (t.max() - t.min()))[..., None]
    return _random_colour(generator) * (1 - t) + _random_colour(generator) * t


def _shapes(generator: torch.Generator, side: int) -> Tensor:
    image = _gradient(generator, side)
    y, x = _grid(side)
    for _ in range(10):
        cy, cx, ry, rx, is_box = torch.rand(5, generator=generator)
        ry, rx = 0.06 + 0.2 * ry, 0.06 + 0.2 * rx
        if is_box < 0.5:
            inside = ((y - cy).abs() < ry) & ((x - cx).abs() < rx)
        else:
            inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
        image = torch.where(inside[..., None], _random_colour(generator), image)
    return image


def _checker(generator: torch.Generator, side: int) -> Tensor:
    y, x = _grid(side)
    period, angle = torch.rand(2, generator=generator)
    period = 0.08 + 0.12 * period
    angle = angle * math.pi / 2
    u = (x * torch.cos(angle) + y * torch.sin(angle)) / period
    v = (-x * torch.sin(angle) + y * torch.cos(angle)) / period
    cells = ((torch.floor(u) + torch.floor(v)) % 2)[..., None]
    dark, light = _dark_light(generator)
    board = dark * (1 - cells) + light * cells
    light = 0.6 + 0.4 * luminance(_gradient(generator, side))[..., None]
    return board * light


def _noise(generator: torch.Generator, side: int) -> Tensor:
    field = torch.zeros(1, 3, side, side)
    for octave, cells in enumerate((4, 8, 16, 32, 64)):
        coarse = torch.rand(1, 3, cells, cells, generator=generator)
        field += F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False) * 0.75 ** octave
    field = field[0].permute(1, 2, 0)
    low, high = field.amin((0, 1)), field.amax((0, 1))
    return 0.1 + 0.8 * (field - low) / (high - low)


def _stripes(generator: torch.Generator, side: int) -> Tensor:
    y, x = _grid(side)
    image = torch.zeros(side, side, 3)
    for weight in (0.7, 0.3):
        angle, period, phase = torch.rand(3, generator=generator)
        angle, period = angle * math.pi, 0.05 + 0.15 * period
        wave = torch.sin(2 * math.pi * ((x * torch.cos(angle) + y * torch.sin(angle)) / period + phase))
        t = (0.5 + 2 * wave).clamp(0, 1)[..., None]
        dark, light = _dark_light(generator)
        image += weight * (dark * (1 - t) + light * t)
    return image


_PROCEDURAL = {"shapes": _shapes, "checker": _checker, "noise": _noise, "stripes": _stripes}


def _procedural_source(kind: str, number: int) -> Tensor:
    generator = torch.Generator().manual_seed(_stable_seed("procedural", kind, number))
    return _PROCEDURAL[kind](generator, SOURCE_SIDE).clamp(0, 1).contiguous()


@functools.lru_cache(maxsize=None)
def _load_source(name: str) -> Tensor:
    kind, _, rest = name.partition(":")
    if kind == "skimage" and rest in SKIMAGE_TRAIN + SKIMAGE_VAL + SKIMAGE_TEST:
        return _skimage_source(rest)
    if kind == "procedural":
        family, _, number = rest.partition(":")
        if family in _PROCEDURAL and number.isdigit():
            return _procedural_source(family, int(number))
    raise ImagePoolError(f"unknown source image {name!r}: use a name from TRAIN_SOURCES, VAL_SOURCES or TEST_SOURCES "
                         "('skimage:<name>' or 'procedural:<kind>:<n>' with kind in "
                         f"{', '.join(PROCEDURAL_KINDS)})")


def load_source(name: str) -> Tensor:
    """The full source image `name` as (H, W, 3) float32 in [0, 1] (a fresh copy: safe to modify)."""
    return _load_source(name).clone()


def source_names(split: str) -> tuple[str, ...]:
    """The source images of a split: "train", "val" or "test" (disjoint by construction)."""
    sources = {"train": TRAIN_SOURCES, "val": VAL_SOURCES, "test": TEST_SOURCES}
    if split in sources:
        return sources[split]
    raise ImagePoolError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def crop_is_usable(image: Tensor) -> bool:
    """A crop every edit can move: mid-range brightness, contrast, colour and fine detail.

    Thresholds: mean luma in [0.15, 0.85] (brighten and darken both have room), luma standard
    deviation >= 0.05 and Laplacian variance >= 5e-4 (blur removes visible detail), mean
    saturation >= 0.1 (grayscale removes visible colour).
    """
    y = luminance(image)
    return bool(0.15 <= y.mean() <= 0.85 and y.std() >= 0.05 and laplacian_variance(image) >= 5e-4
                and mean_saturation(image) >= 0.1)


def source_crops(name: str, count: int = PER_SOURCE, size: int = CROP_SIZE, attempts: int = 400) -> list[Crop]:
    """`count` usable (size, size, 3) crops of source `name`, at positions drawn from the name alone."""
    image = _load_source(name)
    height, width = image.shape[:2]
    if not 8 <= size <= min(height, width):
        raise ImagePoolError(f"crop size {size} does not fit source {name!r} ({height}x{width}); "
                             f"use a size from 8 to {min(height, width)}")
    generator = torch.Generator().manual_seed(_stable_seed("crops", name, size))
    crops = []
    for _ in range(attempts):
        top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
        crop = image[top:top + size, left:left + size].clone()
        if crop_is_usable(crop):
            crops.append(Crop(crop, name, top, left))
            if len(crops) == count:
                return crops
    raise ImagePoolError(f"source {name!r} gave only {len(crops)} usable {size}x{size} crops in {attempts} "
                         f"draws, {count} asked; ask for fewer or smaller crops")


@functools.lru_cache(maxsize=8)
def _crop_pool(split: str, size: int, per_source: int) -> tuple[Crop, ...]:
    return tuple(crop for name in source_names(split) for crop in source_crops(name, per_source, size))


def crop_pool(split: str, size: int = CROP_SIZE, per_source: int = PER_SOURCE) -> list[Crop]:
    """The split's crop pool: `per_source` crops of each of its sources, in source order
    (deterministic; the images are fresh copies)."""
    return [Crop(c.image.clone(), c.source, c.top, c.left) for c in _crop_pool(split, size, per_source)]
