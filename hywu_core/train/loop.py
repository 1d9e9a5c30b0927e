"""On-the-fly end-to-end training of the generator through a frozen backbone (paper §3.6, Eq. 7):

    U <- Enc(I, p);   dtheta(x) <- g_phi(U);   I_hat <- f_{theta + dtheta(x)}(I, p);   phi <- phi - eta grad_phi L_edit

Per optimizer step: the global batch (train.batch_size samples, in the data order of
(seed, epoch)) is split into train.grad_accum micro-steps and, under torchrun, over the ranks.
Each sample gets its own generated LoRA (the dynamic path), its own noise and noise level keyed
by its global index, and the backbone's own denoising loss (objective.py). AdamW with linear
warmup + cosine decay, gradient clipping, bf16 autocast on CUDA, optional gradient checkpointing
of the NNT blocks and/or the backbone's blocks (§3.7).

Outputs under run.output:
    loss.csv                         step, loss, lr, grad_norm, samples_per_s, elapsed_s, peak_mem_mb
    checkpoints/step_<N>.safetensors generator checkpoints (our format; HYWULoadGenerator loads them)
    checkpoints/step_<N>.state.safetensors  optimizer / scheduler / data order / RNG for --resume
    generator.safetensors            the newest checkpoint's generator
    samples/step_<N>.png             validation grids: source | target | base | with generated LoRA
    config.json                      the resolved config
A resumed run continues bit for bit: same weights as a run that was never interrupted (on the same
hardware with the same thread count; CUDA kernels that are not deterministic can break bitwise equality).
"""
from __future__ import annotations

import csv
import math
import os
import resource
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from hywu_core.comfyui.library import import_comfy
from hywu_core.condition import encode_condition
from hywu_core.encoders import load_condition_encoder
from hywu_core.generator import Generator
from hywu_core.generator_files import build_loaded, load_generator, read_safetensors, save_generator
from hywu_core.nnt import NNTConfig
from hywu_core.targets import derive_targets
from hywu_core.tiny_editor.encoders import build_tiny_siglip2
from hywu_core.tokenizer import make_layout
from hywu_core.train.backbone import checkpointed, load_backbone
from hywu_core.train.config import ConfigError, OptimConfig, TrainConfig
from hywu_core.train.data import DataOrder, EditDataset, read_manifest
from hywu_core.train.distributed import (
    DistributedContext,
    full_model_state,
    full_optimizer_state,
    init_distributed,
    load_full_model_state,
    load_full_optimizer_state,
    set_gradient_sync,
    shard_generator,
)
from hywu_core.train.objective import DenoisingObjective, backward_into_generator, leaf_bundle
from hywu_core.train.state import (
    checkpoint_paths,
    completed_checkpoints,
    load_train_state,
    save_train_state,
    set_rng_state,
)
from hywu_core.train.synthetic import write_procedural_dataset
from hywu_core.train.validation import sample_edits, save_grid

LOG_COLUMNS = ("step", "loss", "lr", "grad_norm", "samples_per_s", "elapsed_s", "peak_mem_mb")
RESUME_MUST_MATCH = ("backbone", "encoder", "generator")
# train keys that define the loss itself (lr, steps and the rest may change on resume); a checkpoint
# saved before a key existed was trained with its OptimConfig default
RESUME_MUST_MATCH_TRAIN = ("high_frequency", "patch_lattice")


