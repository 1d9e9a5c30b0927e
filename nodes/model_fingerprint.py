"""HYWUModelFingerprint: a hash of a backbone's weights exactly as they sit in memory now.

It reads model.model.diffusion_model's tensors without loading or patching the model, so it
shows whether any LoRA was left merged into the shared weights after earlier prompts (docs/design.md,
"Data flow": after a prompt the weights are exactly the base weights again).

It runs on every prompt, even when its input is the unchanged MODEL of a cached loader.
ComfyUI 0.3.75 facts: a node's cache key holds fingerprint_inputs' value (V1's IS_CHANGED,
read by execution.IsChangedCache), so a value never returned before forces a run;
not_idempotent only adds the node id to the key, which leaves a cached loader's MODEL cached.
"""
import itertools

from comfy_api.latest import io

from hywu_core.comfyui.fingerprint import weights_fingerprint

RUNS = itertools.count()


class HYWUModelFingerprint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUModelFingerprint",
            display_name="HYWU Model Fingerprint",
            category="HY-WU/diagnostics",
            description="SHA-256 of the diffusion model's weights as they are in memory (patches not applied): "
                        "equal to the freshly loaded model's when no LoRA leaked into the backbone. Runs on "
                        "every prompt.",
            is_output_node=True,
            inputs=[io.Model.Input("model")],
            outputs=[io.String.Output(display_name="sha256")],
        )

    @classmethod
    def fingerprint_inputs(cls, **inputs) -> int:
        """A value never returned before, so ComfyUI's cache never answers for this node."""
        return next(RUNS)

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        digest = weights_fingerprint(model.model.diffusion_model)
        return io.NodeOutput(digest, ui={"text": [digest]})
