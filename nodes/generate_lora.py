"""HYWUGenerateLoRA: generator + condition -> one LoRA per batch item (paper §3.3-3.5)."""
from comfy_api.v0_0_2 import io

from hywu_core.comfyui.managed_generator import generate
from hywu_core.generated_lora import GenerationCache
from hywu_core.lora_tools import update_norms

from .types import HYWUCondition, HYWUGenerator, HYWULoRA

CACHE = GenerationCache()


def norms_summary(generated) -> dict:
    """Per-layer update norms for the node's display: the mean over items, and each item's."""
    norms = update_norms(generated.bundle).float().cpu()
    return {"layers": [block.prefix for block in generated.bundle.spec.blocks],
            "mean": [round(v, 6) for v in norms.mean(0).tolist()],
            "items": [[round(v, 6) for v in row] for row in norms.tolist()]}


class HYWUGenerateLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUGenerateLoRA",
            display_name="HYWU Generate LoRA",
            category="HY-WU",
            description="Write a fresh LoRA for each input (paper §3.3-3.5). Shows the per-layer update norms "
                        "after running; an unchanged input is not generated twice. The generator is loaded onto its "
                        "device only to run, and ComfyUI unloads it when sampling needs the memory.",
            inputs=[HYWUGenerator.Input("generator"), HYWUCondition.Input("condition")],
            outputs=[HYWULoRA.Output(display_name="lora")],
        )

    @classmethod
    def execute(cls, generator, condition) -> io.NodeOutput:
        generated = generate(generator, condition, cache=CACHE)
        summary = norms_summary(generated)
        text = "\n".join(f"{name}: {value:.4g}" for name, value in zip(summary["layers"], summary["mean"]))
        return io.NodeOutput(generated, ui={"hywu_norms": [summary],
                                            "text": [f"{generated.batch_size} LoRA(s), update norm per layer\n{text}"]})
