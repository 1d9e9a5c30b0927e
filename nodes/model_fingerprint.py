"""HYWUModelFingerprint: a hash of a backbone's weights exactly as they sit in memory now.

It reads model.model.diffusion_model's tensors without loading or patching the model, so it
shows whether any LoRA was left merged into the shared weights after earlier prompts (DESIGN
§2: after a prompt the weights are exactly the base weights again).
"""
from comfy_api.latest import io

from hywu_core.fingerprint import weights_fingerprint


class HYWUModelFingerprint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUModelFingerprint",
            display_name="HYWU Model Fingerprint",
            category="HY-WU/diagnostics",
            description="SHA-256 of the diffusion model's weights as they are in memory (patches not applied): "
                        "equal to the freshly loaded model's when no LoRA leaked into the backbone.",
            is_output_node=True,
            not_idempotent=True,
            inputs=[io.Model.Input("model")],
            outputs=[io.String.Output(display_name="sha256")],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        digest = weights_fingerprint(model.model.diffusion_model)
        return io.NodeOutput(digest, ui={"text": [digest]})
