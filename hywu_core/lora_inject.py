"""Per-sample LoRA in the forward pass (paper §3.2 injection, §3.6 training): row i of a batch runs with its own LoRA.

Inside `per_row_injection(root, bundle, rows)` every adapted Linear of the bundle's target spec
returns base(x) + strength * scale * (x A_k^T) B_k^T with k = rows[i] for batch row i (the
per-row product comes from hywu_core.kernels.per_row_lora). The backbone's weights are never
touched: forward hooks are added on entry and removed on exit, also when the block raises.
Gradients flow into the bundle's factors, which is how the generator is trained end to end
through a frozen backbone (§3.6).

No hook synchronizes host and device: a blocking CPU -> CUDA copy (`tensor.to("cuda")`) ends in a
stream synchronize in PyTorch, so factors and row indices move to a CUDA input's device with
non_blocking=True (PyTorch stages pageable host memory before that call returns), the
factors once per (device, dtype) and a rows tensor once per device. Rows already on the input's
device pass through untouched.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import Tensor, nn

from hywu_core.kernels import per_row_lora, per_row_lora_add_
from hywu_core.lora import LoRABundle

Rows = Tensor | Callable[[int], Tensor]


class PerRowLoRA:
    """A bundle prepared for injection: factors cast to each (device, dtype) they meet, once."""

    def __init__(self, bundle: LoRABundle, strength: float = 1.0):
        self.bundle = bundle
        self.scale = float(strength) * bundle.scale
        self._cast: dict[tuple[torch.device, torch.dtype], dict[str, tuple[Tensor, Tensor]]] = {}

    def targets(self, root: nn.Module, prefix: str = "") -> list[tuple[nn.Module, str, int | None]]:
        """(Linear module, spec path, expert index or None) for every module the bundle adapts."""
        found, missing = [], []
        for block in self.bundle.spec.blocks:
            for m in block.modules:
                path = block.path(m.name)
                if m.grouped and not m.members:
                    raise ValueError(f"expert group {path} has no member modules to inject into; "
                                     "derive the target spec from the model itself")
                names = [(block.path(member), e) for e, member in enumerate(m.members)] if m.grouped \
                    else [(path, None)]
                for name, expert in names:
                    try:
                        module = root.get_submodule(prefix + name)
                    except AttributeError:
                        missing.append(prefix + name)
                        continue
                    if (getattr(module, "in_features", None), getattr(module, "out_features", None)) != (m.d_in, m.d_out):
                        missing.append(f"{prefix + name} (shape differs)")
                        continue
                    found.append((module, path, expert))
        if missing:
            raise ValueError(f"the LoRA's target modules are not in this model: {', '.join(missing[:5])}"
                             f"{' ...' if len(missing) > 5 else ''}; it was generated for a different backbone")
        return found

    def factors(self, path: str, expert: int | None, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """A (N, r, d_in) and B (N, d_out, r) of one module on (device, dtype), converted once per pair."""
        cast = self._cast.get((device, dtype))
        if cast is None:
            cast = self._cast[(device, dtype)] = {}
        pair = cast.get((path, expert))
        if pair is None:
            a, b = self.bundle.A[path], self.bundle.B[path]
            if expert is not None:
                a, b = a[:, expert], b[:, expert]
            non_blocking = device.type == "cuda"
            pair = cast[(path, expert)] = (a.to(device, dtype, non_blocking=non_blocking),
                                           b.to(device, dtype, non_blocking=non_blocking))
        return pair

    @contextmanager
    def inject(self, root: nn.Module, rows: Rows, prefix: str = ""):
        """Inside the block, row i of each target's input uses LoRA rows[i] (rows may be a callable of
        the input's batch size)."""
        handles = []
        moved: list[tuple[Tensor, torch.device, Tensor]] = []

        def on_device(index: Tensor, device: torch.device) -> Tensor:
            """index on `device`, copied at most once per (index tensor, device) in a row of calls."""
            if index.device == device:
                return index
            if moved and moved[-1][0] is index and moved[-1][1] == device:
                return moved[-1][2]
            copy = index.to(device, non_blocking=device.type == "cuda")
            moved[:] = [(index, device, copy)]
            return copy

        def hook_for(path: str, expert: int | None):
            def hook(module, args, output):
                x = args[0]
                index = on_device(rows(x.shape[0]) if callable(rows) else rows, x.device)
                a, b = self.factors(path, expert, x.device, x.dtype)
                if torch.is_grad_enabled() and any(t.requires_grad for t in (output, x, a, b)):
                    return output + per_row_lora(x, a, b, index, self.scale).to(output.dtype)   # training
                return per_row_lora_add_(output, x, a, b, index, self.scale)   # sampling: into the output
            return hook

        try:
            for module, path, expert in self.targets(root, prefix):
                handles.append(module.register_forward_hook(hook_for(path, expert)))
            yield self
        finally:
            for handle in handles:
                handle.remove()


@contextmanager
def per_row_injection(root: nn.Module, bundle: LoRABundle, rows: Rows, strength: float = 1.0, prefix: str = ""):
    """Inside the block every target Linear of bundle.spec (at prefix + path under root; grouped
    roles: each member module with its expert slice) returns
    base(x) + strength * scale * (x A[rows[i]]^T) B[rows[i]]^T for input batch row i."""
    with PerRowLoRA(bundle, strength).inject(root, rows, prefix) as injected:
        yield injected