class WarmupCosine:
    """LR multiplier: linear warmup over `warmup` steps, then cosine from 1 to `min_ratio` at `total`."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    output: Path
    generator_file: Path
    losses: list[tuple[int, float]]
    steps_per_second: float
    is_main: bool = True


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by tensors; elsewhere: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Trainer:
    """Everything one training run holds; `run()` trains to train.steps."""

    def __init__(self, config: TrainConfig, context: DistributedContext | None = None):
        self.config = config
        self.context = context or DistributedContext()
        self.output = config.output
        self.checkpoints = self.output / "checkpoints"
        self.micro = config.per_rank_micro_batch(self.context.world_size)
        self._prepare_data()

    # ---- setup -------------------------------------------------------------------------------------

    def _main_first(self, action) -> None:
        """Run `action` on rank 0, then let the other ranks go on."""
        if self.context.is_main:
            action()
        self.context.barrier()

    def _prepare_data(self) -> None:
        """Write a procedural dataset if configured and absent; check every manifest record (before any model)."""
        d = self.config.data
        folder = self.config.path(d.folder)
        if d.procedural and not (folder / d.manifest).is_file():
            options = dict(d.procedural)
            unknown = sorted(set(options) - {"kind", "count", "size"})
            if unknown:
                raise ConfigError(f"data.procedural has unknown key(s) {unknown}; its keys are kind, count, size")
            self._main_first(lambda: write_procedural_dataset(folder, manifest=d.manifest,
                                                              seed=self.config.run.seed, **options))
        resolution = tuple(d.resolution) if d.resolution else None
        self.dataset = EditDataset(read_manifest(folder, d.manifest), resolution)
        validation = read_manifest(folder, d.validation_manifest) if d.validation_manifest else \
            self.dataset.records[:self.config.validation.count]
        self.validation_set = EditDataset(validation[:self.config.validation.count], resolution)

    def build(self, resume=None) -> "Trainer":
        """Load encoder, backbone and generator, shard, make optimizer and scheduler; resume if asked."""
        config, run = self.config, self.config.run
        self._main_first(lambda: self.output.mkdir(parents=True, exist_ok=True))
        self.state = load_train_state(self._resume_path(resume)) if resume else None
        if self.state is not None:
            self._check_resume_config(self.state["config"])
        import_comfy(run.device)
        import comfy.model_management

        self.device = comfy.model_management.get_torch_device()
        if run.device == "cpu" and self.device.type != "cpu":
            raise ConfigError(f"run.device = 'cpu', but ComfyUI was already set up on {self.device} in this process; "
                              "start a fresh process (ComfyUI picks its device once)")
        precision = config.train.precision
        self.autocast = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")

        if not config.encoder.backbone:
            self.encoder = self._load_encoder()
        self.backbone = load_backbone(config, self.output if self.context.is_main else None)
        if config.encoder.backbone:
            self.encoder = self.backbone.condition_encoder()
        self.generator = self._build_generator().to(self.device)
        self.spec = self.generator.spec
        self.spec.verify(self.backbone.diffusion_model)
        checkpointing = config.train.checkpointing
        self.objective = DenoisingObjective(self.backbone, checkpointing in ("backbone", "both"), self.spec,
                                            config.train.high_frequency, config.train.patch_lattice)
        self.generator_checkpointing = checkpointing in ("generator", "both")

        shard_generator(self.generator, self.context, self.device)
        trainees = {"generator": self.generator}
        if config.encoder.trainable:
            trainees["encoder"] = self.encoder.model
        self.trainee = nn.ModuleDict(trainees)
        t = config.train
        groups = [{"params": list(self.generator.parameters()), "lr": t.lr}]
        if config.encoder.trainable:
            groups.append({"params": list(self.encoder.model.parameters()), "lr": t.lr * config.encoder.lr_scale})
        self.optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), eps=t.eps,
                                           weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(t.warmup_steps, t.steps, t.min_lr_ratio))
        self.order = DataOrder(len(self.dataset), run.seed)
        self.step = 0
        if self.state is not None:
            self._restore(self.state)
        self._base_samples = None
        return self

    def _load_encoder(self):
        """The transformers condition encoder: the configured folder, the trained one being resumed, or a tiny
        one built into the run folder."""
        config = self.config
        encoder_folder = self.state["encoder"] if self.state and self.state["encoder"] else None
        if encoder_folder is None and config.encoder.tiny:
            encoder_folder = self.output / "encoder"
            if not (encoder_folder / "config.json").is_file():
                self._main_first(lambda: build_tiny_siglip2(encoder_folder, seed=config.run.seed))
        encoder = load_condition_encoder(encoder_folder or config.path(config.encoder.folder), device=self.device)
        encoder.model.requires_grad_(config.encoder.trainable)
        return encoder

    def _resume_path(self, resume) -> Path:
        if resume is True:
            found = completed_checkpoints(self.checkpoints)
            if not found:
                raise ConfigError(f"--resume: no complete checkpoint in {self.checkpoints}; "
                                  "start the run without --resume")
            return found[-1][1]
        return Path(resume)

    def _check_resume_config(self, saved_json: str) -> None:
        import json

        saved, now = json.loads(saved_json), json.loads(self.config.to_json())
        differ = [f"[{s}]" for s in RESUME_MUST_MATCH if saved.get(s) != now.get(s)]
        defaults = {f.name: f.default for f in fields(OptimConfig)}
        then = {k: saved.get("train", {}).get(k, defaults[k]) for k in RESUME_MUST_MATCH_TRAIN}
        differ += [f"train.{k} ({then[k]} then, {now['train'][k]} now)" for k in RESUME_MUST_MATCH_TRAIN
                   if then[k] != now["train"][k]]
        if differ:
            raise ConfigError(f"--resume: the checkpoint was trained with different {', '.join(differ)} "
                              "settings; resume with the config the run was started with")

    def _build_generator(self):
        g = self.config.generator
        spec = derive_targets(self.backbone.diffusion_model, include=g.include or None, exclude=g.exclude or None,
                              block_lists=self.backbone.block_lists)
        if g.init:
            generator = load_generator(self.config.path(g.init))
            if generator.spec.to_json() != spec.to_json():
                raise ConfigError(f"generator.init {g.init!r} was made for other target modules than this backbone "
                                  "with these include/exclude patterns; start from a fresh generator")
            if generator.config.cond_dim != self.encoder.width:
                raise ConfigError(f"generator.init {g.init!r} reads {generator.config.cond_dim}-wide conditions, the "
                                  f"encoder writes {self.encoder.width}; use the encoder it was trained with")
            return generator.train()
        layout = make_layout(spec, g.rank, kind=g.layout, token_dim=g.token_dim or None)
        nnt_config = NNTConfig(cond_dim=self.encoder.width, width=g.width, depth=g.depth, heads=g.heads,
                               ffn_dim=g.ffn_dim, rank_group=g.rank_group, attention=g.attention,
                               positions=g.positions)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.run.seed)
            return Generator(nnt_config, layout, g.alpha)

    def _restore(self, state: dict) -> None:
        _, tensors = read_safetensors(state["generator"])
        load_full_model_state(self.generator, tensors)
        load_full_optimizer_state(self.trainee, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.order = DataOrder.from_state_dict(state["data"])
        set_rng_state(state["rng"])
        self.step = state["step"]

    # ---- one optimizer step ------------------------------------------------------------------------

    def _autocast(self):
        if not self.autocast:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def micro_step(self, batch, weight: float) -> torch.Tensor:
        """Forward + backward of one micro-batch; returns the per-sample losses."""
        x0, conds, noise, sigma = self.objective.inputs(batch.source, batch.target, batch.instructions,
                                                        batch.references, batch.index, self.config.run.seed)
        with self._autocast():
            bundle = self.generator(encode_condition(self.encoder, batch.source, batch.instructions, batch.references))
        leaf = leaf_bundle(bundle)
        losses = self.objective.backward(leaf, conds, x0, noise, sigma, weight)
        backward_into_generator(bundle, leaf)
        return losses

    def clip_gradients(self) -> float:
        """Clip the global gradient norm (generator shards and encoder together); returns it before clipping."""
        from torch.nn.utils import clip_grads_with_norm_, get_total_norm

        groups = [[p for p in group["params"] if p.grad is not None] for group in self.optimizer.param_groups]
        norms = []
        for params in groups:
            if params:
                norm = get_total_norm([p.grad for p in params])
                norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        if not norms:
            return 0.0
        total = torch.linalg.vector_norm(torch.stack([n.float().to(self.device) for n in norms]))
        if self.config.train.grad_clip > 0:
            for params in groups:
                if params:
                    clip_grads_with_norm_(params, self.config.train.grad_clip, total)
        return float(total)

    def optimizer_step(self) -> tuple[float, float, float]:
        """One optimizer step over the next global batch -> (mean loss, lr used, grad norm)."""
        t, rank = self.config.train, self.context.rank
        ids = self.order.take(t.batch_size)
        first = self.step * t.batch_size
        per_micro = t.batch_size // t.grad_accum
        weight = 1.0 / (self.micro * t.grad_accum)
        total = torch.zeros((), dtype=torch.float64)
        lr = self.optimizer.param_groups[0]["lr"]
        for m in range(t.grad_accum):
            positions = range(m * per_micro + rank * self.micro, m * per_micro + (rank + 1) * self.micro)
            batch = self.dataset.batch([ids[j] for j in positions], [first + j for j in positions])
            set_gradient_sync(self.generator, m == t.grad_accum - 1)
            total += self.micro_step(batch, weight).double().sum()
        if self.config.encoder.trainable:
            self.context.average_gradients(self.encoder.model.parameters())
        grad_norm = self.clip_gradients()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        loss = float(self.context.sum(total)) / t.batch_size
        return loss, lr, grad_norm

    # ---- outputs -----------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Generator file, (trained encoder folder), then the state file; rank 0 writes, all ranks gather."""
        model_state = full_model_state(self.generator)
        optimizer_state = full_optimizer_state(self.trainee, self.optimizer)
        generator_path, state_path = checkpoint_paths(self.checkpoints, self.step)
        if self.context.is_main:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            plain = build_loaded(generator_path, self.generator.config, self.generator.layout,
                                 self.generator.alpha, model_state)
            temporary = generator_path.with_name(generator_path.name + ".tmp")
            save_generator(temporary, plain)
            os.replace(temporary, generator_path)
            encoder_folder = ""
            if self.config.encoder.trainable:
                folder = generator_path.with_name(generator_path.name.replace(".safetensors", ".encoder"))
                self.encoder.model.save_pretrained(folder)
                self.encoder.tokenizer.save_pretrained(folder)
                self.encoder.image_processor.save_pretrained(folder)
                encoder_folder = folder.name
            save_train_state(state_path, self.step, optimizer_state, self.scheduler.state_dict(),
                             self.order.state_dict(), self.config.to_json(), generator_path.name, encoder_folder)
            latest = self.output / "generator.safetensors"
            shutil.copyfile(generator_path, latest.with_name(latest.name + ".tmp"))
            os.replace(latest.with_name(latest.name + ".tmp"), latest)
            self._prune()
        self.context.barrier()
        return generator_path

    def _prune(self) -> None:
        keep = self.config.run.keep_checkpoints
        if keep <= 0:
            return
        for step, state_path in completed_checkpoints(self.checkpoints)[:-keep]:
            generator_path, _ = checkpoint_paths(self.checkpoints, step)
            state_path.unlink(missing_ok=True)
            generator_path.unlink(missing_ok=True)
            shutil.rmtree(generator_path.with_name(generator_path.name.replace(".safetensors", ".encoder")),
                          ignore_errors=True)

    def validate(self) -> Path | None:
        """Sample the validation edits without and with their generated LoRAs; write the grid (rank 0)."""
        v = self.config.validation
        batch = self.validation_set.batch(list(range(len(self.validation_set))), [])
        with torch.no_grad():
            with self._autocast():
                bundle = self.generator(encode_condition(self.encoder, batch.source, batch.instructions,
                                                         batch.references))
        if not self.context.is_main:
            self.context.barrier()
            return None
        bundle = bundle.to(torch.float32)
        options = dict(seed=v.seed, steps=v.steps, cfg=v.cfg, sampler=v.sampler, scheduler=v.scheduler)
        if self._base_samples is None:
            self._base_samples = sample_edits(self.backbone, batch.source, batch.instructions, batch.references,
                                              None, **options)
        edited = sample_edits(self.backbone, batch.source, batch.instructions, batch.references, bundle, **options)
        self.backbone.freeze()      # sampling may have re-created the backbone's parameters while loading it
        path = self.output / "samples" / f"step_{self.step:07d}.png"
        save_grid(path, [batch.source, batch.target, self._base_samples, edited])
        self.context.barrier()
        return path

    def _open_log(self):
        path = self.output / "loss.csv"
        rows = []
        if path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        f = open(path, "w", newline="")
        writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
        return f, writer

    def run(self) -> TrainResult:
        import json

        from tqdm import tqdm

        config, run, t = self.config, self.config.run, self.config.train
        main = self.context.is_main
        if main:
            (self.output / "config.json").write_text(json.dumps(json.loads(config.to_json()), indent=2) + "\n")
            log_file, log = self._open_log()
        losses = []
        started, start_step = time.perf_counter(), self.step
        bar = tqdm(total=t.steps, initial=self.step, desc="hywu train", disable=not main, file=sys.stderr,
                   dynamic_ncols=True, mininterval=0.5)
        try:
            with checkpointed(self.generator.nnt.blocks if self.generator_checkpointing else []):
                while self.step < t.steps:
                    self.generator.train()
                    loss, lr, grad_norm = self.optimizer_step()
                    losses.append((self.step, loss))
                    elapsed = time.perf_counter() - started
                    throughput = (self.step - start_step) * t.batch_size / elapsed
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_per_s=f"{throughput:.1f}")
                    if main and (self.step % run.log_every == 0 or self.step == t.steps):
                        log.writerow({"step": self.step, "loss": repr(loss), "lr": repr(lr), "grad_norm": repr(grad_norm),
                                      "samples_per_s": f"{throughput:.3f}", "elapsed_s": f"{elapsed:.3f}",
                                      "peak_mem_mb": f"{peak_memory_mb(self.device):.1f}"})
                        log_file.flush()
                    if not math.isfinite(loss):
                        raise FloatingPointError(f"step {self.step}: the loss is {loss}; lower train.lr or raise "
                                                 "train.warmup_steps, and resume from the last checkpoint")
                    if self.step % run.checkpoint_every == 0 or self.step == t.steps:
                        self.save_checkpoint()
                    every = config.validation.every
                    if (every and self.step % every == 0) or self.step == t.steps:
                        self.generator.eval()
                        self.validate()
        finally:
            bar.close()
            if main:
                log_file.close()
        elapsed = time.perf_counter() - started
        rate = (self.step - start_step) / elapsed if elapsed > 0 else 0.0
        return TrainResult(self.output, self.output / "generator.safetensors", losses, rate, main)


def train(config: TrainConfig, resume=None) -> TrainResult:
    """Train as configured (under torchrun: one rank of a sharded run). resume: True for the newest
    complete checkpoint of the run, or a state file path."""
    context = init_distributed(config.run.device)
    try:
        return Trainer(config, context).build(resume).run()
    finally:
        context.shutdown()
