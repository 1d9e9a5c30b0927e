"""Per-sample LoRA for the dynamic path: each batch row adds its own scale * (x A_i^T) B_i^T (§3.7).

per_row_lora (returns the delta) and per_row_lora_add_ (adds it into an existing output in place)
validate their inputs, then run the Triton kernels of .triton_lora when x is on CUDA in a dtype they
take (fp16, bf16, fp32), the rank is at most 128, triton imports, and no autograd graph is needed;
the torch reference (.reference) everywhere else: on CPU, when x, A or B requires grad with grad
mode on (training the generator end to end, §3.6), on macOS where triton is not installed. triton
is imported lazily, at the first call that could use it.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from hywu_core.kernels.reference import per_row_lora_reference, per_row_lora_reference_add_

TRITON_MAX_RANK = 128
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class KernelInputError(ValueError):
    """Inputs of a per-row LoRA call that do not fit together."""


@functools.cache
def triton_available() -> bool:
    """Whether triton imports here (looked up once, on the first CUDA call)."""
    from hywu_core.kernels import triton_lora

    return triton_lora.AVAILABLE


def choose_backend(*, on_cuda: bool, dtype: torch.dtype, rank: int, needs_grad: bool,
                   triton_ok: bool | None = None) -> str:
    """"triton" or "torch" for a call with these facts; triton_ok None asks triton_available(), and
    only when every other condition already holds (so CPU calls never import triton)."""
    if not on_cuda or needs_grad or dtype not in TRITON_DTYPES or rank > TRITON_MAX_RANK:
        return "torch"
    if triton_ok is None:
        triton_ok = triton_available()
    return "triton" if triton_ok else "torch"


def backend_for(x: Tensor, A: Tensor, B: Tensor) -> str:
    """The backend per_row_lora uses for these tensors, in the current grad mode."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or A.requires_grad or B.requires_grad)
    return choose_backend(on_cuda=x.is_cuda, dtype=x.dtype, rank=A.shape[1], needs_grad=needs_grad)


def validate(x: Tensor, A: Tensor, B: Tensor, rows: Tensor) -> Tensor:
    """Check shapes, devices and LoRA indices; return rows on x's device.

    Nothing here synchronizes host and device. Indices held on the CPU are range-checked here and
    copied without blocking; indices already on a CUDA device are checked with torch._assert_async,
    which does not synchronize: a bad index fails at a later CUDA call (poisoning the CUDA context)
    instead of letting a kernel read out of bounds."""
    if x.dim() < 2:
        raise KernelInputError(f"x must be (R, ..., d_in) with a batch axis first, got shape {tuple(x.shape)}; "
                               "add the batch axis with x.unsqueeze(0)")
    if A.dim() != 3 or B.dim() != 3:
        raise KernelInputError(f"A must be (N, r, d_in) and B (N, d_out, r), got {tuple(A.shape)} and "
                               f"{tuple(B.shape)}; for an expert group pass one expert's slice A[:, e], B[:, e]")
    if A.shape[0] != B.shape[0] or A.shape[1] != B.shape[2]:
        raise KernelInputError(f"A {tuple(A.shape)} and B {tuple(B.shape)} are not one LoRA stack: they need the "
                               "same item count N and rank r (A (N, r, d_in), B (N, d_out, r))")
    if A.shape[2] != x.shape[-1]:
        raise KernelInputError(f"x has d_in={x.shape[-1]} but A expects d_in={A.shape[2]}: the LoRA was made for "
                               "a Linear of another width")
    if A.device != x.device or B.device != x.device:
        raise KernelInputError(f"x is on {x.device} but A is on {A.device} and B on {B.device}: move the factors "
                               "with .to(x.device)")
    if rows.dim() != 1 or rows.shape[0] != x.shape[0]:
        raise KernelInputError(f"rows must hold one LoRA index per batch row of x ({x.shape[0]}), got shape "
                               f"{tuple(rows.shape)}")
    if rows.dtype not in (torch.int64, torch.int32):
        raise KernelInputError(f"rows must be int64 or int32 LoRA indices, got {rows.dtype}")
    count = A.shape[0]
    if rows.device.type == "cpu":
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= count):
            raise KernelInputError(f"rows holds LoRA indices {rows.tolist()} but the stack has {count} "
                                   f"item(s): indices must lie in [0, {count})")
    elif rows.numel():
        low, high = torch.aminmax(rows)
        torch._assert_async((low >= 0) & (high < count), f"per_row_lora: a LoRA index is outside [0, {count})")
    return rows.to(x.device, non_blocking=x.device.type == "cuda")


def per_row_lora(x: Tensor, A: Tensor, B: Tensor, rows: Tensor, scale: float) -> Tensor:
    """x (R, ..., d_in), A (N, r, d_in), B (N, d_out, r), rows (R,) long -> delta (R, ..., d_out), x's dtype."""
    rows = validate(x, A, B, rows)
    if backend_for(x, A, B) == "triton":
        from hywu_core.kernels.triton_lora import per_row_lora_triton

        return per_row_lora_triton(x, A, B, rows, scale)
    return per_row_lora_reference(x, A, B, rows, scale)


def per_row_lora_add_(out: Tensor, x: Tensor, A: Tensor, B: Tensor, rows: Tensor, scale: float) -> Tensor:
    """out (R, ..., d_out) += per_row_lora(x, A, B, rows, scale), in place; returns out.

    The add is fused where it can be (one read and one write of out instead of writing a delta and
    reading it back), when out views as (R, T, d_out) and needs no gradient: on the Triton path into
    the expand kernel when out has x's dtype; on the torch path into the second product when out is
    in the accumulation dtype (fp32 / fp64), e.g. a float32 Linear's output on the CPU."""
    rows = validate(x, A, B, rows)
    expected = (*x.shape[:-1], B.shape[1])
    if tuple(out.shape) != expected:
        raise KernelInputError(f"out has shape {tuple(out.shape)} but the delta of x {tuple(x.shape)} through "
                               f"B {tuple(B.shape)} has shape {expected}: pass the output of the Linear this x went through")
    if out.device != x.device:
        raise KernelInputError(f"out is on {out.device} but x on {x.device}: keep them on one device")
    out_needs_grad = torch.is_grad_enabled() and out.requires_grad
    backend = backend_for(x, A, B)
    if backend == "triton" and not out_needs_grad and out.dtype == x.dtype and _views_as_3d(out):
        from hywu_core.kernels.triton_lora import per_row_lora_triton

        return per_row_lora_triton(x, A, B, rows, scale, out=out)
    no_graph = not torch.is_grad_enabled() or not any(t.requires_grad for t in (out, x, A, B))
    if backend == "torch" and no_graph and out.dtype == torch.promote_types(x.dtype, torch.float32) and _views_as_3d(out):
        return per_row_lora_reference_add_(out, x, A, B, rows, scale)
    return out.add_(per_row_lora_reference(x, A, B, rows, scale))


def _views_as_3d(out: Tensor) -> bool:
    """Whether out can be written through a (R, T, d_out) view (the kernel takes three strides)."""
    try:
        out.view(out.shape[0], math.prod(out.shape[1:-1]), out.shape[-1])
    except RuntimeError:
        return False
    return True
