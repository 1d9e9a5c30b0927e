"""Per-row LoRA in plain PyTorch: the reference every kernel is tested against (paper §3.7).

Row i of a batch uses LoRA item rows[i]: delta_i = scale * (x_i A_{rows[i]}^T) B_{rows[i]}^T.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _scaled_down(x: Tensor, A: Tensor, rows: Tensor, scale: float, acc: torch.dtype) -> Tensor:
    """scale * x A_{rows}^T as (R, T, r) in `acc`: the scale goes on this rank-r intermediate, not on
    the d_out-wide result, which saves a pass over the largest tensor."""
    flat = x.reshape(x.shape[0], math.prod(x.shape[1:-1]), x.shape[-1]).to(acc)
    return torch.bmm(flat, A.index_select(0, rows).to(acc).transpose(1, 2)) * scale


def per_row_lora_reference(x: Tensor, A: Tensor, B: Tensor, rows: Tensor, scale: float) -> Tensor:
    """x (R, ..., d_in), A (N, r, d_in), B (N, d_out, r), rows (R,) long -> delta (R, ..., d_out).

    Accumulates in fp32 (fp64 for fp64 inputs) and returns x's dtype; differentiable in x, A and B.
    """
    acc = torch.promote_types(x.dtype, torch.float32)
    up = torch.bmm(_scaled_down(x, A, rows, scale, acc), B.index_select(0, rows).to(acc).transpose(1, 2))
    return up.to(x.dtype).reshape(*x.shape[:-1], B.shape[1])


def per_row_lora_reference_add_(out: Tensor, x: Tensor, A: Tensor, B: Tensor, rows: Tensor, scale: float) -> Tensor:
    """out (R, ..., d_out) += the delta, the add fused into the second product (out.baddbmm_): no
    d_out-wide temporary. Needs out in the accumulation dtype (fp32 / fp64), viewable as (R, T, d_out),
    and no autograd graph through out; per_row_lora_add_ checks that before choosing it."""
    acc = torch.promote_types(x.dtype, torch.float32)
    out3 = out.view(out.shape[0], math.prod(out.shape[1:-1]), out.shape[-1])
    out3.baddbmm_(_scaled_down(x, A, rows, scale, acc), B.index_select(0, rows).to(acc).transpose(1, 2))
    return out
