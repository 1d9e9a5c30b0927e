"""HYWUApplyLoRA: inject generated LoRAs into a MODEL through ComfyUI's ModelPatcher (§3.3)."""
import torch
from comfy_api.latest import io

from hywu_core.comfy_lora import apply_dynamic, apply_merge

from .types import HYWULoRA

MODES = ["auto", "merge", "dynamic"]


def shares_one_lora(bundle) -> bool:
    """True when every item of the batch holds the same LoRA (bitwise)."""
    return all(torch.equal(factors[path][0], factors[path][i])
               for factors in (bundle.A, bundle.B) for path in factors
               for i in range(1, bundle.batch_size))


class HYWUApplyLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUApplyLoRA",
            display_name="HYWU Apply LoRA",
            category="HY-WU",
            description="Apply generated LoRAs to a model without changing it (other branches keep the base). "
                        "merge: one LoRA for the whole batch as weight patches, like the stock LoRA loaders. "
                        "dynamic: batch item i gets LoRA i (i modulo the LoRA count), added in the forward pass, "
                        "correct under CFG. auto: merge when all items share one LoRA, dynamic otherwise.",
            inputs=[
                io.Model.Input("model"),
                HYWULoRA.Input("lora"),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01),
                io.Combo.Input("mode", options=MODES, default="auto"),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, lora, strength: float, mode: str = "auto") -> io.NodeOutput:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        if strength == 0:
            return io.NodeOutput(model)
        bundle = lora.bundle
        single = bundle.batch_size == 1 or shares_one_lora(bundle)
        if mode == "merge" and not single:
            raise ValueError(f"merge applies one LoRA to the whole batch, but this HYWU_LORA holds "
                             f"{bundle.batch_size} different LoRAs: use mode 'dynamic' (one LoRA per image), "
                             "or pick one with HYWU LoRA To LoRA Model / average them with HYWU Average LoRA")
        if mode == "merge" or (mode == "auto" and single):
            return io.NodeOutput(apply_merge(model, bundle, item=0, strength=strength))
        return io.NodeOutput(apply_dynamic(model, bundle, strength=strength))
