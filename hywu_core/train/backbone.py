"""The frozen backbone f_theta for on-the-fly training (§3.6), loaded through ComfyUI as a library.

kind "demo": the embedded tiny editor (hywu_core.tiny_editor.backbone), from a file or built from a seed
(then written to <output>/backbone.safetensors so the trained generator's backbone can be loaded
in ComfyUI). kind "comfy": the files the stock loaders read - a full checkpoint
(comfy.sd.load_checkpoint_guess_config, "Load Checkpoint") or a diffusion model + text encoders +
VAE (comfy.sd.load_diffusion_model / load_clip / comfy.sd.VAE, "Load Diffusion Model", "Load
CLIP", "Load VAE"). Only .safetensors files are read (no pickle).

How the source image enters the backbone (`edit`) is the stock conditioning node of its family:
  instruct_pix2pix      CLIPTextEncode + InstructPixToPixConditioning (channel concat; the demo)
  reference_latent      CLIPTextEncode + ReferenceLatent per image (FLUX Kontext style)
  qwen_image_edit_plus  TextEncodeQwenImageEditPlus with the source (+ up to 2 references)
Its text encoder and VAE stay frozen and run under no_grad; only the generated LoRA gets gradients.

ComfyUI facts used here:
- Layers from comfy.ops create their Parameters with requires_grad=True; load_models_gpu may
  re-create them (with requires_grad=False) when it patches; freeze() runs after loading.
- ComfyUI moves models between devices on demand (a text encoder may push the diffusion model off
  the GPU); the sampler reloads before it runs the model, and so does training (Backbone.load).
- TextEncodeQwenImageEditPlus resizes each image to ~384x384 for the vision tokens and ~1 MP
  for the reference latents, whatever the training resolution.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
from torch import Tensor

from hywu_core.comfyui.library import import_comfy
from hywu_core.tiny_editor.backbone import (
    DemoBackboneConfig,
    assemble_demo_backbone,
    build_demo_backbone,
    read_demo_checkpoint,
    save_demo_checkpoint,
)
from hywu_core.train.config import TrainConfig


class BackboneError(ValueError):
    """A backbone that cannot be loaded as configured; the message names the file or key and the fix."""


def _safetensors(config: TrainConfig, value: str, key: str) -> str:
    path = config.path(value)
    if not path.is_file():
        raise BackboneError(f"backbone.{key} = {value!r}: {path} does not exist")
    if path.suffix not in (".safetensors", ".sft"):
        raise BackboneError(f"backbone.{key} = {value!r}: only .safetensors files are read (no pickle); "
                            "use the model's safetensors release")
    return str(path)


class Backbone:
    """MODEL (ModelPatcher), CLIP and VAE of the frozen backbone, plus its edit conditioning."""

    block_lists = None   # derive_targets' block containers; None: the diffusion model's ModuleList children

    def __init__(self, model, clip, vae, edit: str, negative_prompt: str = ""):
        self.model, self.clip, self.vae = model, clip, vae
        self.edit = edit
        self.negative_prompt = negative_prompt
        self._text_cache: dict[str, list] = {}

    @property
    def diffusion_model(self) -> torch.nn.Module:
        return self.model.model.diffusion_model

    @property
    def model_sampling(self):
        """The backbone's own sampling parameterisation (comfy.model_sampling), object patches included."""
        return self.model.get_model_object("model_sampling")

    @property
    def device(self) -> torch.device:
        return self.model.load_device

    def load(self) -> "Backbone":
        """Put the diffusion model on its compute device (ComfyUI's loader) and freeze it.

        Called before every forward pass: encoding text with a large text encoder can make ComfyUI
        offload the diffusion model to free memory; when it is still loaded this is a cheap check."""
        import comfy.model_management

        comfy.model_management.load_models_gpu([self.model])
        self.freeze()
        return self

    def freeze(self) -> None:
        self.model.model.requires_grad_(False)

    def block_modules(self, spec) -> list[torch.nn.Module]:
        """The backbone's repeated blocks that hold LoRA targets (the units of gradient checkpointing)."""
        return [self.diffusion_model.get_submodule(block.prefix) for block in spec.blocks]

    def _text(self, text: str) -> list:
        """CLIPTextEncode's body, cached: the text encoder is frozen."""
        if text not in self._text_cache:
            self._text_cache[text] = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))
        return self._text_cache[text]

    @torch.no_grad()
    def conditioning(self, source: Tensor, instruction: str, references: list[Tensor] = ()) -> tuple[list, list, Tensor]:
        """(positive, negative, empty latent) for one edit, as the stock nodes of `edit` make them.

        source and references are IMAGE batches of one item (1, H, W, 3).
        """
        if self.edit == "instruct_pix2pix":
            from comfy_extras.nodes_ip2p import InstructPixToPixConditioning

            positive, negative, latent = InstructPixToPixConditioning.execute(
                self._text(instruction), self._text(self.negative_prompt), source, self.vae).result
            return positive, negative, latent["samples"]
        if self.edit == "reference_latent":
            from comfy_extras.nodes_edit_model import ReferenceLatent

            positive = self._text(instruction)
            for image in [source, *references]:
                positive = ReferenceLatent.execute(positive, {"samples": self.vae.encode(image[..., :3])}).result[0]
            return positive, self._text(self.negative_prompt), torch.zeros_like(self.vae.encode(source[..., :3]))
        if self.edit == "qwen_image_edit_plus":
            from comfy_extras.nodes_qwen import TextEncodeQwenImageEditPlus

            if len(references) > 2:
                raise BackboneError(f"qwen_image_edit_plus takes the source and at most 2 references, got "
                                    f"{len(references)} references")
            images = dict(zip(("image1", "image2", "image3"), [source, *references]))
            positive = TextEncodeQwenImageEditPlus.execute(self.clip, instruction, self.vae, **images).result[0]
            negative = TextEncodeQwenImageEditPlus.execute(self.clip, self.negative_prompt, self.vae, **images).result[0]
            return positive, negative, torch.zeros_like(self.vae.encode(source[..., :3]))
        raise BackboneError(f"unknown edit conditioning {self.edit!r}")

    @torch.no_grad()
    def latents(self, images: Tensor) -> Tensor:
        """IMAGE (N, H, W, 3) -> clean latents x0 in the diffusion model's space (VAEEncode, process_latent_in)."""
        return self.model.model.process_latent_in(self.vae.encode(images[..., :3])).float()


