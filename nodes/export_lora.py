"""Generated LoRAs as files: ComfyUI LoRAs (LORA_MODEL for the stock nodes, or a file in models/loras), or the
official release's output dict in the output folder."""
import folder_paths
from comfy_api.v0_0_2 import io

from hywu_core.lora_files import comfy_state_dict, save_comfy_lora, save_official_lora

from .save_paths import numbered_file, output_file_ref
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
        path, relative = numbered_file(filename_prefix, folder_paths.get_folder_paths("loras")[0], "LoRA folder")
        save_comfy_lora(path, lora.bundle, row, lora.items[row])
        return io.NodeOutput(relative, ui={"text": [f"saved models/loras/{relative}"]})


class HYWUSaveOfficialLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUSaveOfficialLoRA",
            display_name="HYWU Save LoRA (official format)",
            category="HY-WU",
            description="Write the whole batch of generated LoRAs to the output folder in the official release's "
                        "key names ('<module>.lora_A' / '.lora_B' with the batch axis first, and 'scale'), as "
                        "`./hywu generate-lora --format official` does: for inspection and other tools, not for "
                        "LoraLoader.",
            is_output_node=True,
            inputs=[HYWULoRA.Input("lora"),
                    io.String.Input("filename_prefix", default="hywu/hywu_lora_official",
                                    tooltip="path under the output folder; a counter is appended")],
            outputs=[],
        )

    @classmethod
    def execute(cls, lora, filename_prefix: str) -> io.NodeOutput:
        path, relative = numbered_file(filename_prefix, folder_paths.get_output_directory(), "output folder")
        save_official_lora(path, lora.bundle)
        return io.NodeOutput(ui={"hywu_files": [output_file_ref(relative)], "text": [f"saved output/{relative}"]})
