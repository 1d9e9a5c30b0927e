"""HYWUHunyuanImage3CoT: HunyuanImage-3.0-Instruct writes its chain of thought for a request (STRING)."""
import comfy.utils
from comfy_api.v0_0_2 import io

from hywu_core.comfyui.hunyuan3 import generate_cot
from hywu_core.hunyuan3.cot import Sampling
from hywu_core.hunyuan3.images import image_from_tensor
from hywu_core.hunyuan3.system_prompts import DEFAULT, NAMES

from .hunyuan3_conditioning import IMAGES
from .types import Hunyuan3Encoder


class HYWUHunyuanImage3CoT(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUHunyuanImage3CoT",
            display_name="HunyuanImage-3 CoT",
            category="HY-WU/HunyuanImage-3",
            description="Let the model think before it draws: it writes <think>...</think> (in think mode) and "
                        "<recaption>a rewritten prompt</recaption>; feed the text to the Conditioning node's "
                        "cot_text. Greedy by default, as the official pipeline.",
            inputs=[
                io.Model.Input("model"),
                Hunyuan3Encoder.Input("encoder"),
                io.String.Input("prompt", multiline=True, default=""),
                *(io.Image.Input(name, optional=True) for name in IMAGES),
                io.Combo.Input("system_prompt", options=[n for n in NAMES if n not in ("custom", "dynamic")],
                               default=DEFAULT),
                io.Combo.Input("mode", options=["think", "recaption"], default="think",
                               tooltip="think: analyse, then rewrite the prompt; recaption: rewrite only"),
                io.Int.Input("max_new_tokens", default=1024, min=1, max=8192),
                io.Combo.Input("decoding", options=["greedy", "sample"], default="greedy"),
                io.Float.Input("temperature", default=0.6, min=0.01, max=2.0, step=0.01),
                io.Int.Input("top_k", default=0, min=0, max=1000, tooltip="0: no top-k cut"),
                io.Float.Input("top_p", default=0.95, min=0.01, max=1.0, step=0.01),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff,
                             tooltip="seeds sampling and the VAE's sampling of the input images"),
            ],
            outputs=[io.String.Output(display_name="cot_text")],
        )

    @classmethod
    def execute(cls, model, encoder, prompt: str, system_prompt: str, mode: str, max_new_tokens: int,
                decoding: str, temperature: float, top_k: int, top_p: float, seed: int, image_1=None, image_2=None,
                image_3=None) -> io.NodeOutput:
        images = [image_from_tensor(im[:1]) for im in (image_1, image_2, image_3) if im is not None]
        sampling = Sampling(temperature, top_k, top_p, seed) if decoding == "sample" else None
        bar = comfy.utils.ProgressBar(max_new_tokens)
        text = generate_cot(model, encoder, prompt, images, system_prompt=system_prompt, mode=mode,
                            max_new_tokens=max_new_tokens, sampling=sampling, seed=seed,
                            on_token=lambda done, total: bar.update_absolute(done, total))
        return io.NodeOutput(text)
