"""Per-row LoRA in plain PyTorch: the reference every kernel is tested against (paper §3.7).

Row i of a batch uses LoRA item rows[i]: delta_i = scale * (x_i A_{rows[i]}^T) B_{rows[i]}^T.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def per_row_lora_reference(x: Tensor, A: Tensor, B: Tensor, rows: Tensor, scale: float) -> Tensor:
    """x (R, ..., d_in), A (N, r, d_in), B (N, d_out, r), rows (R,) long -> delta (R, ..., d_out).

    Accumulates in fp32 (fp64 for fp64 inputs) and returns x's dtype; differentiable in x, A and B.
    """
    shape = x.shape
    acc = torch.promote_types(x.dtype, torch.float32)
    flat = x.reshape(shape[0], math.prod(shape[1:-1]), shape[-1]).to(acc)
    down = torch.bmm(flat, A.index_select(0, rows).to(acc).transpose(1, 2))
    up = torch.bmm(down, B.index_select(0, rows).to(acc).transpose(1, 2))
    return (up * scale).to(x.dtype).reshape(*shape[:-1], B.shape[1])
