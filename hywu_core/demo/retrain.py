"""`./hywu demo-family`: retrain the whole demo family from a fixed seed (docs/design.md, "The tiny editor"; §3.6).

    1. the edit suite's training split (hywu_core.demo.edits: 12 directions in 6 pairs, image-
       dependent and same-source conflicts) written as a training folder;
    2. the backbone: the demo MMDiT editor built from the seed and pretrained by full SFT as a
       denoiser that keeps its input: every image of the split is reproduced from itself, and
       for a share of the clean crops the source is dropped (a mid-grey image: the model must
       draw the crop from noise alone), shifted by a few pixels or pixelated (it must fix the
       detail from the noisy latent, not copy it); on a share of all records the instruction is free text,
       so that it keeps its input whatever the prompt; its loss can carry the high-frequency and
       patch-lattice terms too (pretrain_high_frequency, pretrain_patch_lattice; both 0 in the
       shipped recipe). The base model then keeps its input (up
       to the grain `./hywu experiment family` measures) and knows none of the suite's edits;
    3. the condition encoder: a tiny SigLIP2 pretrained with its own sigmoid image-text loss on
       the training crops in every state, then frozen (§3.3; hywu_core.demo.encoder_pretrain);
    4. the generator: an NNT trained end to end through the frozen backbone by the training entry
       point (hywu_core.train, the same code as `./hywu train`) on the suite's training split, on
       the backbone's loss plus high_frequency times its high-frequency part (train.high_frequency)
       and patch_lattice times the part of its error that repeats with the patch grid
       (train.patch_lattice).

The result is laid out as ComfyUI model folders (what demo_models/ holds):

    checkpoints/hywu_demo.safetensors   hywu_encoders/hywu_demo/   hywu/hywu_demo.safetensors
    family.json                         the recipe and the loss curves it produced

Only the training split is read here; the validation and test splits (hywu_core.demo.images) never are.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import string
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from hywu_core.comfyui.library import import_comfy
from hywu_core.demo.edits import DIRECTIONS, LABELS, load_png, save_png, write_edit_dataset
from hywu_core.demo.encoder_pretrain import CAPTIONS
from hywu_core.demo.run import DEMO_MODELS
from hywu_core.tiny_editor.backbone import (
    DemoBackboneConfig,
    assemble_demo_backbone,
    build_demo_backbone,
    demo_state_dict,
    save_demo_checkpoint,
)
from hywu_core.train.baselines import StaticSchedule, TrainableBackbone, train_static
from hywu_core.train.config import config_from_dict
from hywu_core.train.data import EditDataset, read_manifest
from hywu_core.train.loop import train

NAME = "hywu_demo"


@dataclass(frozen=True)
class FamilyRecipe:
    """Every setting that decides the family's weights."""

    seed: int = 0
    per_direction: int = 64          # training edits per direction (12 directions)
    prediction: str = "source_affine"     # what the backbone's MMDiT outputs (DemoBackboneConfig.prediction)
    pretrain_steps: int = 4000       # backbone denoiser SFT
    pretrain_lr: float = 1e-3
    pretrain_high_frequency: float = 4.0   # the pretraining loss's high-frequency weight (0: the plain loss)
    pretrain_patch_lattice: float = 400.0  # ... and its patch-lattice weight
    source_dropout: float = 0.25     # share of the clean crops' pretraining records with the source dropped
    source_shift: float = 0.0        # ... and with the source shifted by 1 to SHIFT_PIXELS pixels
    source_pixelate: float = 0.25    # ... and with the source pixelated (PIXELATE x PIXELATE blocks)
    free_text: float = 0.25          # share of all pretraining records whose instruction is free text
    encoder_steps: int = 0           # 0: EncoderRecipe's default
    generator_steps: int = 6000
    generator_lr: float = 1e-3
    high_frequency: float = 4.0      # the edit loss's high-frequency weight (train.high_frequency), baselines too
    patch_lattice: float = 400.0     # the edit loss's patch-lattice weight (train.patch_lattice), baselines too
    batch_size: int = 8
    warmup_steps: int = 50
    width: int = 64                  # NNT width, depth, heads; LoRA rank and alpha
    depth: int = 2
    heads: int = 2
    rank: int = 8
    alpha: float = 8.0

    def __post_init__(self):
        self.backbone_config()  # refuses an unknown prediction
        sources = self.source_dropout + self.source_shift + self.source_pixelate
        if not 0 <= sources <= 1 or not 0 <= self.free_text <= 1:
            raise ValueError(f"the shares of the recipe must lie in [0, 1]: source_dropout + source_shift + "
                             f"source_pixelate is {sources:g} (a share of the clean crops), "
                             f"free_text {self.free_text:g}")

    def backbone_config(self) -> DemoBackboneConfig:
        """The demo backbone's config for this family."""
        return DemoBackboneConfig(prediction=self.prediction)

    def quick(self) -> "FamilyRecipe":
        """A few steps of everything: checks the pipeline, not the quality."""
        return FamilyRecipe(**{**asdict(self), "per_direction": 1, "pretrain_steps": 3, "encoder_steps": 3,
                               "generator_steps": 3, "warmup_steps": 1})

    def encoder(self):
        """The condition encoder's EncoderRecipe (hywu_core.demo.encoder_pretrain) for this family."""
        from hywu_core.demo.encoder_pretrain import EncoderRecipe

        default = EncoderRecipe(seed=self.seed)
        return replace(default, steps=self.encoder_steps or default.steps)


