"""The generator as a model ComfyUI's model management holds: run once per edit, then out of the sampler's way (§3.7).

    load_managed(path, load_device)   the generator file as a ModelPatcher (what HYWU_GENERATOR carries)
    generate(patcher, condition, cache)   the LoRAs, the generator loaded onto its device only to run

Like a text encoder in ComfyUI: the generator waits on the offload device; Generate LoRA loads it
through comfy.model_management.load_models_gpu, runs the NNT once and leaves it to ComfyUI, which
unloads it (free_memory, least recently used first) when loading the backbone for sampling needs
the room, and keeps it when both fit, so a GPU with room pays no transfer per prompt. With
HunyuanImage-3 in fp8 on one 80 GB GPU that release is what keeps the 15 GiB generator out of the
sampling peak (README memory table, "released"). A cached generation (same generator, same
condition) does not load it at all.

ComfyUI facts used (0.3.75):
- load_models_gpu frees memory only on non-CPU devices: on the CPU nothing is released, and nothing needs to be.
- Without force_full_load a model may be loaded partially (low VRAM), which only works for comfy.ops
  layers that cast their weights per call; the NNT is plain torch.nn, so it is always loaded in full.
- unet_offload_device() is the CPU unless ComfyUI runs with --highvram / --gpu-only (then the GPU: nothing moves).
- ModelPatcher sets bookkeeping attributes (device, model_loaded_weight_memory, ...) on the module it wraps.
"""
from __future__ import annotations

import torch

from hywu_core.condition import Condition
from hywu_core.generated_lora import GeneratedLoRA, GenerationCache, generate_lora
from hywu_core.generator_files import load_generator


def load_managed(path, load_device: torch.device):
    """A ModelPatcher around the generator at `path` (load_generator), read onto ComfyUI's offload device,
    that runs on `load_device`: in bfloat16 on a GPU that supports it (the release loads its generator with
    torch_dtype=bfloat16; our training autocasts the generator to bf16 on CUDA), as stored on the CPU."""
    import comfy.model_management as mm
    import comfy.model_patcher

    offload_device = load_device if load_device.type == "cpu" else mm.unet_offload_device()
    generator = load_generator(path, device=offload_device)
    if load_device.type != "cpu" and mm.should_use_bf16(load_device):
        generator = generator.to(torch.bfloat16)
    return comfy.model_patcher.ModelPatcher(generator, load_device=load_device, offload_device=offload_device)


def generate(patcher, condition: Condition, cache: GenerationCache | None = None) -> GeneratedLoRA:
    """generate_lora on the patcher's Generator, loaded onto its device by ComfyUI just before the NNT runs."""
    import comfy.model_management as mm

    return generate_lora(patcher.model, condition, cache=cache,
                         before_run=lambda: mm.load_models_gpu([patcher], force_full_load=True))
