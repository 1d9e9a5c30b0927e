"""`./hywu demo-family`: retrain the whole demo family from a fixed seed (docs/design.md, "The tiny editor"; paper §3.6).

    1. the edit suite's training split (hywu_core.demo.edits: 8 directions, 4 conflicting pairs)
       written as a training folder, and a reconstruction manifest over the same images;
    2. the backbone: the demo MMDiT editor built from the seed and pretrained by full SFT to
       reproduce its source whatever the instruction says (target = source), so the frozen base
       model is a competent editor that knows none of the suite's edits;
    3. the condition encoder: a tiny random SigLIP2 from the seed, frozen (§3.3);
    4. the generator: an NNT trained end to end through the frozen backbone by the training entry
       point (hywu_core.train, the same code as `./hywu train`) on the suite's training split.

The result is laid out as ComfyUI model folders (what demo_models/ holds):

    checkpoints/hywu_demo.safetensors   hywu_encoders/hywu_demo/   hywu/hywu_demo.safetensors
    family.json                         the recipe and the loss curves it produced

The held-out split (hywu_core.demo.images.HELDOUT_SOURCES) is never read here.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hywu_core.comfyui.library import import_comfy
from hywu_core.demo.edits import write_edit_dataset
from hywu_core.demo.run import DEMO_MODELS
from hywu_core.tiny_editor.backbone import (
    assemble_demo_backbone,
    build_demo_backbone,
    demo_state_dict,
    save_demo_checkpoint,
)
from hywu_core.tiny_editor.encoders import build_tiny_siglip2
from hywu_core.train.baselines import StaticSchedule, TrainableBackbone, train_static
from hywu_core.train.config import config_from_dict
from hywu_core.train.data import EditDataset, read_manifest
from hywu_core.train.loop import train

NAME = "hywu_demo"


@dataclass(frozen=True)
class FamilyRecipe:
    """Every number that decides the family's weights."""

    seed: int = 0
    per_direction: int = 96          # training edits per direction (8 directions)
    pretrain_steps: int = 1200       # backbone reconstruction SFT
    pretrain_lr: float = 1e-3
    generator_steps: int = 1500
    generator_lr: float = 2e-3
    batch_size: int = 8
    warmup_steps: int = 50
    width: int = 64                  # NNT width, depth, heads; LoRA rank and alpha
    depth: int = 2
    heads: int = 2
    rank: int = 8
    alpha: float = 8.0

    def quick(self) -> "FamilyRecipe":
        """A few steps of everything: checks the pipeline, not the quality."""
        return FamilyRecipe(**{**asdict(self), "per_direction": 2, "pretrain_steps": 3, "generator_steps": 3,
                               "warmup_steps": 1})


def write_reconstruction_manifest(folder: Path, name: str = "reconstruct.jsonl") -> Path:
    """A manifest asking to reproduce every image of an edit-suite folder (source and target alike),
    under the instructions of the suite: the backbone learns to keep its input, not to follow them."""
    lines = []
    for text in (folder / "manifest.jsonl").read_text().splitlines():
        record = json.loads(text)
        for image in (record["source"], record["target"]):
            lines.append(json.dumps({"source": image, "target": image, "instruction": record["instruction"]}))
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def pretrain_backbone(data: Path, out_file: Path, recipe: FamilyRecipe, log=print) -> list[float]:
    """Build the demo backbone from the seed, train it to reconstruct, save it; returns the losses."""
    import_comfy("auto")
    state_dict, config = build_demo_backbone(seed=recipe.seed)
    model, clip, vae = assemble_demo_backbone(state_dict, config)
    backbone = TrainableBackbone(model, clip, vae, "instruct_pix2pix")
    dataset = EditDataset(read_manifest(data, "reconstruct.jsonl"))
    schedule = StaticSchedule(steps=recipe.pretrain_steps, batch_size=recipe.batch_size, lr=recipe.pretrain_lr,
                              warmup_steps=recipe.warmup_steps, seed=recipe.seed)
    started = time.monotonic()

    def progress(step: int, loss: float) -> None:
        if step % 100 == 0 or step == schedule.steps:
            log(f"[demo-family] backbone step {step}/{schedule.steps} loss {loss:.4f} "
                f"({time.monotonic() - started:.0f} s)")

    train_static(backbone, dataset, "sft", schedule, progress=progress)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_demo_checkpoint(out_file, demo_state_dict(model, clip), config)
    return schedule.losses


