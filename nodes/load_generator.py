"""HYWULoadGenerator: a generator file from models/hywu (ours, or the official release folder)."""
from comfy_api.v0_0_2 import io

from hywu_core.comfyui.managed_generator import load_managed

from . import model_folders
from .devices import DEVICES, resolve_device
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
                                   tooltip="file or folder under models/hywu"),
                    io.Combo.Input("device", options=DEVICES, default="auto",
                                   tooltip="where the generator runs; auto: ComfyUI's compute device, the generator "
                                           "waiting on the offload device between runs")],
            outputs=[HYWUGenerator.Output(display_name="generator")],
        )

    @classmethod
    def execute(cls, generator: str, device: str = "auto") -> io.NodeOutput:
        path = model_folders.resolve_generator(generator)
        return io.NodeOutput(load_managed(path, resolve_device(device)))
