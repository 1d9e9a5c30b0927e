"""HYWUHunyuanImage3Loader: a HunyuanImage-3.0-Instruct folder -> MODEL, HUNYUAN3_ENCODER, VAE.

The folder is the Hugging Face download as is (config.json, generation_config.json, sharded safetensors +
index, tokenizer files), placed (or linked) under models/hunyuan3 or a `hunyuan3:` entry of
extra_model_paths.yaml.
"""
from comfy_api.v0_0_2 import io

from hywu_core.comfyui.hunyuan3 import WEIGHT_DTYPES, Hunyuan3Encoder, load_model, load_vae, sampling_defaults
from hywu_core.hunyuan3.config import open_folder

from .model_folders import hunyuan3_choices, resolve_hunyuan3
from .types import Hunyuan3Encoder as Hunyuan3EncoderType


class HYWUHunyuanImage3Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUHunyuanImage3Loader",
            display_name="HunyuanImage-3 Loader",
            category="HY-WU/HunyuanImage-3",
            description="Load HunyuanImage-3.0-Instruct from its Hugging Face folder under models/hunyuan3: the "
                        "MoE transformer as a MODEL (sampled by the stock samplers), the request encoder "
                        "(tokenizer, ViT, VAE encoder), the VAE, and the folder's step count and guidance scale "
                        "(generation_config.json; the flow shift is built into the model).",
            inputs=[
                io.Combo.Input("model_folder", options=hunyuan3_choices(),
                               tooltip="a folder under models/hunyuan3 holding config.json and the weights"),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="how the transformer's weights are stored; fp8_e4m3fn halves bf16's memory"),
            ],
            outputs=[io.Model.Output(display_name="model"), Hunyuan3EncoderType.Output(display_name="encoder"),
                     io.Vae.Output(display_name="vae"),
                     io.Int.Output(display_name="steps", tooltip="diff_infer_steps of generation_config.json"),
                     io.Float.Output(display_name="guidance",
                                     tooltip="diff_guidance_scale of generation_config.json (the CFG scale)")],
        )

    @classmethod
    def execute(cls, model_folder: str, weight_dtype: str) -> io.NodeOutput:
        folder = open_folder(str(resolve_hunyuan3(model_folder)))
        steps, guidance = sampling_defaults(folder)
        return io.NodeOutput(load_model(folder, weight_dtype), Hunyuan3Encoder(folder), load_vae(folder), steps,
                             guidance)
