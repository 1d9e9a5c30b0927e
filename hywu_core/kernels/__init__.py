"""Per-sample LoRA for the dynamic path: each batch row adds its own scale * (x A_i^T) B_i^T (§3.7)."""
from __future__ import annotations

from torch import Tensor

from .reference import per_row_lora_reference


def per_row_lora(x: Tensor, A: Tensor, B: Tensor, rows: Tensor, scale: float) -> Tensor:
    """x (R, ..., d_in), A (N, r, d_in), B (N, d_out, r), rows (R,) long -> delta (R, ..., d_out)."""
    return per_row_lora_reference(x, A, B, rows, scale)
