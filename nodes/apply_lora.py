"""HYWUApplyLoRA: inject generated LoRAs into a MODEL through ComfyUI's ModelPatcher (paper §3.2)."""
from comfy_api.v0_0_2 import io

from hywu_core.comfyui.lora_patch import MODES, apply

from .types import HYWULoRA


class HYWUApplyLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUApplyLoRA",
            display_name="HYWU Apply LoRA",
            category="HY-WU",
            description="Apply generated LoRAs to a model without changing it (other branches keep the base). "
                        "merge: one LoRA for the whole batch as weight patches, like the stock LoRA loaders. "
                        "dynamic: batch item i gets LoRA i (or one LoRA for every item), added in the forward pass, "
                        "correct under CFG. auto: merge when all items share one LoRA, dynamic otherwise.",
            inputs=[
                io.Model.Input("model"),
                HYWULoRA.Input("lora"),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01),
                io.Combo.Input("mode", options=list(MODES), default="auto"),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, lora, strength: float, mode: str = "auto") -> io.NodeOutput:
        return io.NodeOutput(apply(model, lora.bundle, strength, mode))
