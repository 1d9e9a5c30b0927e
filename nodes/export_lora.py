"""Generated LoRAs as ordinary ComfyUI LoRAs: LORA_MODEL for the stock nodes, or a file in models/loras."""
import os

import folder_paths
from comfy_api.v0_0_2 import io

from hywu_core.lora_files import check_filename_prefix, comfy_state_dict, save_comfy_lora

from .types import HYWULoRA, LoraModel


class HYWULoRAToLoraModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWULoRAToLoraModel",
            display_name="HYWU LoRA To LoRA Model",
            category="HY-WU",
            description="One generated LoRA as ComfyUI's LORA_MODEL, for the stock 'Load LoRA Model' and "
                        "'Save LoRA Weights' nodes.",
            inputs=[HYWULoRA.Input("lora"),
                    io.Int.Input("index", default=0, min=0, max=4095, tooltip="which batch item's LoRA")],
            outputs=[LoraModel.Output(display_name="lora_model")],
        )

    @classmethod
    def execute(cls, lora, index: int) -> io.NodeOutput:
        return io.NodeOutput(comfy_state_dict(lora.bundle, lora.check_index(index)))


class HYWUSaveLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUSaveLoRA",
            display_name="HYWU Save LoRA",
            category="HY-WU",
            description="Freeze one generated LoRA into a standard LoRA .safetensors in models/loras, loadable by "
                        "the stock LoraLoader; the file records the generator, instruction and source image hash.",
            is_output_node=True,
            inputs=[HYWULoRA.Input("lora"),
                    io.Int.Input("index", default=0, min=0, max=4095, tooltip="which batch item's LoRA"),
                    io.String.Input("filename_prefix", default="hywu/hywu_lora",
                                    tooltip="path under models/loras; a counter is appended")],
            outputs=[io.String.Output(display_name="lora_name")],
        )

    @classmethod
    def execute(cls, lora, index: int, filename_prefix: str) -> io.NodeOutput:
        row = lora.check_index(index)
        check_filename_prefix(filename_prefix)
        loras_dir = os.path.abspath(folder_paths.get_folder_paths("loras")[0])
        try:
            folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, loras_dir)
        except Exception as error:
            raise ValueError(f"filename_prefix {filename_prefix!r} leaves the LoRA folder {loras_dir}: "
                             "use a relative path such as 'hywu/my_edit'") from error
        os.makedirs(folder, exist_ok=True)
        file_name = f"{name}_{counter:05}_.safetensors"
        save_comfy_lora(os.path.join(folder, file_name), lora.bundle, row, lora.items[row])
        relative = os.path.join(subfolder, file_name).replace(os.sep, "/")
        return io.NodeOutput(relative, ui={"text": [f"saved models/loras/{relative}"]})