SHIFT_PIXELS = 3
PIXELATE = 2
PRETRAIN_MANIFEST = "pretrain.jsonl"
FREE_TEXT_CHARACTERS = string.ascii_letters + string.digits + string.punctuation + " " * 12


def free_text(generator: torch.Generator) -> str:
    """A prompt no edit uses: 1-8 words drawn from the suite's phrasings and the encoder's captions in
    any order, or 1-32 random printable characters (the backbone reads bytes: ByT5's tokenizer)."""
    if float(torch.rand((), generator=generator)) < 0.5:
        words = sorted({w for d in DIRECTIONS.values() for p in d.phrasings for w in p.split()}
                       | {w for captions in CAPTIONS.values() for c in captions for w in c.split()})
        picks = torch.randint(len(words), (int(torch.randint(1, 9, (), generator=generator)),), generator=generator)
        return " ".join(words[i] for i in picks)
    picks = torch.randint(len(FREE_TEXT_CHARACTERS), (int(torch.randint(1, 33, (), generator=generator)),),
                          generator=generator)
    return "".join(FREE_TEXT_CHARACTERS[i] for i in picks).strip() or "x"


def write_pretraining_manifest(folder: Path, recipe: FamilyRecipe) -> Path:
    """The backbone's pretraining records over an edit-suite folder: every image reproduced from
    itself, and each clean crop once more from a dropped source (pre/blank.png, mid-grey: zero
    after the pixel VAE), a shifted one or a pixelated one (pre/*.png), by the recipe's shares and
    seed. A pixelated source shows itself (flat PIXELATE x PIXELATE blocks) where a shift of a few
    pixels does not. The
    instructions are the suite's, and on the free_text share of records any text (free_text): the
    backbone learns to keep its input whatever the prompt, not to follow it. (With the suite's 60
    phrasings alone it was brittle: a 4000-step backbone drew 4x4 patch noise for some prompts it
    never saw, e.g. "make the image brighter" on a held-out crop.)"""
    generator = torch.Generator().manual_seed(recipe.seed)
    (folder / "pre").mkdir(exist_ok=True)
    blank = "pre/blank.png"
    save_png(torch.full((64, 64, 3), 128 / 255), folder / blank)
    lines, clean = [], {}
    for text in (folder / LABELS).read_text().splitlines():
        record = json.loads(text)
        spec = DIRECTIONS[record["task"]]
        for image, state in ((record["source"], spec.source_state), (record["target"], spec.target_state)):
            lines.append(json.dumps({"source": image, "target": image, "instruction": record["instruction"]}))
            if state == "clean":
                clean.setdefault(image, record["instruction"])
    for number, (image, instruction) in enumerate(clean.items()):
        draw = float(torch.rand((), generator=generator))
        if draw < recipe.source_dropout:
            source = blank
        elif draw < recipe.source_dropout + recipe.source_shift:
            dy = dx = 0
            while dy == dx == 0:
                dy, dx = (int(v) for v in torch.randint(-SHIFT_PIXELS, SHIFT_PIXELS + 1, (2,), generator=generator))
            source = f"pre/shift_{number:05d}.png"
            save_png(torch.roll(load_png(folder / image), (dy, dx), (0, 1)), folder / source)
        elif draw < recipe.source_dropout + recipe.source_shift + recipe.source_pixelate:
            source = f"pre/pixelated_{number:05d}.png"
            blocks = torch.nn.functional.avg_pool2d(load_png(folder / image).permute(2, 0, 1), PIXELATE)
            blocky = blocks.repeat_interleave(PIXELATE, 1).repeat_interleave(PIXELATE, 2)
            save_png(blocky.permute(1, 2, 0), folder / source)
        else:
            continue
        lines.append(json.dumps({"source": source, "target": image, "instruction": instruction}))
    texts = torch.Generator().manual_seed(recipe.seed + 1)
    for i, line in enumerate(lines):
        if float(torch.rand((), generator=texts)) < recipe.free_text:
            lines[i] = json.dumps({**json.loads(line), "instruction": free_text(texts)})
    path = folder / PRETRAIN_MANIFEST
    path.write_text("\n".join(lines) + "\n")
    return path


