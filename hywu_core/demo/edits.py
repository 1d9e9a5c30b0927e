"""The demo edit suite (paper §5.1): edits whose right answer depends on the image, same-source
conflicts, their scores and datasets.

Every edit starts from a clean crop (hywu_core.demo.images) put into a source state, and asks for
a target. Six pairs of two directions each, of two kinds:

    image-dependent pairs: one instruction, two source states that need opposite edits (the
    target is the clean crop). Text alone cannot route these; the image decides.
    pair         instruction (phrasings)        source states -> clean         score
    exposure     "fix the exposure"             dark, bright                   brightness
    colour       "make the colours natural"     muted, vivid                   saturation
    restore      "restore this photo"           blurred, noisy                 sharpness / noise

    same-source conflicts: one clean source, two instructions that ask for opposite edits.
    light        brighten / darken              clean -> bright, dark          brightness
    focus        blur / sharpen                 clean -> blurred, sharpened    sharpness
    vividness    saturate / desaturate          clean -> vivid, muted          saturation

STATES holds the operations that put a clean crop into a state (brighten / darken by LIGHT_AMOUNT,
chroma scaled by MUTED_CHROMA or VIVID_CHROMA around the luma, Gaussian blur BLUR_SIGMA, Gaussian
noise NOISE_SIGMA, unsharp masking SHARPEN_AMOUNT). Both directions of a pair take the same clean
crop at each index. Each direction has several phrasings; the phrasing varies, the direction is
the label.

Datasets: `make_edits` builds one in memory (8-bit quantised, exactly what PNG files hold);
`write_edit_dataset` writes it as a training folder (src/*.png, tgt/*.png, manifest.jsonl) and
`load_edit_dataset` reads it back. manifest.jsonl holds only the keys the trainer's reader accepts
(hywu_core.train.data rejects unknown keys); the labels (task, pair, source image, crop position)
are in edits.jsonl beside it, one line per manifest line.

Metrics: `psnr` and `ssim` (Wang et al. 2004: 11-tap Gaussian window, sigma 1.5, K1 0.01,
K2 0.03, per-channel mean over the valid region, population covariance; the same numbers as
skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False));
`noise_sigma` doubles as the grain metric, `patch_artefact` measures steps on the 4x4 patch grid
and `patch_lattice` an error that repeats with it.
All filtering uses shifted slices, not convolutions, so results are bitwise reproducible.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from hywu_core.demo.images import (
    CROP_SIZE,
    Crop,
    crop_pool,
    laplacian_variance,
    luminance,
    mean_luminance,
    mean_saturation,
)

BLUR_SIGMA = 1.2
NOISE_SIGMA = 0.06
LIGHT_AMOUNT = 0.4
MUTED_CHROMA = 0.25
VIVID_CHROMA = 1.8
SHARPEN_AMOUNT = 1.0
PATCH = 4   # the demo backbone's patch size: what patch_artefact looks for
MANIFEST = "manifest.jsonl"
LABELS = "edits.jsonl"


class EditSuiteError(ValueError):
    """Bad input to the edit suite (unknown task, bad count, unusable folder); the message names the fix."""


def _check_images(images: Tensor, what: str = "images") -> None:
    if images.ndim < 3 or images.shape[-1] != 3 or not images.is_floating_point():
        raise EditSuiteError(f"{what} must be float RGB (..., H, W, 3) in [0, 1] like a ComfyUI IMAGE, "
                             f"got {images.dtype} {tuple(images.shape)}")


def _shift_filter(images: Tensor, taps: Tensor, dim: int, mode: str) -> Tensor:
    """1-D filter along `dim` of (..., H, W, C) as a sum of shifted slices.

    mode "reflect" keeps the size (edge-mirrored, the edge pixel not repeated); "valid" drops
    len(taps) - 1 pixels.
    """
    radius = (len(taps) - 1) // 2
    length = images.shape[dim]
    if mode == "reflect":
        if radius >= length:
            raise EditSuiteError(f"image side {length} is too small for a {len(taps)}-tap filter")
        index = torch.arange(-radius, length + radius, device=images.device).abs()
        index = torch.where(index >= length, 2 * (length - 1) - index, index)
        images = images.index_select(dim, index)
        length += 2 * radius
    out_length = length - 2 * radius
    out = None
    for k, weight in enumerate(taps.tolist()):
        term = weight * images.narrow(dim, k, out_length)
        out = term if out is None else out + term
    return out


def gaussian_taps(sigma: float, radius: int | None = None) -> Tensor:
    """Normalised Gaussian taps; radius defaults to ceil(3 sigma)."""
    radius = math.ceil(3 * sigma) if radius is None else radius
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).float()


def gaussian_blur(images: Tensor, sigma: float = BLUR_SIGMA) -> Tensor:
    """Separable Gaussian blur of (..., H, W, 3) with mirrored edges; the size is kept."""
    _check_images(images)
    taps = gaussian_taps(sigma)
    return _shift_filter(_shift_filter(images, taps, -3, "reflect"), taps, -2, "reflect")


def sharpen(images: Tensor, amount: float = SHARPEN_AMOUNT, sigma: float = 1.0) -> Tensor:
    """Unsharp masking: x + amount (x - blur(x)), clamped to [0, 1]."""
    _check_images(images)
    return (images + amount * (images - gaussian_blur(images, sigma))).clamp(0, 1)


def add_gaussian_noise(images: Tensor, generator: torch.Generator, sigma: float = NOISE_SIGMA) -> Tensor:
    """images + N(0, sigma^2) per pixel and channel, clamped to [0, 1]; the noise comes from `generator`."""
    _check_images(images)
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return (images + sigma * noise).clamp(0, 1)


def scale_chroma(images: Tensor, factor: float) -> Tensor:
    """Scale every pixel's distance from its BT.601 luma by `factor` (0: grayscale), clamped to [0, 1]."""
    _check_images(images)
    y = luminance(images).unsqueeze(-1)
    return (y + factor * (images - y)).clamp(0, 1)


