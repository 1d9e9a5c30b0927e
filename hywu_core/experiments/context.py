"""What every experiment shares (paper §5): the demo family, the evaluation split, the budget, trained
baselines, per-edit metrics and their summaries.

Splits (hywu_core.demo.images): every model trains on "train"; evaluation uses make_edits(split,
per_direction, SPLIT_SEEDS[split]) of "val" (for choices) or "test" (the reported figures).

Equal training budget: within one comparison every trained method (Single / Shared LoRA, SFT, PG)
gets the same optimizer steps at the same batch size on the training split's edits of its
directions (make_edits("train", per direction: Budget.train_per_direction or the recipe's, the
recipe's seed, tasks)). Trained baselines are
cached under <out>/cache/<family fingerprint>/ (the backbone and generator files and the recipe, whose
loss the baselines train on), keyed by method, directions, steps and data size.

Evaluation samples every edit through ComfyUI's KSampler path (train.validation.sample_edits) with
the demo workflow's sampler settings and scores each output (edit_metrics, one value per edit):

    psnr, ssim       to the target
    progress         per edit: the signed change of the direction's score from source to output over
                     that from source to target, clipped to [-1, 1]: 1 = as far as the target (or past it),
                     0 = no change, -1 = as far the wrong way. (Per edit rather than a ratio of means, so
                     every statistic resamples edits; clipped because scores such as the Laplacian
                     variance explode on a noisy output, and one such edit would outweigh a direction.)
    right_way        1 when that signed change is > 0
    win_vs_base      1 when PSNR to the target beats the base backbone's on the same edit, 0.5 on a tie
    grain            noise_sigma(output) - noise_sigma(target)
    patch_artefact   patch_artefact(output) - patch_artefact(target) (steps on the 4x4 patch grid)
    patch_lattice    patch_lattice(output, target) (the error that repeats in every 4x4 patch; 0 at the target)

Directions' scores differ in scale, so nothing is pooled across directions: summaries are
per-direction means and their macro average, each with a stratified bootstrap 95% interval (stats).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from hywu_core.comfyui.library import import_comfy
from hywu_core.condition import encode_condition
from hywu_core.demo.edits import (
    DIRECTIONS,
    PAIRS,
    EditSet,
    direction,
    make_edits,
    noise_sigma,
    patch_artefact,
    patch_lattice,
    psnr,
    score,
    ssim,
    write_edit_dataset,
)
from hywu_core.demo.retrain import NAME, FamilyRecipe, generator_config
from hywu_core.demo.run import check_models
from hywu_core.encoders import load_condition_encoder
from hywu_core.experiments import stats
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

SPLITS = ("val", "test")
SPLIT_SEEDS = {"val": 1, "test": 2}
METRICS = ("psnr", "ssim", "progress", "right_way", "win_vs_base", "grain", "patch_artefact", "patch_lattice")
LABELS = {"psnr": "PSNR dB", "ssim": "SSIM", "progress": "progress", "right_way": "right way",
          "win_vs_base": "win vs base", "grain": "grain", "patch_artefact": "patch artefact",
          "patch_lattice": "patch lattice"}
FORMATS = {"psnr": "+.2f", "ssim": "+.3f", "progress": "+.2f", "right_way": ".2f", "win_vs_base": ".2f",
           "grain": "+.4f", "patch_artefact": "+.3f", "patch_lattice": ".4f"}


@dataclass(frozen=True)
class Budget:
    """Sizes of every experiment. FULL is what the reports quote, QUICK checks the pipeline (about
    1 min for `all` on 2 cores busy with other jobs).

    FULL time estimate, `all`, --threads 1. Unit costs measured as CPU seconds of one thread on this
    2-core machine while it ran four other jobs (so pessimistic): a static LoRA or SFT step at batch
    8 0.25-0.27 s, a PG step 0.93 s (+15 s per training run), a 20-step sample 0.33 s per edit
    (1.06 s with the rank-768 update-space Average PG; the 4 steps sampled now cost about a fifth),
    a per-sample gradient 0.05 s. With G the family generator's steps (routing_steps None: 6000 in
    the shipped recipe):
      conflict   6 pairs x (3 LoRAs + SFT + PG) x 100 steps + 6 x 6 methods x 16 samples  ~ 1480 s
      gradients  the Shared LoRA on all directions, G steps (routing reuses it), 2 x 144 gradients
                                                                          ~ 1600 s (G 6000)
      routing    SFT G steps, 7 variants x 96 samples                     ~ 1840 s (G 6000)
      geometry   96 generated LoRAs and their cosines                    ~ 10 s
    total ~ 82 min (G 6000) at those unit costs with 20-step samples. Measured for the shipped
    family: the trained baselines alone (conflict's, the Shared LoRA and the SFT at G 6000) took about
    50 min in three 1-thread processes on the 2 cores (a test run beside them for 30 of those); the
    Shared LoRA and the SFT are cached under <out>/cache, so a second run only samples and measures
    (156 s at 4 steps, 2 threads).
    """

    per_direction: int = 8             # evaluation edits per direction (split val or test), every figure
    conflict_pairs: tuple = tuple(PAIRS)
    conflict_steps: int = 100          # per method and pair in the conflict study (batch: the recipe's)
    routing_steps: int | None = None   # Shared LoRA and SFT on all directions; None: the family's PG steps
    gradient_per_direction: int = 12
    # The demo workflows' KSampler: 4 steps, cfg 1, euler / simple. Steps chosen on val
    # (`./hywu experiment family --split val` at 2-20 steps): fewer steps left less grain and raised
    # PSNR and SSIM at about the same progress; 4 had the least grain (HY-WU +0.0038 against the
    # source, base +0.0020; at 20 steps +0.0060 and +0.0033).
    sample_steps: int = 4
    cfg: float = 1.0
    resamples: int = stats.RESAMPLES
    train_per_direction: int | None = None   # training edits per direction; None: the family's (recipe)


FULL = Budget()
QUICK = Budget(per_direction=2, conflict_pairs=("light",), conflict_steps=2, routing_steps=2,
               gradient_per_direction=2, sample_steps=2, resamples=200, train_per_direction=2)


def edit_metrics(edits: EditSet, outputs: Tensor, base_psnr: Tensor | None = None) -> dict[str, Tensor]:
    """Per-edit metrics (METRICS; win_vs_base only with the base's PSNR on the same edits)."""
    gain, target_gain = [], []
    for i, task in enumerate(edits.tasks):
        sign = direction(task).sign
        src = score(task, edits.source[i:i + 1])
        gain.append(sign * (score(task, outputs[i:i + 1]) - src))
        target_gain.append(sign * (score(task, edits.target[i:i + 1]) - src))
    gain, target_gain = torch.cat(gain).double(), torch.cat(target_gain).double()
    value = psnr(outputs, edits.target).double()
    metrics = {"psnr": value, "ssim": ssim(outputs, edits.target).double(),
               "progress": (gain / target_gain).clamp(-1, 1), "right_way": (gain > 0).double(),
               "grain": (noise_sigma(outputs) - noise_sigma(edits.target)).double(),
               "patch_artefact": (patch_artefact(outputs) - patch_artefact(edits.target)).double(),
               "patch_lattice": patch_lattice(outputs, edits.target).double()}
    if base_psnr is not None:
        metrics["win_vs_base"] = (value > base_psnr).double() + 0.5 * (value == base_psnr).double()
    return metrics


def summarize(edits: EditSet, metrics: dict[str, Tensor], resamples: int = stats.RESAMPLES) -> dict:
    """Per-direction means and their macro average of every metric, each {estimate, low, high, n}."""
    tasks = [t for t in DIRECTIONS if t in edits.tasks]
    out = {"n": len(edits), "macro": {}, "per_direction": {t: {} for t in tasks}}
    for name, values in metrics.items():
        out["macro"][name] = stats.macro_interval(values, edits.tasks, resamples=resamples).as_dict()
        for t in tasks:
            index = [i for i, x in enumerate(edits.tasks) if x == t]
            out["per_direction"][t][name] = stats.mean_interval(values[index], resamples=resamples).as_dict()
    return out


def cell(entry: dict, metric: str) -> str:
    """A summary entry as "estimate [low, high]" in the metric's format."""
    return stats.Interval(**entry).text(FORMATS.get(metric, "+.3f"))


def macro_table(summaries: dict[str, dict], metrics=METRICS) -> list[str]:
    """Markdown rows: one per method, the macro average of per-direction means of each metric."""
    lines = ["| method | " + " | ".join(LABELS[m] for m in metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, summary in summaries.items():
        cells = [cell(summary["macro"][m], m) if m in summary["macro"] else "-" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def direction_table(summaries: dict[str, dict], metric: str) -> list[str]:
    """Markdown rows: one per direction, a column per method: the per-direction mean of `metric`."""
    tasks = list(next(iter(summaries.values()))["per_direction"])
    lines = ["| direction (n) | " + " | ".join(summaries) + " |", "|---|" + "---|" * len(summaries)]
    for t in tasks:
        n = next(iter(summaries.values()))["per_direction"][t][metric]["n"]
        lines.append(f"| {t} ({n}) | " + " | ".join(cell(s["per_direction"][t][metric], metric)
                                                    for s in summaries.values()) + " |")
    return lines


def _tasks_name(tasks) -> str:
    return "all" if tuple(tasks) == tuple(DIRECTIONS) else "-".join(tasks)


def family_fingerprint(files, recipe: FamilyRecipe) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(Path(file).read_bytes())
    digest.update(json.dumps(asdict(recipe), sort_keys=True).encode())
    return digest.hexdigest()[:12]


class ExperimentContext:
    """The loaded family, the evaluation edits of one split, the budget, and where outputs and the cache go."""

    def __init__(self, models: Path, out: Path, budget: Budget, split: str = "test", log=print):
        if split not in SPLITS:
            raise ValueError(f"unknown evaluation split {split!r}: use one of {', '.join(SPLITS)}")
        check_models(models)
        import_comfy("auto")
        self.models, self.out, self.budget, self.split, self.log = models, out, budget, split, log
        self.backbone_file = models / "checkpoints" / f"{NAME}.safetensors"
        self.encoder_folder = models / "hywu_encoders" / NAME
        self.generator_file = models / "hywu" / f"{NAME}.safetensors"
        family = models / "family.json"
        known = {f.name for f in dataclasses.fields(FamilyRecipe)}
        recipe = json.loads(family.read_text()).get("recipe", {}) if family.is_file() else {}
        self.recipe = FamilyRecipe(**{k: v for k, v in recipe.items() if k in known})
        self.cache = out / "cache" / family_fingerprint([self.backbone_file, self.generator_file], self.recipe)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.backbone = self.load_backbone()
        self.encoder = load_condition_encoder(self.encoder_folder, device=self.backbone.device)
        self.generator = load_generator(self.generator_file, device=self.backbone.device).eval()
        self.edits = make_edits(split, budget.per_direction, seed=SPLIT_SEEDS[split])

    @property
    def routing_steps(self) -> int:
        return self.budget.routing_steps or self.recipe.generator_steps

    def heading(self, per_direction: int | None = None) -> str:
        """The line every report section opens with: split, seed, edits per direction, intervals."""
        count = per_direction or self.budget.per_direction
        return (f"Split `{self.split}` (make_edits seed {SPLIT_SEEDS[self.split]}), {count} edits per direction; "
                f"intervals: stratified bootstrap 95%, {self.budget.resamples} resamples.")

    # ---- models ---------------------------------------------------------------------------------

    def load_backbone(self, trainable: bool = False, file: Path | None = None):
        model, clip, vae = assemble_demo_backbone(*read_demo_checkpoint(file or self.backbone_file))
        return (TrainableBackbone if trainable else Backbone)(model, clip, vae, "instruct_pix2pix").load()

    def training_split(self, tasks) -> Path:
        """The training split's edits of `tasks` as a training folder (the recipe's seed; per direction:
        Budget.train_per_direction or the recipe's)."""
        count = self.budget.train_per_direction or self.recipe.per_direction
        folder = self.cache / f"train_{_tasks_name(tasks)}_x{count}"
        if not (folder / "manifest.jsonl").is_file():
            if folder.exists():
                shutil.rmtree(folder)
            write_edit_dataset(folder, "train", count, seed=self.recipe.seed, tasks=tasks)
        return folder

    def _key(self, method: str, tasks, steps: int) -> str:
        count = self.budget.train_per_direction or self.recipe.per_direction
        return f"{method}_{_tasks_name(tasks)}_{steps}_x{count}"

    def _schedule(self, steps: int, lr: float):
        r = self.recipe
        return StaticSchedule(steps=steps, batch_size=r.batch_size, lr=lr, warmup_steps=min(r.warmup_steps, steps // 4),
                              seed=r.seed, high_frequency=r.high_frequency, patch_lattice=r.patch_lattice)

    def static_lora(self, tasks, steps: int):
        """A static LoRA (Single LoRA for one direction, Shared LoRA for several), trained or cached."""
        from safetensors.torch import load_file, save_file

        spec, r = self.generator.spec, self.recipe
        file = self.cache / f"{self._key('lora', tasks, steps)}.safetensors"
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
        file = self.cache / f"{self._key('sft', tasks, steps)}.safetensors"
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
        file = self.cache / f"{self._key('pg', tasks, steps)}.safetensors"
        if not file.is_file():
            self.log(f"[experiment] training a generator (PG) on {', '.join(tasks)} for {steps} steps")
            recipe = dataclasses.replace(self.recipe, generator_steps=steps,
                                         warmup_steps=min(self.recipe.warmup_steps, steps // 4))
            work = self.cache / f"{self._key('pg', tasks, steps)}_run"
            if work.exists():
                shutil.rmtree(work)
            config = generator_config(work, self.backbone_file, self.encoder_folder, recipe)
            config["data"]["folder"] = str(self.training_split(tasks))
            config["validation"]["count"] = 2
            result = train(config_from_dict(config, base_dir=work))
            result.generator_file.replace(file)
            shutil.rmtree(work, ignore_errors=True)
        return load_generator(file, device=self.backbone.device).eval()

    # ---- evaluation -----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, edits: EditSet, generator=None):
        """The LoRAs a generator (default: the family's) writes for the edits, one per edit."""
        return (generator or self.generator)(encode_condition(self.encoder, edits.source, edits.instructions)).to(
            torch.float32)

    def sample(self, edits: EditSet, bundle=None, backbone=None) -> Tensor:
        """Every edit sampled with row i of `bundle` (None: no LoRA) on `backbone` (default: the family's)."""
        return self.sample_prompts(edits.source, edits.instructions, bundle, backbone)

    def sample_prompts(self, source: Tensor, instructions: list[str], bundle=None, backbone=None) -> Tensor:
        """Source i under instruction i, sampled with the budget's sampler settings (see sample)."""
        b = self.budget
        return sample_edits(backbone or self.backbone, source, instructions, [], bundle, seed=0,
                            steps=b.sample_steps, cfg=b.cfg)

    def measure(self, edits: EditSet, outputs: dict[str, Tensor], base: str) -> tuple[dict, dict]:
        """Per-edit metrics of every method's outputs (win vs the `base` method) and their summaries."""
        base_psnr = psnr(outputs[base], edits.target).double()
        metrics = {name: edit_metrics(edits, out, None if name == base else base_psnr)
                   for name, out in outputs.items()}
        return metrics, {name: summarize(edits, m, self.budget.resamples) for name, m in metrics.items()}

    def write_json(self, name: str, data: dict) -> Path:
        path = self.out / f"{name}.json"
        path.write_text(json.dumps({**data, "split": self.split, "split_seed": SPLIT_SEEDS[self.split],
                                    "budget": asdict(self.budget)}, indent=2, default=float) + "\n")
        return path