def generator_config(work: Path, backbone_file: Path, encoder: Path, recipe: FamilyRecipe) -> dict:
    """The `./hywu train` config (as a dict) that trains the family's generator."""
    return {
        "run": {"output": str(work / "generator_run"), "seed": recipe.seed, "device": "auto",
                "checkpoint_every": recipe.generator_steps, "keep_checkpoints": 1},
        "backbone": {"kind": "demo", "checkpoint": str(backbone_file), "edit": "instruct_pix2pix"},
        "encoder": {"folder": str(encoder), "trainable": False},
        "generator": {"width": recipe.width, "depth": recipe.depth, "heads": recipe.heads, "rank": recipe.rank,
                      "alpha": recipe.alpha, "layout": "rank_anchored"},
        "data": {"folder": str(work / "train")},
        "train": {"steps": recipe.generator_steps, "batch_size": recipe.batch_size, "lr": recipe.generator_lr,
                  "warmup_steps": recipe.warmup_steps, "min_lr_ratio": 0.1, "grad_clip": 1.0},
        "validation": {"every": 0, "count": 8, "steps": 8, "cfg": 2.0},
    }


def retrain_family(out: Path, work: Path, recipe: FamilyRecipe = FamilyRecipe(), log=print) -> Path:
    """Run the whole recipe; write the family into `out` (ComfyUI's models layout); returns `out`."""
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "train"
    if data.exists():
        shutil.rmtree(data)
    write_edit_dataset(data, "train", recipe.per_direction, seed=recipe.seed)
    write_reconstruction_manifest(data)
    log(f"[demo-family] training split: {recipe.per_direction} edits x 8 directions in {data}")

    backbone_file = work / "backbone.safetensors"
    pretrain_losses = pretrain_backbone(data, backbone_file, recipe, log)
    encoder = build_tiny_siglip2(work / "encoder", seed=recipe.seed)
    run = work / "generator_run"
    if run.exists():
        shutil.rmtree(run)
    result = train(config_from_dict(generator_config(work, backbone_file, encoder, recipe), base_dir=work))
    generator_losses = [loss for _, loss in result.losses]

    out.mkdir(parents=True, exist_ok=True)
    for folder in ("checkpoints", "hywu", "hywu_encoders"):
        (out / folder).mkdir(exist_ok=True)
    shutil.copyfile(backbone_file, out / "checkpoints" / f"{NAME}.safetensors")
    shutil.copyfile(result.generator_file, out / "hywu" / f"{NAME}.safetensors")
    if (out / "hywu_encoders" / NAME).exists():
        shutil.rmtree(out / "hywu_encoders" / NAME)
    shutil.copytree(encoder, out / "hywu_encoders" / NAME)

    def curve(losses: list[float]) -> dict:
        window = max(1, len(losses) // 10)
        return {"first": sum(losses[:window]) / window, "last": sum(losses[-window:]) / window,
                "window": window, "steps": len(losses)}

    (out / "family.json").write_text(json.dumps({
        "recipe": asdict(recipe), "command": "./hywu demo-family",
        "backbone_pretrain_loss": curve(pretrain_losses), "generator_loss": curve(generator_losses),
        "seconds": round(time.monotonic() - started, 1)}, indent=2) + "\n")
    log(f"[demo-family] done in {time.monotonic() - started:.0f} s: {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hywu demo-family", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_MODELS, help="where the family goes (default: demo_models/)")
    parser.add_argument("--work", type=Path, default=Path("hywu_output") / "demo_family",
                        help="scratch folder: datasets, the generator's training run")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (a pipeline check)")
    args = parser.parse_args(argv)
    recipe = FamilyRecipe().quick() if args.quick else FamilyRecipe()
    retrain_family(args.out.resolve(), args.work.resolve(), recipe, log=lambda m: print(m, file=sys.stderr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