def to_grayscale(images: Tensor) -> Tensor:
    """BT.601 luma copied to the three channels."""
    _check_images(images)
    return luminance(images).unsqueeze(-1).expand(images.shape).contiguous()


def brighten(images: Tensor, amount: float = LIGHT_AMOUNT) -> Tensor:
    """Move every value `amount` of the way to white: x + amount (1 - x)."""
    _check_images(images)
    return images + amount * (1 - images)


def darken(images: Tensor, amount: float = LIGHT_AMOUNT) -> Tensor:
    """Move every value `amount` of the way to black: (1 - amount) x."""
    _check_images(images)
    return (1 - amount) * images


def noise_sigma(images: Tensor) -> Tensor:
    """Noise standard deviation estimated from the luma (Immerkaer 1996, "Fast noise variance estimation").

    The 3x3 mask [[1,-2,1],[-2,4,-2],[1,-2,1]] (difference of two Laplacians) cancels smooth
    structure; sigma = sqrt(pi/2) / (6 (H-2)(W-2)) * sum |mask * luma| over the interior. The
    mask is applied as (1,-2,1) separably along rows and columns. Noise drawn independently per
    channel with sigma s shows in the luma as 0.668 s (the norm of the BT.601 weights). It is
    also the grain metric: grain a sampler leaves shows here as it does for added noise.
    """
    _check_images(images)
    y = luminance(images).unsqueeze(-1)
    taps = torch.tensor([1.0, -2.0, 1.0])
    response = _shift_filter(_shift_filter(y, taps, -3, "valid"), taps, -2, "valid")[..., 0]
    h, w = response.shape[-2:]
    return math.sqrt(math.pi / 2) / (6 * h * w) * response.abs().sum((-2, -1))


