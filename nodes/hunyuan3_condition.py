"""HYWUHunyuanImage3Condition: the HunyuanImage-3 MODEL reads a request -> HYWU_CONDITION for the official generator."""
from comfy_api.v0_0_2 import io

from hywu_core.comfyui.hunyuan3 import encode_condition

from .types import HYWUCondition


class HYWUHunyuanImage3Condition(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUHunyuanImage3Condition",
            display_name="HYWU Encode Condition (HunyuanImage-3)",
            category="HY-WU/HunyuanImage-3",
            description="HY-WU's condition on HunyuanImage-3.0-Instruct, as the official release computes it: the "
                        "backbone reads the whole request (system prompt, input images, instruction, CoT) and the "
                        "last decoder layer's hidden states, before the final norm, are the generator's input. "
                        "Feed it to HYWU Generate LoRA with the official generator.",
            inputs=[
                io.Model.Input("model", tooltip="the HunyuanImage-3 Loader's MODEL (without LoRA: the condition is "
                                                "read from the base model)"),
                io.Conditioning.Input("positive", tooltip="the HunyuanImage-3 Conditioning node's positive output: "
                                                          "the request the LoRA is generated for"),
            ],
            outputs=[HYWUCondition.Output(display_name="condition")],
        )

    @classmethod
    def execute(cls, model, positive) -> io.NodeOutput:
        return io.NodeOutput(encode_condition(model, positive))
