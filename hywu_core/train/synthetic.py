"""Procedural edit datasets written as real files + manifest, for the demo and the tests.

"brighten_darken": smooth random colour fields as sources; half the records ask to brighten
(target = 0.5 + source / 2), half to darken (target = source / 2). The two directions conflict
(the same kind of source goes opposite ways), the case where one static LoRA compromises and a
per-instance LoRA does not (§5.1).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

KINDS = ("brighten_darken",)
INSTRUCTIONS = ("brighten the image", "darken the image")


def _save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels, mode="RGB").save(path)


def write_procedural_dataset(folder, kind: str = "brighten_darken", count: int = 32, size: int = 32,
                             seed: int = 0, manifest: str = "manifest.jsonl") -> Path:
    """Write `count` PNG edit pairs and their manifest into `folder`; returns the manifest path."""
    if kind not in KINDS:
        raise ValueError(f"procedural dataset kind {kind!r}: use one of {', '.join(KINDS)}")
    if count < 1 or size < 8:
        raise ValueError(f"procedural dataset needs count >= 1 and size >= 8, got count={count}, size={size}")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    lines = []
    for i in range(count):
        coarse = torch.rand(1, 3, 4, 4, generator=generator)
        source = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]
        source = (0.2 + 0.6 * source.clamp(0, 1)).permute(1, 2, 0)
        brighten = i % 2 == 0
        target = 0.5 + source / 2 if brighten else source / 2
        names = (f"images/{i:04d}_source.png", f"images/{i:04d}_target.png")
        _save_png(source, folder / names[0])
        _save_png(target, folder / names[1])
        lines.append(json.dumps({"source": names[0], "target": names[1],
                                 "instruction": INSTRUCTIONS[0 if brighten else 1]}))
    path = folder / manifest
    path.write_text("\n".join(lines) + "\n")
    return path
