"""HYWUSaveCondition: a HYWU_CONDITION as a condition file in the output folder (what generate-lora reads)."""
import folder_paths
from comfy_api.v0_0_2 import io

from hywu_core.condition import save_condition_file

from .save_paths import numbered_file, output_file_ref
from .types import HYWUCondition


class HYWUSaveCondition(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUSaveCondition",
            display_name="HYWU Save Condition",
            category="HY-WU",
            description="Write the generator's input to the output folder: 'condition' (batch, tokens, width) and "
                        "'condition_mask'. `./hywu generate-lora --condition FILE` reads it back.",
            is_output_node=True,
            inputs=[HYWUCondition.Input("condition"),
                    io.String.Input("filename_prefix", default="hywu/hywu_condition",
                                    tooltip="path under the output folder; a counter is appended")],
            outputs=[],
        )

    @classmethod
    def execute(cls, condition, filename_prefix: str) -> io.NodeOutput:
        path, relative = numbered_file(filename_prefix, folder_paths.get_output_directory(), "output folder")
        save_condition_file(path, condition)
        return io.NodeOutput(ui={"hywu_files": [output_file_ref(relative)], "text": [f"saved output/{relative}"]})
