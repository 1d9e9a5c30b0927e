"""A content hash of a model's weights, to check that nothing leaked into a frozen backbone (docs/design.md, "Data flow").

    weights_fingerprint  SHA-256 of a module's tensors as they are now (a freshly loaded file, a test's reference)
    model_fingerprint    SHA-256 of a MODEL's diffusion weights as a consumer loading that MODEL sees them

ComfyUI facts model_fingerprint relies on (0.3.75):
- The shared nn.Module behind a ModelPatcher and its clones holds whatever the last loaded clone
  patched into it (ComfyUI keeps the last sampled patcher loaded), so hashing it directly tells
  what ran before, not what this MODEL is.
- comfy.model_management.load_models_gpu([model], force_patch_weights=True) loads `model` as a
  sampler would (restoring another clone's patches first) and writes every weight patch into the
  module's tensors, also for modules a low-VRAM load leaves offloaded; comfy.sd.save_checkpoint
  makes this same call before reading model.model's state dict. Newer ComfyUI releases (not
  0.3.75, so not tested here) turn on "dynamic VRAM" patchers by default, which keep weights out of
  the module until they are used, so there the raw module says even less; this function depends
  on that one load call only, the one ComfyUI's own checkpoint saving needs as well.
"""
from __future__ import annotations

import hashlib

import torch


def weights_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over a module's parameters and buffers (names, dtypes, shapes, bytes) as they are now."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model) -> str:
    """SHA-256 of `model`'s (a ModelPatcher's) diffusion weights with its own patches, as the next sampler sees them.

    Loads the MODEL through ComfyUI's loader first, as any consumer of it does (see the module
    docstring); equal to weights_fingerprint of a freshly loaded base model when `model` carries
    no weight patches, whatever other clones ran before."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model], force_patch_weights=True)
    return weights_fingerprint(model.model.diffusion_model)
