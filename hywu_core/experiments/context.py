"""What every experiment shares: the demo family, the held-out edits, trained baselines, evaluation.

Budgets (Budget): FULL is what the reports quote; QUICK runs every code path in seconds (tests).
Equal training budget: within one comparison every trained method (Single / Shared LoRA, SFT, PG)
gets the same optimizer steps at the same batch size on the same training split
(the family's: hywu_core.demo.edits, split "train"). Trained baselines are cached under
<out>/cache, keyed by method, directions and steps, so experiments that share one reuse it.

Evaluation samples every held-out edit through ComfyUI's KSampler path (train.validation's
sample_edits: InstructPixToPixConditioning, comfy.sample, VAE decode) with the demo workflow's
sampler settings, then scores it (hywu_core.demo.edits): PSNR and SSIM to the target, the
directional score of the edit's pair, and its signed gain from source to output.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from hywu_core.comfyui.library import import_comfy
from hywu_core.condition import encode_condition
from hywu_core.demo.edits import DIRECTIONS, EditSet, direction, make_edits, psnr, score, ssim, write_edit_dataset
from hywu_core.demo.retrain import NAME, FamilyRecipe, generator_config
from hywu_core.demo.run import check_models
from hywu_core.encoders import load_condition_encoder
from hywu_core.generator_files import load_generator
from hywu_core.tiny_editor.backbone import (
    assemble_demo_backbone,
    demo_state_dict,
    read_demo_checkpoint,
    save_demo_checkpoint,
)
from hywu_core.train.backbone import Backbone
from hywu_core.train.baselines import StaticLoRA, StaticSchedule, TrainableBackbone, train_static
from hywu_core.train.config import config_from_dict
from hywu_core.train.data import EditDataset, read_manifest
from hywu_core.train.loop import train
from hywu_core.train.validation import sample_edits

HELDOUT_SEED = 1


@dataclass(frozen=True)
class Budget:
    heldout_per_direction: int = 12    # held-out edits per direction for every reported figure
    conflict_steps: int = 300          # per method and pair in the conflict study
    conflict_pairs: tuple = ("blur_deblur", "noise_denoise")
    routing_steps: int = 1500          # Shared LoRA and SFT on all 8 directions = the family's PG budget
    gradient_per_direction: int = 16
    sample_steps: int = 20             # the demo workflow's KSampler: 20 steps, cfg 1, euler / simple
    cfg: float = 1.0


FULL = Budget()
QUICK = Budget(heldout_per_direction=2, conflict_steps=4, conflict_pairs=("brighten_darken",), routing_steps=4,
               gradient_per_direction=2, sample_steps=3)


@dataclass
class Scores:
    """Per-edit metrics of one method on an EditSet."""

    psnr: Tensor
    ssim: Tensor
    score_source: Tensor
    score_output: Tensor
    score_target: Tensor
    gain: Tensor            # sign * (score(output) - score(source)): > 0 moved the right way
    target_gain: Tensor     # sign * (score(target) - score(source)): how far the target moves

    def summary(self, mask: Tensor | None = None) -> dict:
        index = slice(None) if mask is None else mask
        return {"psnr": float(self.psnr[index].mean()), "ssim": float(self.ssim[index].mean()),
                "score_source": float(self.score_source[index].mean()),
                "score_output": float(self.score_output[index].mean()),
                "score_target": float(self.score_target[index].mean()),
                "gain": float(self.gain[index].mean()),
                "progress": float(self.gain[index].mean() / self.target_gain[index].mean()),
                "right_direction": float((self.gain[index] > 0).float().mean()), "n": int(self.psnr[index].numel())}


def score_outputs(edits: EditSet, outputs: Tensor) -> Scores:
    columns = {k: [] for k in ("src", "out", "tgt", "gain", "target_gain")}
    for i, task in enumerate(edits.tasks):
        src, out, tgt = edits.source[i:i + 1], outputs[i:i + 1], edits.target[i:i + 1]
        columns["src"].append(score(task, src))
        columns["out"].append(score(task, out))
        columns["tgt"].append(score(task, tgt))
        columns["gain"].append(direction(task).sign * (columns["out"][-1] - columns["src"][-1]))
        columns["target_gain"].append(direction(task).sign * (columns["tgt"][-1] - columns["src"][-1]))
    cat = {k: torch.cat(v) for k, v in columns.items()}
    return Scores(psnr(outputs, edits.target), ssim(outputs, edits.target), cat["src"], cat["out"], cat["tgt"],
                  cat["gain"], cat["target_gain"])


def per_direction(edits: EditSet, scores: Scores, tasks=None) -> dict:
    tasks = tasks or [t for t in DIRECTIONS if t in edits.tasks]
    labels = edits.tasks
    return {t: scores.summary(torch.tensor([x == t for x in labels])) for t in tasks}


class ExperimentContext:
    """The loaded family, the held-out set, the budget, and where outputs and the cache go."""

    def __init__(self, models: Path, out: Path, budget: Budget, log=print):
        check_models(models)
        import_comfy("auto")
        self.models, self.out, self.budget, self.log = models, out, budget, log
        self.cache = out / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.backbone_file = models / "checkpoints" / f"{NAME}.safetensors"
        self.encoder_folder = models / "hywu_encoders" / NAME
        self.generator_file = models / "hywu" / f"{NAME}.safetensors"
        family = models / "family.json"
        self.recipe = FamilyRecipe(**json.loads(family.read_text())["recipe"]) if family.is_file() else FamilyRecipe()
        self.backbone = self.load_backbone()
        self.encoder = load_condition_encoder(self.encoder_folder, device=self.backbone.device)
        self.generator = load_generator(self.generator_file, device=self.backbone.device).eval()
        self.heldout = make_edits("heldout", budget.heldout_per_direction, seed=HELDOUT_SEED)
        self.started = time.monotonic()

    # ---- models ---------------------------------------------------------------------------------

    def load_backbone(self, trainable: bool = False, file: Path | None = None):
        model, clip, vae = assemble_demo_backbone(*read_demo_checkpoint(file or self.backbone_file))
        return (TrainableBackbone if trainable else Backbone)(model, clip, vae, "instruct_pix2pix").load()

    def training_split(self, tasks) -> Path:
        """The family's training edits restricted to `tasks` (same crops, noise and phrasings per seed)."""
        folder = self.cache / f"train_{'-'.join(tasks)}"
        if not (folder / "manifest.jsonl").is_file():
            if folder.exists():
                import shutil

                shutil.rmtree(folder)
            write_edit_dataset(folder, "train", self.recipe.per_direction, seed=self.recipe.seed, tasks=tasks)
        return folder

    def _schedule(self, steps: int, lr: float):
        r = self.recipe
        return StaticSchedule(steps=steps, batch_size=r.batch_size, lr=lr, warmup_steps=min(r.warmup_steps, steps // 4),
                              seed=r.seed)

    def static_lora(self, tasks, steps: int):
        """A static LoRA (Single LoRA for one direction, Shared LoRA for several), trained or cached."""
        from safetensors.torch import load_file, save_file

        spec, r = self.generator.spec, self.recipe
        file = self.cache / f"lora_{'-'.join(tasks)}_{steps}.safetensors"
        lora = StaticLoRA(spec, r.rank, r.alpha, seed=r.seed)
        if file.is_file():
            lora.load_state_dict(load_file(str(file)))
            return lora.to(self.backbone.device)
        self.log(f"[experiment] training a static LoRA on {', '.join(tasks)} for {steps} steps")
        dataset = EditDataset(read_manifest(self.training_split(tasks)))
        lora = train_static(self.backbone, dataset, "lora", self._schedule(steps, r.generator_lr), spec=spec,
                            rank=r.rank, alpha=r.alpha)
        save_file({k: v.detach().cpu().contiguous() for k, v in lora.state_dict().items()}, str(file))
        return lora

    def sft_backbone(self, tasks, steps: int):
        """The backbone after full SFT on `tasks` (trained or cached), as a frozen Backbone."""
        file = self.cache / f"sft_{'-'.join(tasks)}_{steps}.safetensors"
        if not file.is_file():
            self.log(f"[experiment] SFT of the backbone on {', '.join(tasks)} for {steps} steps")
            backbone = self.load_backbone(trainable=True)
            dataset = EditDataset(read_manifest(self.training_split(tasks)))
            train_static(backbone, dataset, "sft", self._schedule(steps, self.recipe.pretrain_lr))
            _, config = read_demo_checkpoint(self.backbone_file)
            save_demo_checkpoint(file, demo_state_dict(backbone.model, backbone.clip), config)
        return self.load_backbone(file=file)

    def pg_generator(self, tasks, steps: int):
        """A generator trained by the training entry point on `tasks` (trained or cached)."""
        file = self.cache / f"pg_{'-'.join(tasks)}_{steps}.safetensors"
        if not file.is_file():
            self.log(f"[experiment] training a generator (PG) on {', '.join(tasks)} for {steps} steps")
            recipe = FamilyRecipe(**{**asdict(self.recipe), "generator_steps": steps,
                                     "warmup_steps": min(self.recipe.warmup_steps, steps // 4)})
            work = self.cache / f"pg_{'-'.join(tasks)}_{steps}_run"
            config = generator_config(work, self.backbone_file, self.encoder_folder, recipe)
            config["data"]["folder"] = str(self.training_split(tasks))
            config["validation"]["count"] = 2
            result = train(config_from_dict(config, base_dir=work))
            result.generator_file.replace(file)
        return load_generator(file, device=self.backbone.device).eval()

    # ---- evaluation -----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, edits: EditSet, generator=None):
        """The LoRAs a generator (default: the family's) writes for the edits, one per edit."""
        return (generator or self.generator)(encode_condition(self.encoder, edits.source, edits.instructions)).to(
            torch.float32)

    def sample(self, edits: EditSet, bundle=None, backbone=None) -> Tensor:
        """Every edit sampled with row i of `bundle` (None: no LoRA) on `backbone` (default: the family's)."""
        b = self.budget
        return sample_edits(backbone or self.backbone, edits.source, edits.instructions, [], bundle, seed=0,
                            steps=b.sample_steps, cfg=b.cfg)

    def evaluate(self, edits: EditSet, bundle=None, backbone=None) -> tuple[Scores, Tensor]:
        outputs = self.sample(edits, bundle, backbone)
        return score_outputs(edits, outputs), outputs

    def write_json(self, name: str, data: dict) -> Path:
        path = self.out / f"{name}.json"
        path.write_text(json.dumps({**data, "budget": asdict(self.budget)}, indent=2, default=float) + "\n")
        return path
