"""The shipped training configs parse and pass the config checks, and their [generator] sections build a
generator for the backbones they name, without loading any weights: the backbones are made on PyTorch's meta
device (structure only), the generators, freshly initialised, by the trainer's own Trainer._build_generator.

configs/train/hunyuan3_instruct.toml states sizes, checked against our HunyuanImage-3 port at the release's
shapes: an 82.6B-parameter backbone, LoRA on the qkv and o projections of all 32 layers, 9.4M generated values
per edit, a ~0.17B-parameter generator reading the 4096-wide condition the backbone itself computes.

configs/train/qwen_image_edit_2509.toml states sizes; they are checked against ComfyUI's own Qwen-Image
class (comfy.ldm.qwen_image, whose default configuration is Qwen-Image's): 20.4B backbone parameters (the
20.4 GB fp8 / 40.9 GB bf16 files it names), LoRA on the 8 attention projections (3072 -> 3072) of all 60 blocks,
47M generated LoRA parameters per edit, a ~0.17B-parameter generator (for a SigLIP2-so400m condition, 1152
wide), and the global batch of 32 = 8 GPUs x 1 sample x 4 accumulation micro-steps.
"""
from types import SimpleNamespace

import torch

from hywu_core.tiny_editor.backbone import DemoBackboneConfig
from hywu_core.train.config import load_config
from hywu_core.train.loop import Trainer

from .helpers import REPO

CONFIGS = REPO / "configs" / "train"


def meta_generator(config, diffusion_model, cond_dim: int, block_lists=None):
    """The generator Trainer.build would make for this config, backbone structure and condition width."""
    trainer = SimpleNamespace(config=config, encoder=SimpleNamespace(width=cond_dim),
                              backbone=SimpleNamespace(diffusion_model=diffusion_model, block_lists=block_lists))
    return Trainer._build_generator(trainer)


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_demo_config(comfy_lib):
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

    config = load_config(CONFIGS / "demo.toml")
    assert config.backbone.kind == "demo" and not config.backbone.checkpoint
    assert config.encoder.tiny == "siglip2" and not config.encoder.trainable
    assert config.output == REPO / "hywu_output" / "train" / "demo"
    assert config.path(config.data.folder) == REPO / "hywu_output" / "train" / "demo_data"
    assert config.data.procedural["kind"] == "brighten_darken"
    assert config.per_rank_micro_batch(1) == 8 and config.per_rank_micro_batch(2) == 4   # torchrun --nproc_per_node=2

    mmdit = OpenAISignatureMMDITWrapper(**DemoBackboneConfig(**config.backbone.demo).mmdit_config(),
                                        dtype=torch.float32, device="meta", operations=torch.nn)
    generator = meta_generator(config, mmdit, cond_dim=32)          # build_tiny_siglip2's default width
    assert generator.spec.num_layers == 3 and generator.rank == 8
    generator.spec.verify(mmdit)


def test_qwen_image_edit_config(comfy_lib):
    import comfy.ops
    import comfy.sd
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

    config = load_config(CONFIGS / "qwen_image_edit_2509.toml")
    b = config.backbone
    assert b.kind == "comfy" and b.edit == "qwen_image_edit_plus" and not b.checkpoint
    files = [b.diffusion_model, *b.text_encoders, b.vae]
    assert len(files) == 3 and all(name.endswith(".safetensors") for name in files)   # load_backbone reads no other
    assert config.path(b.diffusion_model).parent == REPO / "models" / "diffusion_models"
    assert config.path(b.text_encoders[0]).parent == REPO / "models" / "text_encoders"
    assert config.path(b.vae).parent == REPO / "models" / "vae"
    assert config.path(config.encoder.folder).parent == REPO / "models" / "hywu_encoders"
    assert comfy.sd.CLIPType[b.text_encoder_type.upper()] == comfy.sd.CLIPType.QWEN_IMAGE
    assert config.train.checkpointing == "both"
    assert config.per_rank_micro_batch(8) == 1

    model = QwenImageTransformer2DModel(dtype=torch.bfloat16, device="meta", operations=comfy.ops.disable_weight_init)
    assert round(parameters(model) / 1e9, 1) == 20.4
    generator = meta_generator(config, model, cond_dim=1152)
    spec = generator.spec
    assert spec.num_layers == 60 and all(len(block.modules) == 8 for block in spec.blocks)
    assert {(m.d_in, m.d_out) for block in spec.blocks for m in block.modules} == {(3072, 3072)}
    lora = sum(generator.rank * (m.d_in + m.d_out) for block in spec.blocks for m in block.modules)
    print(f"\nQwen-Image-Edit-2509 config: backbone {parameters(model) / 1e9:.2f}B parameters, {lora / 1e6:.1f}M "
          f"generated LoRA parameters per edit, generator {parameters(generator) / 1e9:.3f}B parameters")
    assert round(lora / 1e6) == 47
    assert round(parameters(generator) / 1e9, 2) == 0.17


def test_hunyuan3_instruct_config():
    from hywu_core.hunyuan3.memory import RELEASE_SHAPES
    from hywu_core.hunyuan3.model import HunyuanImage3Transformer
    from hywu_core.train.hunyuan3 import Hunyuan3Backbone

    config = load_config(CONFIGS / "hunyuan3_instruct.toml")
    assert config.backbone.kind == "hunyuan3" and config.encoder.backbone == "hunyuan3"
    assert config.path(config.backbone.folder).parent == REPO / "models" / "hunyuan3"
    assert config.backbone.weight_dtype == "fp8_e4m3fn" and config.per_rank_micro_batch(8) == 1
    with torch.device("meta"):
        model = HunyuanImage3Transformer(RELEASE_SHAPES)
    assert round(parameters(model) / 1e9, 1) == 82.6
    generator = meta_generator(config, model, cond_dim=RELEASE_SHAPES["hidden_size"],
                               block_lists=Hunyuan3Backbone.block_lists)
    spec = generator.spec
    assert spec.num_layers == 32 and all(len(block.modules) == 2 for block in spec.blocks)
    lora = sum(generator.rank * (m.d_in + m.d_out) for block in spec.blocks for m in block.modules)
    print(f"\nHunyuanImage-3.0-Instruct config: {lora / 1e6:.1f}M generated LoRA values per edit, generator "
          f"{parameters(generator) / 1e9:.3f}B parameters")
    assert round(lora / 1e6, 1) == 9.4
    assert round(parameters(generator) / 1e9, 2) == 0.17
