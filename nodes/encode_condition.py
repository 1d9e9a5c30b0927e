"""HYWUEncodeCondition: source images + instruction (+ reference images) -> HYWU_CONDITION (§3.3)."""
from comfy_api.v0_0_2 import io

from hywu_core.condition import encode_condition

from .types import HYWUCondition, HYWUEncoder

REFERENCES = ("reference_1", "reference_2", "reference_3")


class HYWUEncodeCondition(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUEncodeCondition",
            display_name="HYWU Encode Condition",
            category="HY-WU",
            description="U = [image tokens ; text tokens] for each image of the batch (paper §3.3). One instruction "
                        "applies to every image; for a batch, one line per image gives each its own. Reference "
                        "images serve multi-image edits ('use image 1 as the base, take the outfit from image 2').",
            inputs=[
                HYWUEncoder.Input("encoder"),
                io.Image.Input("image", tooltip="the source image(s); each batch item gets its own LoRA"),
                io.String.Input("instruction", multiline=True, default="",
                                tooltip="the edit instruction; for a batch of N images, one line each or one line "
                                        "for all"),
                *(io.Image.Input(name, optional=True,
                                 tooltip="an extra reference image: 1 image for the whole batch, or one per item")
                  for name in REFERENCES),
            ],
            outputs=[HYWUCondition.Output(display_name="condition")],
        )

    @classmethod
    def execute(cls, encoder, image, instruction: str, reference_1=None, reference_2=None,
                reference_3=None) -> io.NodeOutput:
        references = [r for r in (reference_1, reference_2, reference_3) if r is not None]
        return io.NodeOutput(encode_condition(encoder, image, instruction, references))
