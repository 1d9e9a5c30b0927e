"""HYWUModelFingerprint: a hash of a MODEL's diffusion weights as a consumer loading that MODEL sees them.

It loads the MODEL through ComfyUI's loader, as the next sampler would, and hashes the weights
with the MODEL's own patches (hywu_core.comfyui.fingerprint.model_fingerprint): on the loader's
base MODEL it equals the freshly loaded file's hash whenever no LoRA leaked into what later
consumers get (docs/design.md, "Data flow"), whatever HY-WU or stock LoRA prompts ran before.

It runs on every prompt, even when its input is the unchanged MODEL of a cached loader.
ComfyUI 0.3.75 facts: a node's cache key holds fingerprint_inputs' value (V1's IS_CHANGED,
read by execution.IsChangedCache), so a value never returned before forces a run;
not_idempotent only adds the node id to the key, which leaves a cached loader's MODEL cached.
"""
import itertools

from comfy_api.v0_0_2 import io

from hywu_core.comfyui.fingerprint import model_fingerprint

RUNS = itertools.count()


class HYWUModelFingerprint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUModelFingerprint",
            display_name="HYWU Model Fingerprint",
            category="HY-WU/diagnostics",
            description="SHA-256 of the diffusion model's weights as a sampler using this MODEL gets them "
                        "(loaded through ComfyUI, with this MODEL's own patches): on a loader's MODEL, equal to "
                        "the freshly loaded file's when no LoRA leaked from earlier prompts. Runs on every prompt.",
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
        digest = model_fingerprint(model)
        return io.NodeOutput(digest, ui={"text": [digest]})
