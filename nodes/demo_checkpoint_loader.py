"""HYWUDemoCheckpointLoader: the embedded demo family's backbone file (MODEL, CLIP, VAE).

The stock CheckpointLoaderSimple cannot load this family: ComfyUI's model detection takes any
MMDiT for SD3 with 16 latent channels (see hywu_core/tiny_editor/backbone.py).
"""
import folder_paths
from comfy_api.v0_0_2 import io

from hywu_core.tiny_editor.backbone import load_demo_checkpoint


class HYWUDemoCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUDemoCheckpointLoader",
            display_name="HYWU Demo Checkpoint Loader",
            category="HY-WU",
            description="Load the tiny pixel-space demo editor (MMDiT + text encoder + pixel-space VAE) from "
                        "models/checkpoints.",
            inputs=[io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list("checkpoints"))],
            outputs=[io.Model.Output(display_name="model"), io.Clip.Output(display_name="clip"),
                     io.Vae.Output(display_name="vae")],
        )

    @classmethod
    def execute(cls, ckpt_name: str) -> io.NodeOutput:
        return io.NodeOutput(*load_demo_checkpoint(folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)))
