"""LoRA tools (paper §5.3 diagnostics, §7.6 safety control): average, shuffle, blend, bound."""
from comfy_api.v0_0_2 import io

from hywu_core import lora_tools

from .types import HYWULoRA

SPACE_TOOLTIP = ("parameters: average the factors A and B (the paper's 'mean LoRA parameter'); "
                 "update: the exact mean of the weight updates, as one LoRA of higher rank")


class HYWUAverageLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUAverageLoRA", display_name="HYWU Average LoRA", category="HY-WU",
            description="Average PG (paper §5.3): the mean of the batch's generated LoRAs, one LoRA for every item.",
            inputs=[HYWULoRA.Input("lora"),
                    io.Combo.Input("space", options=list(lora_tools.SPACES), default="parameters",
                                   tooltip=SPACE_TOOLTIP)],
            outputs=[HYWULoRA.Output(display_name="lora")])

    @classmethod
    def execute(cls, lora, space: str = "parameters") -> io.NodeOutput:
        return io.NodeOutput(lora.averaged(space))


class HYWUShuffleLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUShuffleLoRA", display_name="HYWU Shuffle LoRA", category="HY-WU",
            description="Shuffle PG (paper §5.3): every item gets another item's LoRA (a seeded permutation "
                        "that moves every item), to test that gains come from matching LoRA to input.",
            inputs=[HYWULoRA.Input("lora"), io.Int.Input("seed", default=0, min=0, max=2**31 - 1)],
            outputs=[HYWULoRA.Output(display_name="lora")])

    @classmethod
    def execute(cls, lora, seed: int) -> io.NodeOutput:
        shuffled, order = lora.shuffled(seed)
        return io.NodeOutput(shuffled, ui={"text": [f"item i gets LoRA {order}[i]"]})


class HYWUBlendLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUBlendLoRA", display_name="HYWU Blend LoRA", category="HY-WU",
            description="Interpolate two generated LoRAs: (1 - t) * a + t * b, item by item (a single LoRA "
                        "pairs with every item of the other).",
            inputs=[HYWULoRA.Input("lora_a"), HYWULoRA.Input("lora_b"),
                    io.Float.Input("t", default=0.5, min=-1.0, max=2.0, step=0.01),
                    io.Combo.Input("space", options=list(lora_tools.SPACES), default="parameters",
                                   tooltip=SPACE_TOOLTIP)],
            outputs=[HYWULoRA.Output(display_name="lora")])

    @classmethod
    def execute(cls, lora_a, lora_b, t: float, space: str = "parameters") -> io.NodeOutput:
        return io.NodeOutput(lora_a.blended(lora_b, t, space))


class HYWUBoundLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUBoundLoRA", display_name="HYWU Bound LoRA", category="HY-WU",
            description="Safety control (paper §7.6): scale down any module update whose Frobenius norm "
                        "||scale * B A|| exceeds max_norm.",
            inputs=[HYWULoRA.Input("lora"),
                    io.Float.Input("max_norm", default=1.0, min=1e-6, max=1e6, step=0.01)],
            outputs=[HYWULoRA.Output(display_name="lora")])

    @classmethod
    def execute(cls, lora, max_norm: float) -> io.NodeOutput:
        bounded, clamped = lora.bounded(max_norm)
        return io.NodeOutput(bounded, ui={"text": [f"{clamped} module update(s) scaled down to norm {max_norm}"]})
