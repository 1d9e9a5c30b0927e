"""The parameter generator g_phi: condition U -> one LoRA per input (paper §3.3-3.5).

    tokens = NNT(U)                           (N, l, s, r, d)                 §3.5
    bundle = layout.detokenize(tokens, alpha) one LoRA per item, for the layout's target spec   §3.4

`generator(condition)` is the one way from a Condition to LoRAs: training (with gradients), the
nodes, the experiments and the CLI all call it.
"""
from __future__ import annotations

from torch import nn

from hywu_core.condition import Condition
from hywu_core.lora import LoRABundle
from hywu_core.nnt import NNT, NNTConfig
from hywu_core.tokenizer import ParameterLayout


class Generator(nn.Module):
    """An NNT together with the parameter layout (and so the target spec) and LoRA alpha it writes."""

    def __init__(self, config: NNTConfig, layout: ParameterLayout, alpha: float):
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

    def forward(self, condition: Condition) -> LoRABundle:
        """U (N, L, cond_dim) with its mask -> N LoRAs, differentiable; U moves to this generator's device and dtype."""
        if condition.width != self.config.cond_dim:
            raise ValueError(f"the condition is {condition.width} wide (from {condition.encoder!r}) but the "
                             f"generator expects {self.config.cond_dim}: load the condition encoder this generator "
                             "was trained with")
        parameter = next(self.parameters())
        tokens = condition.tokens.to(parameter.device, parameter.dtype)
        return self.layout.detokenize(self.nnt(tokens, condition.mask.to(parameter.device)), self.alpha)
