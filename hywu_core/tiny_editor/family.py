"""A freshly initialised demo family laid out as ComfyUI model folders (docs/design.md, "The tiny editor").

    <models>/checkpoints/<name>.safetensors     the demo backbone (HYWUDemoCheckpointLoader)
    <models>/hywu_encoders/<name>/             a tiny SigLIP2 condition encoder (§3.3)
    <models>/hywu/<name>.safetensors           an NNT generator for that backbone (§3.5)

The generator's B head is drawn at `lora_std` instead of zero so the untrained family already
writes non-zero, input-dependent LoRAs: what tests and benchmarks of the application path
need. Training (hywu_core.train) starts from the zero-initialised head instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hywu_core.encoders import load_condition_encoder
from hywu_core.generator import Generator
from hywu_core.generator_files import save_generator
from hywu_core.nnt import NNTConfig
from hywu_core.targets import derive_targets
from hywu_core.tiny_editor.backbone import assemble_demo_backbone, build_demo_backbone, save_demo_checkpoint
from hywu_core.tiny_editor.encoders import build_tiny_siglip2
from hywu_core.tokenizer import make_layout


@dataclass(frozen=True)
class FamilyFiles:
    backbone: Path
    encoder: Path
    generator: Path


def demo_generator(diffusion_model, cond_dim: int, rank: int = 4, alpha: float = 4.0, width: int = 32,
                   depth: int = 1, heads: int = 2, lora_std: float = 0.0, seed: int = 0):
    """A Generator over every Linear of the demo MMDiT's joint blocks (derive_targets' default)."""
    layout = make_layout(derive_targets(diffusion_model), rank)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = Generator(NNTConfig(cond_dim=cond_dim, width=width, depth=depth, heads=heads), layout, alpha)
        if lora_std:
            with torch.no_grad():
                generator.nnt.head_B.weight.normal_(0.0, lora_std)
    return generator.eval()


def build_family_files(models_dir: str | Path, name: str = "hywu_demo", seed: int = 0,
                       lora_std: float = 0.0) -> FamilyFiles:
    """Write backbone, encoder and generator of one family under `models_dir` (ComfyUI's layout)."""
    models_dir = Path(models_dir)
    files = FamilyFiles(models_dir / "checkpoints" / f"{name}.safetensors",
                        models_dir / "hywu_encoders" / name, models_dir / "hywu" / f"{name}.safetensors")
    for folder in (files.backbone.parent, files.encoder, files.generator.parent):
        folder.mkdir(parents=True, exist_ok=True)
    state_dict, config = build_demo_backbone(seed=seed)
    save_demo_checkpoint(files.backbone, state_dict, config)
    build_tiny_siglip2(files.encoder, seed=seed)
    width = load_condition_encoder(files.encoder).width
    model, _, _ = assemble_demo_backbone(state_dict, config)
    generator = demo_generator(model.model.diffusion_model, width, lora_std=lora_std, seed=seed)
    save_generator(files.generator, generator)
    return files
