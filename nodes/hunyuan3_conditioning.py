"""HYWUHunyuanImage3Conditioning: prompt + up to three images + CoT text -> positive, negative, latent."""
from comfy_api.v0_0_2 import io

from hywu_core.comfyui.hunyuan3 import conditioning
from hywu_core.hunyuan3.images import image_from_tensor
from hywu_core.hunyuan3.system_prompts import DEFAULT, NAMES

from .types import Hunyuan3Encoder

IMAGES = ("image_1", "image_2", "image_3")


class HYWUHunyuanImage3Conditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUHunyuanImage3Conditioning",
            display_name="HunyuanImage-3 Conditioning",
            category="HY-WU/HunyuanImage-3",
            description="Lay out one HunyuanImage-3 request as the model reads it: system prompt, the input images "
                        "(VAE and ViT tokens), the instruction and the CoT text, plus its unconditional twin "
                        "(prompt and CoT replaced by <cfg>). The latent has the generated image's size.",
            inputs=[
                Hunyuan3Encoder.Input("encoder"),
                io.String.Input("prompt", multiline=True, default="", tooltip="the instruction or image description"),
                *(io.Image.Input(name, optional=True, tooltip="an input image (the first image of a batch is used)")
                  for name in IMAGES),
                io.String.Input("cot_text", multiline=True, default="", optional=True,
                                tooltip="the model's thinking / rewritten prompt, e.g. from HunyuanImage-3 CoT "
                                        "(<think>...</think><recaption>...</recaption>); empty: none"),
                io.Combo.Input("system_prompt", options=[n for n in NAMES if n not in ("custom", "dynamic")],
                               default=DEFAULT),
                io.String.Input("image_size", default="auto",
                                tooltip="'auto' (the first input image's ratio), 'HxW' such as '1024x1024', or "
                                        "'W:H'; snapped to the nearest of the model's ratio buckets"),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff,
                             tooltip="seeds the VAE's sampling of the input images; HunyuanImage-3 Noise replays it "
                                     "for the initial noise, as the release does"),
            ],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative"),
                     io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, encoder, prompt: str, system_prompt: str, image_size: str, seed: int, image_1=None,
                image_2=None, image_3=None, cot_text: str = "") -> io.NodeOutput:
        images = [image_from_tensor(im[:1]) for im in (image_1, image_2, image_3) if im is not None]
        prepared = encoder.prepare(prompt, images, cot_text=cot_text or None, system_prompt=system_prompt,
                                   image_size=image_size, seed=seed)
        return io.NodeOutput(*conditioning(prepared))
