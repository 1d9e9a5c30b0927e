"""Validation sample grids during training: each edit sampled through ComfyUI with its generated LoRA.

Sampling is the KSampler path (comfy.sample.sample over the backbone's edit conditioning, then
VAE decode). Each edit is sampled on its own with its generated LoRA injected into every row
of the model input, cond and uncond alike (hywu_core.lora_inject, the dynamic path: no weight is
changed, so the base model is exactly the base again afterwards).

A grid has one row per edit: source | target | base backbone | backbone + generated LoRA.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from hywu_core.lora_inject import per_row_injection


@torch.no_grad()
def sample_edits(backbone, sources: Tensor, instructions: list[str], references: list[Tensor], bundle=None,
                 seed: int = 0, steps: int = 8, cfg: float = 2.0, sampler: str = "euler",
                 scheduler: str = "simple") -> Tensor:
    """Edit each source (N, H, W, 3) by its instruction; with `bundle`, edit i runs with LoRA i. -> IMAGE."""
    import comfy.sample

    positives, negatives, latents = [], [], []
    for i, instruction in enumerate(instructions):
        p, n, latent = backbone.conditioning(sources[i:i + 1], instruction, [r[i:i + 1] for r in references])
        positives.append(p)
        negatives.append(n)
        latents.append(latent)
    outputs = []
    for i in range(len(instructions)):
        latent = comfy.sample.fix_empty_latent_channels(backbone.model, latents[i])
        noise = comfy.sample.prepare_noise(latent, seed + i)
        if bundle is None:
            samples = comfy.sample.sample(backbone.model, noise, steps, cfg, sampler, scheduler, positives[i],
                                          negatives[i], latent, seed=seed + i, disable_pbar=True)
        else:
            rows = torch.tensor([i])
            with per_row_injection(backbone.diffusion_model, bundle,
                                   lambda n: rows.expand(n).to(backbone.device)):
                samples = comfy.sample.sample(backbone.model, noise, steps, cfg, sampler, scheduler, positives[i],
                                              negatives[i], latent, seed=seed + i, disable_pbar=True)
        outputs.append(backbone.vae.decode(samples)[..., :3].float().cpu())
    return torch.cat(outputs)


def save_grid(path: Path, columns: list[Tensor]) -> None:
    """Write IMAGE batches side by side (one column each, one row per item) as a PNG."""
    from PIL import Image

    height = max(c.shape[1] for c in columns)
    width = max(c.shape[2] for c in columns)
    rows = columns[0].shape[0]
    canvas = torch.ones(rows * (height + 2), len(columns) * (width + 2), 3)
    for x, column in enumerate(columns):
        for y in range(rows):
            image = column[y].clamp(0, 1)
            top, left = y * (height + 2) + 1, x * (width + 2) + 1
            canvas[top:top + image.shape[0], left:left + image.shape[1]] = image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((canvas * 255).round().to(torch.uint8).numpy(), mode="RGB").save(path)
