"""HYWULoadGenerator: a generator file from models/hywu (ours, or the official release folder)."""
from comfy_api.latest import io

from hywu_core.checkpoint import load_generator

from . import model_folders
from .types import HYWUGenerator


class HYWULoadGenerator(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWULoadGenerator",
            display_name="HYWU Load Generator",
            category="HY-WU",
            description="Load an HY-WU parameter generator (paper §3.5) from models/hywu: one .safetensors "
                        "file of ours, or the official release folder (config.json + model.safetensors).",
            inputs=[io.Combo.Input("generator", options=model_folders.generator_choices(),
                                   tooltip="file or folder under models/hywu")],
            outputs=[HYWUGenerator.Output(display_name="generator")],
        )

    @classmethod
    def execute(cls, generator: str) -> io.NodeOutput:
        return io.NodeOutput(load_generator(model_folders.resolve_generator(generator)))