def patch_artefact(images: Tensor, patch: int = PATCH) -> Tensor:
    """How much stronger the luma steps are across the patch grid than inside patches, per image:
    mean |step| between pixels on either side of a grid line / mean |step| elsewhere, minus 1.

    About 0 for natural images (a grid line is just another place); a backbone that leaves its
    4x4 patches visible raises it.
    """
    _check_images(images)
    y = luminance(images).double()
    steps = [(y[..., :, 1:] - y[..., :, :-1]).abs(), (y[..., 1:, :] - y[..., :-1, :]).abs().transpose(-2, -1)]
    on_grid = (torch.arange(1, y.shape[-1]) % patch == 0, torch.arange(1, y.shape[-2]) % patch == 0)
    across = torch.cat([s[..., grid].flatten(-2) for s, grid in zip(steps, on_grid)], -1).mean(-1)
    inside = torch.cat([s[..., ~grid].flatten(-2) for s, grid in zip(steps, on_grid)], -1).mean(-1)
    return (across / inside.clamp_min(1e-6) - 1).float()


def patch_lattice(images: Tensor, reference: Tensor, patch: int = PATCH) -> Tensor:
    """Strength of the part of images - reference that repeats with the patch grid, per image, in
    the luma's units: the luma difference averaged over all patches at each of the patch x patch
    positions, its mean removed, root mean square.

    0 at the reference. An edit's own error is smooth or tied to the content, which has no
    preferred position inside the patches, so it averages out; marks a backbone draws the same in
    every patch (a texture inside them, or steps on every grid line) stay. patch_artefact sees only
    the steps, and only relative to the image's own; patches offset at random show there, not here.
    """
    _check_images(images)
    _check_images(reference, "reference")
    if images.shape != reference.shape:
        raise EditSuiteError(f"images {tuple(images.shape)} and reference {tuple(reference.shape)} differ in shape")
    error = luminance(images).double() - luminance(reference).double()
    h, w = (error.shape[-2] // patch) * patch, (error.shape[-1] // patch) * patch
    if h == 0 or w == 0:
        raise EditSuiteError(f"images of {tuple(images.shape[-3:-1])} are smaller than one {patch}x{patch} patch")
    tiles = error[..., :h, :w].reshape(*error.shape[:-2], h // patch, patch, w // patch, patch)
    pattern = tiles.mean((-4, -2))
    pattern = pattern - pattern.mean((-2, -1), keepdim=True)
    return pattern.square().mean((-2, -1)).sqrt().float()


def sharpness(images: Tensor) -> Tensor:
    """Laplacian variance of the luma (blur lowers it, sharpening raises it)."""
    _check_images(images)
    return laplacian_variance(images)


def saturation(images: Tensor) -> Tensor:
    """Mean HSV saturation (muting the colour lowers it, vivid colour raises it)."""
    _check_images(images)
    return mean_saturation(images)


def brightness(images: Tensor) -> Tensor:
    """Mean BT.601 luma (brighten raises it, darken lowers it)."""
    _check_images(images)
    return mean_luminance(images)


def _noisy(images: Tensor, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        raise EditSuiteError("the noisy state needs a torch.Generator: pass generator=torch.Generator()"
                             ".manual_seed(seed)")
    return add_gaussian_noise(images, generator)


STATES = {
    "clean": lambda x, g: x,
    "dark": lambda x, g: darken(x),
    "bright": lambda x, g: brighten(x),
    "muted": lambda x, g: scale_chroma(x, MUTED_CHROMA),
    "vivid": lambda x, g: scale_chroma(x, VIVID_CHROMA),
    "blurred": lambda x, g: gaussian_blur(x),
    "noisy": _noisy,
    "sharpened": lambda x, g: sharpen(x),
}


def put_in_state(state: str, clean: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Clean images (..., H, W, 3) in source state `state` (one of STATES); "noisy" draws from `generator`."""
    if state not in STATES:
        raise EditSuiteError(f"unknown image state {state!r}: use one of {', '.join(STATES)}")
    _check_images(clean)
    return STATES[state](clean, generator)


@dataclass(frozen=True)
class Direction:
    """One edit direction: its pair, the score it moves and which way (+1 up, -1 down from source
    to target), the state of its source and of its target, and its instruction phrasings."""

    name: str
    pair: str
    score: str
    sign: int
    source_state: str
    target_state: str
    phrasings: tuple[str, ...]


@dataclass(frozen=True)
class Pair:
    """Two directions that ask for opposite edits: "image-dependent" (one instruction, two source
    states) or "conflict" (one clean source, two instructions)."""

    name: str
    kind: str
    members: tuple[str, str]


SCORES = {"sharpness": sharpness, "noise": noise_sigma, "saturation": saturation, "brightness": brightness}
EXPOSURE = ("fix the exposure", "correct the exposure", "fix the light in this photo", "make the exposure right",
            "give this picture a normal exposure")
COLOUR = ("make the colours natural", "make the colors natural", "fix the colour", "give it natural colour",
          "correct the colors of this photo")
RESTORE = ("restore this photo", "restore the image", "repair this picture", "restore it", "fix this old photo")

DIRECTIONS = {d.name: d for d in (
    Direction("fix_dark", "exposure", "brightness", +1, "dark", "clean", EXPOSURE),
    Direction("fix_bright", "exposure", "brightness", -1, "bright", "clean", EXPOSURE),
    Direction("fix_muted", "colour", "saturation", +1, "muted", "clean", COLOUR),
    Direction("fix_vivid", "colour", "saturation", -1, "vivid", "clean", COLOUR),
    Direction("restore_blurred", "restore", "sharpness", +1, "blurred", "clean", RESTORE),
    Direction("restore_noisy", "restore", "noise", -1, "noisy", "clean", RESTORE),
    Direction("brighten", "light", "brightness", +1, "clean", "bright",
              ("brighten the image", "make it brighter", "make the picture brighter", "brighten it",
               "make the photo more light")),
    Direction("darken", "light", "brightness", -1, "clean", "dark",
              ("darken the image", "make it darker", "make the picture darker", "darken it",
               "make the photo more dark")),
    Direction("blur", "focus", "sharpness", -1, "clean", "blurred",
              ("blur the image", "make it blurry", "make the photo less sharp", "add blur to this picture",
               "blur it")),
    Direction("sharpen", "focus", "sharpness", +1, "clean", "sharpened",
              ("sharpen the image", "make it sharper", "make the photo more sharp", "sharpen this picture",
               "sharpen it")),
    Direction("saturate", "vividness", "saturation", +1, "clean", "vivid",
              ("make the colours vivid", "make it more colorful", "saturate the image", "boost the colour",
               "make the colors stronger")),
    Direction("desaturate", "vividness", "saturation", -1, "clean", "muted",
              ("mute the colours", "make it less colorful", "desaturate the image", "fade the colour",
               "make the colors weaker")),
)}
PAIRS = {p.name: p for p in (
    Pair("exposure", "image-dependent", ("fix_dark", "fix_bright")),
    Pair("colour", "image-dependent", ("fix_muted", "fix_vivid")),
    Pair("restore", "image-dependent", ("restore_blurred", "restore_noisy")),
    Pair("light", "conflict", ("brighten", "darken")),
    Pair("focus", "conflict", ("blur", "sharpen")),
    Pair("vividness", "conflict", ("saturate", "desaturate")),
)}


def direction(task: str) -> Direction:
    """The Direction named `task`, or EditSuiteError listing the names."""
    if task not in DIRECTIONS:
        raise EditSuiteError(f"unknown edit direction {task!r}: use one of {', '.join(DIRECTIONS)}")
    return DIRECTIONS[task]


def edit_pair(task: str, clean: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(source, target) of direction `task` for clean images: each put into the direction's state."""
    spec = direction(task)
    return put_in_state(spec.source_state, clean, generator), put_in_state(spec.target_state, clean, generator)


def score(task: str, images: Tensor) -> Tensor:
    """The directional score of `task`, one value per image."""
    return SCORES[direction(task).score](images)


def directional_gain(task: str, source: Tensor, output: Tensor) -> Tensor:
    """sign * (score(output) - score(source)) per image: positive when `output` moved the right way."""
    return direction(task).sign * (score(task, output) - score(task, source))


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB per image of (..., H, W, 3); inf for identical images."""
    _check_images(a, "a")
    if a.shape != b.shape:
        raise EditSuiteError(f"psnr needs images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    mse = (a.double() - b.double()).pow(2).mean((-3, -2, -1))
    return (10 * torch.log10(data_range ** 2 / mse)).float()


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0, sigma: float = 1.5) -> Tensor:
    """Structural similarity per image of (..., H, W, 3): Gaussian-weighted local statistics
    (11 taps at sigma 1.5), mean over the valid region and the channels; 1.0 for identical images."""
    _check_images(a, "a")
    if a.shape != b.shape:
        raise EditSuiteError(f"ssim needs images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    radius = int(3.5 * sigma + 0.5)
    if min(a.shape[-3:-1]) < 2 * radius + 1:
        raise EditSuiteError(f"ssim needs images of at least {2 * radius + 1}x{2 * radius + 1} pixels, "
                             f"got {a.shape[-3]}x{a.shape[-2]}")
    taps = gaussian_taps(sigma, radius).double()
    a, b = a.double(), b.double()

    def local_mean(x: Tensor) -> Tensor:
        return _shift_filter(_shift_filter(x, taps, -3, "valid"), taps, -2, "valid")

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a ** 2
    var_b = local_mean(b * b) - mu_b ** 2
    cov = local_mean(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return index.mean((-3, -2, -1)).float()


def quantize(images: Tensor) -> Tensor:
    """Round to the 8-bit grid a PNG stores: round(255 x) / 255 in float32."""
    return (images.clamp(0, 1) * 255).round() / 255


@dataclass
class EditSet:
    """N edits as ComfyUI IMAGE batches plus their labels; `images` names each edit's source image."""

    source: Tensor
    target: Tensor
    instructions: list[str]
    tasks: list[str]
    pairs: list[str]
    images: list[str]
    boxes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.tasks)

    def subset(self, indices: list[int]) -> "EditSet":
        """The edits at `indices`, in that order."""
        index = torch.tensor(indices, dtype=torch.long)
        return EditSet(self.source[index], self.target[index], [self.instructions[i] for i in indices],
                       [self.tasks[i] for i in indices], [self.pairs[i] for i in indices],
                       [self.images[i] for i in indices], [self.boxes[i] for i in indices])

    def by_task(self, task: str) -> "EditSet":
        """The edits of direction `task`."""
        direction(task)
        return self.subset([i for i, t in enumerate(self.tasks) if t == task])


def _check_tasks(tasks) -> tuple[str, ...]:
    tasks = tuple(tasks)
    for task in tasks:
        direction(task)
    if not tasks:
        raise EditSuiteError(f"no edit directions asked; use some of {', '.join(DIRECTIONS)}")
    return tasks


def make_edits(split: str, per_direction: int, seed: int = 0, size: int = CROP_SIZE,
               tasks=tuple(DIRECTIONS)) -> EditSet:
    """`per_direction` edits of each direction in `tasks` on crops of `split`'s pool, 8-bit quantised.

    The seed picks the crops (a permutation of the pool per pair, cycled when more are asked
    than the pool holds), the noise and the phrasings. Both directions of a pair take the same
    clean crop at each index. Order: crop index, then pair, then direction.
    """
    tasks = _check_tasks(tasks)
    if isinstance(per_direction, bool) or not isinstance(per_direction, int) or per_direction < 1:
        raise EditSuiteError(f"per_direction must be a positive integer, got {per_direction!r}")
    pool: list[Crop] = crop_pool(split, size)
    generator = torch.Generator().manual_seed(seed)
    pairs = [name for name, pair in PAIRS.items() if any(t in tasks for t in pair.members)]
    orders = {p: torch.randperm(len(pool), generator=generator).tolist() for p in pairs}
    sources, targets, labels = [], [], []
    for i in range(per_direction):
        for pair in pairs:
            crop = pool[orders[pair][i % len(pool)]]
            for task in (t for t in PAIRS[pair].members if t in tasks):
                source, target = edit_pair(task, crop.image, generator)
                phrasings = DIRECTIONS[task].phrasings
                phrasing = phrasings[int(torch.randint(len(phrasings), (1,), generator=generator))]
                sources.append(quantize(source))
                targets.append(quantize(target))
                labels.append((phrasing, task, pair, crop.source, (crop.top, crop.left)))
    instructions, task_names, pair_names, images, boxes = (list(column) for column in zip(*labels))
    return EditSet(torch.stack(sources), torch.stack(targets), instructions, task_names, pair_names,
                   images, boxes)


def save_png(image: Tensor, path: Path) -> None:
    """An IMAGE item (H, W, 3) in [0, 1] as an 8-bit RGB PNG."""
    from PIL import Image

    Image.fromarray((image * 255).round().to(torch.uint8).numpy(), mode="RGB").save(path)


def load_png(path: Path) -> Tensor:
    """An RGB PNG as an IMAGE item (H, W, 3) float32 in [0, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)


def write_edit_dataset(folder, split: str, per_direction: int, seed: int = 0, size: int = CROP_SIZE,
                       tasks=tuple(DIRECTIONS)) -> Path:
    """Write `make_edits(split, per_direction, seed, size, tasks)` as a training folder; returns
    the manifest path.

        <folder>/src/00001.png, <folder>/tgt/00001.png, ...   8-bit RGB PNGs
        <folder>/manifest.jsonl   {"source", "target", "instruction"} per edit (the trainer's format)
        <folder>/edits.jsonl      the same records plus task, pair, split, seed, image, top, left

    The folder must be new or empty (stale files of an earlier dataset would mix in). The same
    arguments give bitwise identical files.
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise EditSuiteError(f"{folder} exists and is not an empty folder; choose a new folder for the "
                             "dataset or delete this one")
    edits = make_edits(split, per_direction, seed, size, tasks)
    (folder / "src").mkdir(parents=True)
    (folder / "tgt").mkdir()
    manifest, labels = [], []
    for i in range(len(edits)):
        names = (f"src/{i + 1:05d}.png", f"tgt/{i + 1:05d}.png")
        save_png(edits.source[i], folder / names[0])
        save_png(edits.target[i], folder / names[1])
        record = {"source": names[0], "target": names[1], "instruction": edits.instructions[i]}
        manifest.append(json.dumps(record))
        labels.append(json.dumps({**record, "task": edits.tasks[i], "pair": edits.pairs[i], "split": split,
                                  "seed": seed, "image": edits.images[i], "top": edits.boxes[i][0],
                                  "left": edits.boxes[i][1]}))
    (folder / LABELS).write_text("\n".join(labels) + "\n")
    path = folder / MANIFEST
    path.write_text("\n".join(manifest) + "\n")
    return path


def load_edit_dataset(folder) -> EditSet:
    """Read a folder written by `write_edit_dataset` back into an EditSet (bitwise what make_edits gave)."""
    folder = Path(folder)
    path = folder / LABELS
    if not path.is_file():
        raise EditSuiteError(f"no {LABELS} in {folder}: write the dataset with "
                             "hywu_core.demo.edits.write_edit_dataset(folder, split, per_direction)")
    sources, targets, columns = [], [], []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
            files = [folder / record["source"], folder / record["target"]]
            label = (record["instruction"], record["task"], record["pair"], record["image"],
                     (int(record["top"]), int(record["left"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise EditSuiteError(f"{path} line {number} is not an edit record ({type(error).__name__}: {error}); "
                                 "rewrite the folder with write_edit_dataset") from None
        for file in files:
            if not file.is_file():
                raise EditSuiteError(f"{path} line {number}: image {file} does not exist; "
                                     "rewrite the folder with write_edit_dataset")
        direction(label[1])
        sources.append(load_png(files[0]))
        targets.append(load_png(files[1]))
        columns.append(label)
    if not columns:
        raise EditSuiteError(f"{path} has no records; rewrite the folder with write_edit_dataset")
    instructions, tasks, pairs, images, boxes = (list(column) for column in zip(*columns))
    return EditSet(torch.stack(sources), torch.stack(targets), instructions, tasks, pairs, images, boxes)
