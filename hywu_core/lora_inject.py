"""Per-sample LoRA in the forward pass (paper §3.2 injection, §3.6 training): row i of a batch runs with its own LoRA.

Inside `per_row_injection(root, bundle, rows)` every adapted Linear of the bundle's target spec
returns base(x) + strength * scale * (x A_k^T) B_k^T with k = rows[i] for batch row i (the
per-row product comes from hywu_core.kernels.per_row_lora); a LoRA with an output slice adds into
those output rows only. Inside a mixture of experts a Linear sees tokens, not batch rows: the
mixture says which batch row each token came from (hywu_core.token_rows), and the token takes its
row's LoRA. The backbone's weights are never
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
import torch.nn.functional as F
from torch import Tensor, nn

from hywu_core import token_rows
from hywu_core.kernels import per_row_lora, per_row_lora_add_
from hywu_core.lora import LoRABundle

Rows = Tensor | Callable[[int], Tensor]


class PerRowLoRA:
    """A bundle prepared for injection: factors cast to each (device, dtype) they meet, once."""

    def __init__(self, bundle: LoRABundle, strength: float = 1.0):
        self.bundle = bundle
        self.scale = float(strength) * bundle.scale
        self._cast: dict[tuple[torch.device, torch.dtype], dict[str, tuple[Tensor, Tensor]]] = {}

    def targets(self, root: nn.Module, prefix: str = "") -> list[tuple[nn.Module, str, int | None, tuple | None]]:
        """(Linear module, spec path, expert index or None, output rows or None) for every module the bundle adapts."""
        found, missing = [], []
        for block in self.bundle.spec.blocks:
            for m in block.modules:
                path = block.path(m.name)
                if m.grouped and not m.members:
                    raise ValueError(f"expert group {path} has no member modules to inject into; "
                                     "derive the target spec from the model itself")
                for e, linear in enumerate(m.linears):
                    name = prefix + block.path(linear)
                    try:
                        module = root.get_submodule(name)
                    except AttributeError:
                        missing.append(name)
                        continue
                    d_in, d_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
                    fits = d_in == m.d_in and (d_out == m.d_out if m.out_slice is None
                                               else isinstance(d_out, int) and d_out >= m.out_slice[1])
                    if not fits:
                        missing.append(f"{name} (shape differs)")
                        continue
                    found.append((module, path, e if m.grouped else None, m.out_slice))
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

        def hook_for(path: str, expert: int | None, out_slice: tuple[int, int] | None):
            def hook(module, args, output):
                x = args[0]
                gathered = token_rows.current()
                if gathered is None:
                    index = on_device(rows(x.shape[0]) if callable(rows) else rows, x.device)
                else:   # rows of a mixture of experts: each row is a token of batch item gathered.items[j]
                    batch = on_device(rows(gathered.batch_size) if callable(rows) else rows, x.device)
                    index = batch[gathered.items.to(x.device)]
                a, b = self.factors(path, expert, x.device, x.dtype)
                if torch.is_grad_enabled() and any(t.requires_grad for t in (output, x, a, b)):   # training
                    delta = per_row_lora(x, a, b, index, self.scale).to(output.dtype)
                    if out_slice is not None:
                        delta = F.pad(delta, (out_slice[0], output.shape[-1] - out_slice[1]))
                    return output + delta
                target = output if out_slice is None else output[..., out_slice[0]:out_slice[1]]
                if gathered is None:
                    per_row_lora_add_(target, x, a, b, index, self.scale)   # sampling: into the output
                else:
                    add_per_token_(target, x, a, b, index, self.scale, self.bundle.batch_size)
                return output
            return hook

        try:
            for module, path, expert, out_slice in self.targets(root, prefix):
                handles.append(module.register_forward_hook(hook_for(path, expert, out_slice)))
            yield self
        finally:
            for handle in handles:
                handle.remove()


def add_per_token_(out: Tensor, x: Tensor, A: Tensor, B: Tensor, index: Tensor, scale: float, count: int) -> None:
    """out (n, d_out) += scale * (x_j A_k^T) B_k^T with k = index[j] for token rows x (n, d_in): the tokens of each
    LoRA as one row of the per-row kernel (one LoRA: all tokens at once, no per-token copy of its factors)."""
    if count == 1:
        per_row_lora_add_(out[None], x[None], A, B, index.new_zeros(1), scale)
        return
    for k in range(count):
        picked = (index == k).nonzero().flatten()
        if picked.numel():
            delta = per_row_lora(x[picked][None], A, B, index[picked[:1]], scale)[0]
            out.index_add_(0, picked, delta.to(out.dtype))


@contextmanager
def per_row_injection(root: nn.Module, bundle: LoRABundle, rows: Rows, strength: float = 1.0, prefix: str = ""):
    """Inside the block every target Linear of bundle.spec (at prefix + path under root; grouped
    roles: each member module with its expert slice) returns
    base(x) + strength * scale * (x A[rows[i]]^T) B[rows[i]]^T for input batch row i."""
    with PerRowLoRA(bundle, strength).inject(root, rows, prefix) as injected:
        yield injected