def pretrain_schedule(recipe: FamilyRecipe) -> StaticSchedule:
    """The backbone's pretraining budget and loss: full SFT on the pretraining records, on the
    backbone's own loss plus the recipe's pretraining weights of the high-frequency and patch-lattice
    terms (train/objective.py)."""
    return StaticSchedule(steps=recipe.pretrain_steps, batch_size=recipe.batch_size, lr=recipe.pretrain_lr,
                          warmup_steps=recipe.warmup_steps, seed=recipe.seed,
                          high_frequency=recipe.pretrain_high_frequency, patch_lattice=recipe.pretrain_patch_lattice)


def pretrain_backbone(data: Path, out_file: Path, recipe: FamilyRecipe, log=print) -> list[float]:
    """Build the demo backbone from the seed, pretrain it as a denoiser that keeps its input, save it;
    returns the losses."""
    import_comfy("auto")
    state_dict, config = build_demo_backbone(seed=recipe.seed, config=recipe.backbone_config())
    model, clip, vae = assemble_demo_backbone(state_dict, config)
    backbone = TrainableBackbone(model, clip, vae, "instruct_pix2pix")
    dataset = EditDataset(read_manifest(data, PRETRAIN_MANIFEST))
    schedule = pretrain_schedule(recipe)
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
                  "warmup_steps": recipe.warmup_steps, "min_lr_ratio": 0.1, "grad_clip": 1.0,
                  "high_frequency": recipe.high_frequency, "patch_lattice": recipe.patch_lattice},
        "validation": {"every": 0, "count": 8, "steps": 8, "cfg": 2.0},
    }


def loss_curve(losses: list[float], points: int = 50) -> dict:
    """A loss curve for family.json: the mean of each of `points` equal windows of steps, and its ends."""
    window = max(1, len(losses) // points)
    means = [sum(losses[i:i + window]) / len(losses[i:i + window]) for i in range(0, len(losses), window)]
    return {"first": means[0], "last": means[-1], "window": window, "steps": len(losses),
            "curve": [round(m, 5) for m in means]}


def retrain_family(out: Path, work: Path, recipe: FamilyRecipe = FamilyRecipe(), log=print) -> Path:
    """Run the whole recipe; write the family into `out` (ComfyUI's models layout); returns `out`."""
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "train"
    if data.exists():
        shutil.rmtree(data)
    write_edit_dataset(data, "train", recipe.per_direction, seed=recipe.seed)
    write_pretraining_manifest(data, recipe)
    log(f"[demo-family] training split: {recipe.per_direction} edits x {len(DIRECTIONS)} directions in {data}")

    backbone_file = work / "backbone.safetensors"
    pretrain_losses = pretrain_backbone(data, backbone_file, recipe, log)
    encoder = work / "encoder"
    if encoder.exists():
        shutil.rmtree(encoder)
    from hywu_core.demo.encoder_pretrain import pretrain_condition_encoder

    encoder_losses = pretrain_condition_encoder(encoder, recipe.encoder(), log)
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

    (out / "family.json").write_text(json.dumps({
        "recipe": asdict(recipe), "encoder_recipe": asdict(recipe.encoder()), "command": "./hywu demo-family",
        "backbone_pretrain_loss": loss_curve(pretrain_losses), "encoder_loss": loss_curve(encoder_losses),
        "generator_loss": loss_curve(generator_losses),
        "seconds": round(time.monotonic() - started, 1)}, indent=2) + "\n")
    log(f"[demo-family] done in {time.monotonic() - started:.0f} s: {out}")
    return out


def recipe_with(recipe: FamilyRecipe, settings: list[str]) -> FamilyRecipe:
    """`recipe` with each "field=value" of `settings` replaced (the value parsed as the field's type;
    FamilyRecipe checks the words and the shares)."""
    kinds = {f.name: f.type for f in fields(FamilyRecipe)}
    changes = {}
    for setting in settings:
        name, equals, text = setting.partition("=")
        if not equals or name not in kinds:
            raise ValueError(f"--set {setting!r}: write FIELD=VALUE with FIELD one of {', '.join(kinds)}")
        if kinds[name] in (str, "str"):
            changes[name] = text
            continue
        kind = int if kinds[name] in (int, "int") else float
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise ValueError(f"--set {setting!r}: {name} takes {expected}, got {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"--set {setting!r}: {name} must be a finite number >= 0")
        changes[name] = value
    try:
        return replace(recipe, **changes)
    except ValueError as error:
        raise ValueError(f"--set {' --set '.join(settings)}: {error}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hywu demo-family", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_MODELS, help="where the family goes (default: demo_models/)")
    parser.add_argument("--work", type=Path, default=Path("hywu_output") / "demo_family",
                        help="scratch folder: datasets, the generator's training run")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (a pipeline check)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change one setting of the recipe (FamilyRecipe; repeatable), e.g. "
                             "--set pretrain_steps=8000 or --set prediction=x0; family.json records the recipe used")
    args = parser.parse_args(argv)
    try:
        recipe = recipe_with(FamilyRecipe().quick() if args.quick else FamilyRecipe(), args.set)
    except ValueError as error:
        parser.error(str(error))
    retrain_family(args.out.resolve(), args.work.resolve(), recipe, log=lambda m: print(m, file=sys.stderr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
