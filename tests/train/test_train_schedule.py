"""The learning-rate schedule (linear warmup + cosine) and gradient clipping of hywu_core.train.

One short run of the tiny config (conftest.TINY): 6 steps, 2 of warmup, cosine down to 0.2 x lr, and
train.grad_clip = 1e-3, far below the gradients' norm, so that every step clips. The Trainer's
clip_gradients and the optimizer's step are observed during the run; loss.csv is read after it.
"""
import csv
import math

import pytest
import torch

from hywu_core.train import load_config
from hywu_core.train.loop import Trainer, WarmupCosine

from .helpers import write_config

LR, WARMUP, STEPS, MIN_RATIO, GRAD_CLIP = 1e-2, 2, 6, 0.2, 1e-3


def test_warmup_cosine_values():
    schedule = WarmupCosine(warmup=4, total=20, min_ratio=0.1)
    assert schedule(0) == 0.25                                      # linear warmup: (step + 1) / warmup
    assert schedule(1) == 0.5
    assert schedule(3) == 1.0                                       # last warmup step reaches the full lr
    assert schedule(4) == 1.0                                       # the cosine starts at 1
    assert schedule(12) == pytest.approx(0.55, rel=0, abs=1e-15)    # halfway through the cosine
    assert schedule(19) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 16)), rel=0, abs=1e-15)
    assert schedule(20) == pytest.approx(0.1, rel=0, abs=1e-15)     # the cosine ends at min_ratio at `total`
    assert schedule(25) == pytest.approx(0.1, rel=0, abs=1e-15)     # and stays there
    assert [schedule(s) for s in range(4, 21)] == sorted((schedule(s) for s in range(4, 21)), reverse=True)
    assert WarmupCosine(warmup=0, total=10, min_ratio=0.0)(0) == 1.0


def total_norm(parameters) -> float:
    grads = [p.grad.detach().double() for p in parameters if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


@pytest.fixture(scope="module")
def observed_run(comfy_lib, tmp_path_factory):
    """Train the short run; record per step the norm before and after clip_gradients (and what it
    returned), and the gradient norm and lr the optimizer's step applied."""
    folder = tmp_path_factory.mktemp("train_schedule")
    config = load_config(write_config(
        folder, train={"steps": STEPS, "batch_size": 4, "lr": LR, "warmup_steps": WARMUP,
                       "min_lr_ratio": MIN_RATIO, "grad_clip": GRAD_CLIP},
        validation={"count": 1, "steps": 2}))
    trainer = Trainer(config).build()
    parameters = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    clipping, applied = [], []
    clip_gradients = trainer.clip_gradients

    def observed_clip():
        before = total_norm(parameters)
        returned = clip_gradients()
        clipping.append((before, returned, total_norm(parameters)))
        return returned

    trainer.clip_gradients = observed_clip
    trainer.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: applied.append((total_norm(parameters), optimizer.param_groups[0]["lr"])))
    result = trainer.run()
    with open(result.output / "loss.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    assert len(clipping) == len(applied) == STEPS
    return rows, clipping, applied


def test_loss_csv_lr_column_follows_warmup_cosine(observed_run):
    """Row `step` logs the lr its update used: lr * multiplier(step - 1)."""
    rows, _, applied = observed_run
    expected = [LR * m for m in (0.5, 1.0, 1.0, MIN_RATIO + (1 - MIN_RATIO) * 0.5 * (1 + math.cos(math.pi / 4)),
                                 MIN_RATIO + (1 - MIN_RATIO) * 0.5,
                                 MIN_RATIO + (1 - MIN_RATIO) * 0.5 * (1 + math.cos(3 * math.pi / 4)))]
    logged = [float(r["lr"]) for r in rows]
    assert logged == pytest.approx(expected, rel=1e-12)
    assert logged == [lr for _, lr in applied]


def test_gradients_are_clipped_before_the_update_and_the_log_keeps_the_unclipped_norm(observed_run):
    rows, clipping, applied = observed_run
    for (before, returned, after), (at_step, _), row in zip(clipping, applied, rows):
        assert before > 100 * GRAD_CLIP, "the gradients must be far above the clip for this test to mean anything"
        assert returned == pytest.approx(before, rel=1e-5)           # clip_gradients returns the norm before
        assert after == pytest.approx(GRAD_CLIP, rel=1e-5)           # and leaves gradients of norm grad_clip
        assert at_step == after                                      # which is what the update uses
        assert float(row["grad_norm"]) == returned                   # loss.csv records the unclipped norm
