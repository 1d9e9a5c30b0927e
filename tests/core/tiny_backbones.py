"""Tiny backbones for the target/tokenizer/LoRA tests, and random LoRA bundles over their specs.

`build(name)` makes a random-weight diffusion model from ComfyUI's own classes (CPU, float32);
it needs `comfy` importable (use the `comfy_lib` fixture first). `TinyMoE` is a synthetic
backbone with grouped experts (none of ComfyUI's image models has MoE layers).
"""
import torch
from torch import nn

from hywu_core.lora import LoRABundle, factor_shapes

ARCHITECTURES = ("sd15", "sdxl", "sd3", "flux", "qwen_image", "wan21", "lumina2", "hunyuan_image21")


def build(name: str) -> torch.nn.Module:
    """A tiny `name` backbone with seeded random weights (ComfyUI's ops leave them uninitialised)."""
    model = _construct(name)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


def _construct(name: str) -> torch.nn.Module:
    import comfy.ops

    kw = dict(dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    if name == "sd15":
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        return UNetModel(image_size=32, in_channels=4, model_channels=32, out_channels=4, num_res_blocks=1,
                         channel_mult=(1, 2), num_heads=2, num_head_channels=-1, use_spatial_transformer=True,
                         transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1],
                         transformer_depth_middle=1, context_dim=24, **kw)
    if name == "sdxl":
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        return UNetModel(image_size=32, in_channels=4, model_channels=32, out_channels=4, num_res_blocks=1,
                         channel_mult=(1, 2, 2), num_head_channels=16, use_spatial_transformer=True,
                         transformer_depth=[0, 1, 2], transformer_depth_output=[0, 0, 1, 1, 2, 2],
                         transformer_depth_middle=1, context_dim=48, use_linear_in_transformer=True,
                         adm_in_channels=40, num_classes="sequential", **kw)
    if name == "sd3":
        from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

        return MMDiT(**SD3_UNET_CONFIG, **kw)
    if name == "flux":
        from comfy.ldm.flux.model import Flux

        return Flux(in_channels=4, out_channels=4, vec_in_dim=16, context_in_dim=24, hidden_size=32, mlp_ratio=2.0,
                    num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[4, 6, 6], theta=10000, patch_size=2,
                    qkv_bias=True, guidance_embed=False, **kw)
    if name == "qwen_image":
        from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

        return QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                           axes_dims_rope=(4, 6, 6), **kw)
    if name == "wan21":
        from comfy.ldm.wan.model import WanModel

        return WanModel(model_type="t2v", dim=32, ffn_dim=64, freq_dim=16, text_dim=24, in_dim=4, out_dim=4,
                        num_heads=2, num_layers=2, **kw)
    if name == "lumina2":
        from comfy.ldm.lumina.model import NextDiT

        return NextDiT(patch_size=2, in_channels=4, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=1,
                       multiple_of=16, ffn_dim_multiplier=2.0, cap_feat_dim=24, axes_dims=(4, 6, 6),
                       axes_lens=(1, 16, 16), **kw)
    if name == "hunyuan_image21":
        # ComfyUI 0.3.75: model_base.HunyuanImage21 uses comfy.ldm.hunyuan_video.model.HunyuanVideo.
        from comfy.ldm.hunyuan_video.model import HunyuanVideo

        return HunyuanVideo(image_model="hunyuan_video", in_channels=4, out_channels=4, vec_in_dim=None,
                            context_in_dim=24, hidden_size=32, mlp_ratio=2.0, num_heads=2, depth=2,
                            depth_single_blocks=2, axes_dim=[4, 6, 6], theta=256, patch_size=[1, 1], qkv_bias=True,
                            guidance_embed=False, byt5=False, meanflow=False, use_cond_type_embedding=False,
                            vision_in_dim=None, **kw)
    raise ValueError(f"unknown tiny backbone {name!r}")


SD3_UNET_CONFIG = dict(patch_size=2, in_channels=4, depth=2, adm_in_channels=16, pos_embed_max_size=8,
                       num_patches=64, context_embedder_config={
                           "target": "torch.nn.Linear", "params": {"in_features": 24, "out_features": 128}})


class TinyMoE(nn.Module):
    """`layers` of (attn.qkv, mlp.experts.{e}.w1/w2/w3, mlp.gate), like HunyuanImage-3's MoE blocks."""

    def __init__(self, dim=8, hidden=12, experts=3, depth=2):
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.layers = nn.ModuleList(_MoEBlock(dim, hidden, experts) for _ in range(depth))


class _MoEBlock(nn.Module):
    def __init__(self, dim, hidden, experts):
        super().__init__()
        self.attn = nn.ModuleDict({"qkv": nn.Linear(dim, 3 * dim)})
        self.mlp = nn.Module()
        self.mlp.experts = nn.ModuleList(
            nn.ModuleDict({"w1": nn.Linear(dim, hidden), "w2": nn.Linear(hidden, dim), "w3": nn.Linear(dim, hidden)})
            for _ in range(experts))
        self.mlp.gate = nn.Linear(dim, experts)


def random_bundle(spec, rank=4, batch=2, alpha=8.0, seed=0, dtype=torch.float32) -> LoRABundle:
    """A bundle of standard-normal factors (B not zero, so every element is distinguishable)."""
    g = torch.Generator().manual_seed(seed)
    A, B = {}, {}
    for path, module in spec.items():
        shape_a, shape_b = factor_shapes(module, rank)
        A[path] = torch.randn(batch, *shape_a, generator=g).to(dtype)
        B[path] = torch.randn(batch, *shape_b, generator=g).to(dtype)
    return LoRABundle(spec, rank, alpha, A, B)
