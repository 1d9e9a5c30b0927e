"""The parameter generator g_phi: condition U -> per-input LoRA (paper §3.3-3.5).

    tokens = NNT(U)                          (N, l, s, r, d)
    bundle = layout.detokenize(tokens, alpha) one LoRA per condition, for the layout's target spec
"""
from __future__ import annotations

from torch import Tensor, nn

from .nnt import NNT, NNTConfig


class Generator(nn.Module):
    """An NNT together with the parameter layout (and so the target spec) and LoRA alpha it writes."""

    def __init__(self, config: NNTConfig, layout, alpha: float):
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"Generator: LoRA alpha must be positive, got {alpha}")
        self.config = config
        self.layout = layout
        self.alpha = float(alpha)
        self.nnt = NNT(config, layout)
        self.source = ""  # the file or folder it was loaded from, recorded in what it generates

    @property
    def spec(self):
        return self.layout.spec

    @property
    def rank(self) -> int:
        return self.layout.rank

    @property
    def scale(self) -> float:
        return self.alpha / self.layout.rank

    def forward(self, cond: Tensor, cond_mask: Tensor | None = None):
        return self.generate(cond, cond_mask)

    def generate(self, cond: Tensor, cond_mask: Tensor | None = None):
        """Condition (N, L, cond_dim) [+ mask (N, L)] -> LoRABundle with N LoRAs (differentiable)."""
        return self.layout.detokenize(self.nnt(cond, cond_mask), self.alpha)