def load_backbone(config: TrainConfig, output: Path | None = None) -> Backbone:
    """The configured backbone, frozen, on ComfyUI's compute device."""
    import_comfy(config.run.device)
    b = config.backbone
    if b.kind == "hunyuan3":
        from hywu_core.train.hunyuan3 import load_hunyuan3_backbone

        return load_hunyuan3_backbone(config.path(b.folder), b.weight_dtype)
    if b.kind == "demo":
        if b.checkpoint:
            state_dict, demo_config = read_demo_checkpoint(config.path(b.checkpoint))
        else:
            try:
                demo_config = DemoBackboneConfig(**b.demo)
            except TypeError as error:
                raise BackboneError(f"backbone.demo: {error}; the keys are DemoBackboneConfig's fields") from error
            state_dict, demo_config = build_demo_backbone(seed=b.seed, config=demo_config)
            if output is not None:
                save_demo_checkpoint(output / "backbone.safetensors", state_dict, demo_config)
        model, clip, vae = assemble_demo_backbone(state_dict, demo_config)
    else:
        import comfy.sd
        import comfy.utils

        # comfy.sd.VAE given weights it does not recognise builds no model (first_stage_model None, a log
        # warning) instead of failing, and a checkpoint loader returns such a VAE for a checkpoint without VAE
        # weights; the stock loader nodes refuse it (throw_exception_if_invalid), and so does training. The VAE
        # file, the smallest, is read first: a wrong one is named before the large files load.
        if b.checkpoint:
            model, clip, vae = comfy.sd.load_checkpoint_guess_config(
                _safetensors(config, b.checkpoint, "checkpoint"), output_vae=True, output_clip=True)[:3]
            missing = [name for name, absent in (("text encoder", clip is None),
                                                 ("VAE", vae.first_stage_model is None)) if absent]
            if missing:
                raise BackboneError(f"backbone.checkpoint {b.checkpoint!r} holds no {' and no '.join(missing)}; name "
                                    "the files with backbone.diffusion_model + text_encoders + vae instead")
        else:
            clip_type = getattr(comfy.sd.CLIPType, b.text_encoder_type.upper(), None)
            if clip_type is None:
                raise BackboneError(f"backbone.text_encoder_type = {b.text_encoder_type!r} is not a ComfyUI CLIP type; "
                                    f"use one of {', '.join(t.name.lower() for t in comfy.sd.CLIPType)}")
            vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(_safetensors(config, b.vae, "vae"), safe_load=True))
            if vae.first_stage_model is None:
                raise BackboneError(f"backbone.vae = {b.vae!r}: ComfyUI recognises no VAE in this file; name a VAE "
                                    "file (models/vae, what the stock Load VAE node reads)")
            model = comfy.sd.load_diffusion_model(_safetensors(config, b.diffusion_model, "diffusion_model"),
                                                  model_options=_weight_dtype_options(b.weight_dtype))
            clip = comfy.sd.load_clip(ckpt_paths=[_safetensors(config, p, "text_encoders") for p in b.text_encoders],
                                      clip_type=clip_type)
    return Backbone(model, clip, vae, b.edit, b.negative_prompt).load()


def _weight_dtype_options(weight_dtype: str) -> dict:
    """model_options of the stock "Load Diffusion Model" node for its weight_dtype choice."""
    return {
        "default": {},
        "fp8_e4m3fn": {"dtype": torch.float8_e4m3fn},
        "fp8_e4m3fn_fast": {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True},
        "fp8_e5m2": {"dtype": torch.float8_e5m2},
        "bf16": {"dtype": torch.bfloat16},
        "fp16": {"dtype": torch.float16},
        "fp32": {"dtype": torch.float32},
    }[weight_dtype]


@contextlib.contextmanager
def checkpointed(modules):
    """Gradient checkpointing (§3.7) of each module: its forward runs under torch.utils.checkpoint
    (non-reentrant) by an instance-level forward override, removed on exit. Forward hooks inside
    the modules (the per-row LoRA) run again in the recomputation, so backward must happen inside
    whatever context registers them."""
    from torch.utils.checkpoint import checkpoint

    patched = []
    try:
        for module in modules:
            module.forward = functools.partial(checkpoint, type(module).forward.__get__(module), use_reentrant=False)
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward
