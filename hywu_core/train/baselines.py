"""Static adaptation, the paper's baselines (§5.1, §5.3): one LoRA for every input, or full SFT.

    Single LoRA   one static LoRA trained on one objective (one edit direction)
    Shared LoRA   one static LoRA trained on several (conflicting) objectives at once
    SFT           every weight of the diffusion model trained (the text encoder stays frozen)

They are trained on exactly the objective the generator is trained on (train.objective: the
backbone's own denoising loss, the same noise and noise levels per sample index, the same AdamW +
warmup-cosine schedule and gradient clipping), so "equal training budget" means equal steps and
batch size. The demo family also uses `train_static(..., "sft")` to pretrain its backbone.

A static LoRA is a LoRABundle with one row that every batch row reads (rows index 0), applied
through the same per-row injection as generated LoRAs: A starts uniform in +-1/sqrt(d_in) and B at
zero (PEFT's initialisation), so training starts at the base model, as a fresh generator does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from hywu_core.lora import LoRABundle, factor_shapes
from hywu_core.targets import TargetSpec
from hywu_core.train.backbone import Backbone
from hywu_core.train.data import DataOrder, EditDataset
from hywu_core.train.loop import WarmupCosine
from hywu_core.train.objective import DenoisingObjective

METHODS = ("lora", "sft")


class StaticLoRA(nn.Module):
    """One trainable LoRA over a target spec (a LoRABundle with N = 1 as parameters)."""

    def __init__(self, spec: TargetSpec, rank: int, alpha: float, seed: int = 0):
        super().__init__()
        self.spec, self.rank, self.alpha = spec, rank, float(alpha)
        self.paths = spec.module_paths()
        self.A, self.B = nn.ParameterList(), nn.ParameterList()
        generator = torch.Generator().manual_seed(seed)
        for path, module in spec.items():
            shape_a, shape_b = factor_shapes(module, rank)
            bound = 1.0 / math.sqrt(module.d_in)
            self.A.append(nn.Parameter((torch.rand((1,) + shape_a, generator=generator) * 2 - 1) * bound))
            self.B.append(nn.Parameter(torch.zeros((1,) + shape_b)))

    def bundle(self, rows: int = 1) -> LoRABundle:
        """The LoRA as a bundle of `rows` identical rows (views of the parameters: gradients flow back)."""
        return LoRABundle(self.spec, self.rank, self.alpha, dict(zip(self.paths, self.A)),
                          dict(zip(self.paths, self.B))).repeat(rows)


class TrainableBackbone(Backbone):
    """A Backbone whose diffusion model takes gradients (SFT); the text encoder and VAE stay frozen."""

    def freeze(self) -> None:
        self.model.model.requires_grad_(False)
        self.diffusion_model.requires_grad_(True)


@dataclass
class StaticSchedule:
    """The optimisation budget shared by every method of one comparison."""

    steps: int = 200
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    high_frequency: float = 0.0        # the objective's high-frequency weight (train/objective.py), as the generator's
    patch_lattice: float = 0.0         # the objective's patch-lattice weight (train/objective.py), as the generator's
    losses: list = field(default_factory=list)


def train_static(backbone: Backbone, dataset: EditDataset, method: str, schedule: StaticSchedule,
                 spec: TargetSpec | None = None, rank: int = 8, alpha: float = 8.0, progress=None):
    """Train a static LoRA (method "lora": returns the StaticLoRA) or the diffusion model itself
    (method "sft": `backbone` must be a TrainableBackbone; its weights are trained in place; returns
    None). The mean loss of every step is appended to schedule.losses."""
    if method not in METHODS:
        raise ValueError(f"unknown static method {method!r}: use one of {', '.join(METHODS)}")
    if method == "sft" and not isinstance(backbone, TrainableBackbone):
        raise ValueError("SFT trains the backbone's weights: pass a TrainableBackbone")
    backbone.load()
    lora = None
    if method == "lora":
        if spec is None:
            raise ValueError("a static LoRA needs the target spec it adapts")
        lora = StaticLoRA(spec, rank, alpha, seed=schedule.seed).to(backbone.device)
        parameters = list(lora.parameters())
    else:
        parameters = [p for p in backbone.diffusion_model.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=schedule.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(schedule.warmup_steps, schedule.steps, schedule.min_lr_ratio))
    objective = DenoisingObjective(backbone, high_frequency=schedule.high_frequency,
                                   patch_lattice=schedule.patch_lattice)
    order = DataOrder(len(dataset), schedule.seed)
    for step in range(schedule.steps):
        ids = order.take(schedule.batch_size)
        first = step * schedule.batch_size
        batch = dataset.batch(ids, list(range(first, first + len(ids))))
        x0, conds, noise, sigma = objective.inputs(batch.source, batch.target, batch.instructions, [], batch.index,
                                                   schedule.seed)
        bundle = lora.bundle(len(ids)) if lora is not None else None
        losses = objective.backward(bundle, conds, x0, noise, sigma, 1.0 / len(ids))
        if schedule.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(parameters, schedule.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = float(losses.mean())
        if not math.isfinite(loss):
            raise FloatingPointError(f"{method} step {step + 1}: the loss is {loss}; lower the learning rate")
        schedule.losses.append(loss)
        if progress is not None:
            progress(step + 1, loss)
    backbone.freeze()
    return lora


def per_sample_gradients(backbone: Backbone, lora: StaticLoRA, sources: Tensor, targets: Tensor,
                         instructions: list[str], seed: int = 0, high_frequency: float = 0.0,
                         patch_lattice: float = 0.0) -> Tensor:
    """(N, P): the gradient of each edit's L_edit (with the objective's `high_frequency` and
    `patch_lattice` terms, as the LoRA was trained) with respect to every parameter of `lora`, one
    flattened row per edit (IMAGE batches sources / targets; fixed noise and noise level per edit
    index): the per-sample LoRA gradients of §5.2."""
    backbone.load()
    objective = DenoisingObjective(backbone, high_frequency=high_frequency, patch_lattice=patch_lattice)
    rows = []
    for i, instruction in enumerate(instructions):
        x0, conds, noise, sigma = objective.inputs(sources[i:i + 1], targets[i:i + 1], [instruction], [], [i], seed)
        lora.zero_grad(set_to_none=True)
        objective.backward(lora.bundle(1), conds, x0, noise, sigma, 1.0)
        rows.append(torch.cat([p.grad.flatten() for p in lora.parameters() if p.grad is not None]).cpu())
    lora.zero_grad(set_to_none=True)
    return torch.stack(rows)
