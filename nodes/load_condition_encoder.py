"""HYWULoadConditionEncoder: a transformers dual encoder folder from models/hywu_encoders (§3.3)."""
from comfy_api.v0_0_2 import io

from hywu_core.encoders import load_condition_encoder

from . import model_folders
from .devices import DEVICES, DTYPE_CHOICES, resolve_device, resolve_dtype
from .types import HYWUEncoder


class HYWULoadConditionEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWULoadConditionEncoder",
            display_name="HYWU Load Condition Encoder",
            category="HY-WU",
            description="Load the image+text encoder whose features condition the generator (paper §3.3): a "
                        "transformers SigLIP2 (as in the paper), SigLIP or CLIP folder under models/hywu_encoders.",
            inputs=[
                io.Combo.Input("encoder", options=model_folders.encoder_choices(),
                               tooltip="a folder under models/hywu_encoders (config.json, model.safetensors, "
                                       "tokenizer and image processor files)"),
                io.Combo.Input("device", options=DEVICES, default="auto",
                               tooltip="auto: ComfyUI's compute device"),
                io.Combo.Input("dtype", options=DTYPE_CHOICES, default="auto",
                               tooltip="auto: float32 on the CPU, bfloat16 on a GPU that supports it"),
            ],
            outputs=[HYWUEncoder.Output(display_name="encoder")],
        )

    @classmethod
    def execute(cls, encoder: str, device: str = "auto", dtype: str = "auto") -> io.NodeOutput:
        folder = model_folders.resolve_encoder(encoder)
        target = resolve_device(device)
        return io.NodeOutput(load_condition_encoder(folder, device=target, dtype=resolve_dtype(dtype, target)))
