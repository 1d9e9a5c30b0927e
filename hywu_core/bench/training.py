"""Steps/s and peak memory of a training config with and without gradient checkpointing (§3.7).

    python -m hywu_core.bench.training CONFIG [--steps N] [--modes none both ...]

For each checkpointing mode the config is built afresh (same seed, same data order), one warm-up
step runs, then `steps` timed optimizer steps, then one step whose peak memory is measured:
on CUDA torch.cuda.max_memory_allocated; elsewhere the peak of the bytes held by tensor storages
created during the step (activations, saved tensors, gradients, optimizer state), tracked by a
TorchDispatchMode that sees every op's outputs and a weakref on each new storage (the step's
memory on top of the weights that exist before it). Checkpointing must not change the math: the
losses of every mode are reported so they can be compared.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hywu_core.train.backbone import checkpointed
from hywu_core.train.config import CHECKPOINTING, TrainConfig, load_config
from hywu_core.train.loop import Trainer


class StorageMemoryPeak(TorchDispatchMode):
    """Live and peak bytes of the tensor storages that ops create while the mode is active."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                key = id(storage)
                if key not in self._sizes and storage.nbytes() > 0:
                    self._sizes[key] = storage.nbytes()
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key)
        return out


@dataclass
class BenchResult:
    checkpointing: str
    steps_per_second: float
    peak_memory_mb: float
    memory_kind: str
    losses: list[float]


def benchmark(config: TrainConfig, steps: int = 5, modes=("none", "both")) -> list[BenchResult]:
    """Time `steps` optimizer steps and measure one step's peak memory for each checkpointing mode."""
    results = []
    for mode in modes:
        if mode not in CHECKPOINTING:
            raise ValueError(f"checkpointing mode {mode!r}: use one of {', '.join(CHECKPOINTING)}")
        with tempfile.TemporaryDirectory(prefix="hywu-bench-") as folder:
            cfg = copy.deepcopy(config)
            cfg.run.output = str(Path(folder) / "run")
            cfg.train.checkpointing = mode
            cfg.train.steps = max(cfg.train.steps, steps + 2)
            trainer = Trainer(cfg).build()
            blocks = trainer.generator.nnt.blocks if trainer.generator_checkpointing else []
            with checkpointed(blocks):
                losses = [trainer.optimizer_step()[0]]
                started = time.perf_counter()
                losses += [trainer.optimizer_step()[0] for _ in range(steps)]
                rate = steps / (time.perf_counter() - started)
                if trainer.device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats(trainer.device)
                    losses.append(trainer.optimizer_step()[0])
                    peak, kind = torch.cuda.max_memory_allocated(trainer.device) / 2 ** 20, "cuda max allocated"
                else:
                    with StorageMemoryPeak() as meter:
                        losses.append(trainer.optimizer_step()[0])
                    peak, kind = meter.peak / 2 ** 20, "tensor storages created in the step"
        results.append(BenchResult(mode, rate, peak, kind, losses))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hywu_core.bench.training", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=["none", "both"], choices=CHECKPOINTING)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    results = benchmark(config, args.steps, args.modes)
    print(f"{'checkpointing':<14}{'steps/s':>10}{'peak MB':>12}  memory measured as")
    for r in results:
        print(f"{r.checkpointing:<14}{r.steps_per_second:>10.2f}{r.peak_memory_mb:>12.1f}  {r.memory_kind}")
    same = all(r.losses == results[0].losses for r in results)
    print(f"losses identical across modes: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
