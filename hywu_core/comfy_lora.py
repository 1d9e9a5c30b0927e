"""Generated LoRAs on a ComfyUI MODEL, through its ModelPatcher (paper §3.3; DESIGN §2).

    apply_merge    one LoRA for the whole batch as ComfyUI weight patches: the stock LoRA loaders' path
    apply_dynamic  LoRA i for latent row i (i modulo the LoRA count), added in the forward pass

Both return a clone and never change the input patcher, so other branches of a graph keep the
base model. This is the module of hywu_core that imports comfy (inside the functions).

ComfyUI 0.3.75 facts this relies on:
- comfy.sd.load_lora_for_models builds its patches with comfy.lora.load_lora over the key map of
  comfy.lora.model_lora_keys_unet and adds them with ModelPatcher.add_patches; apply_merge does
  exactly that, so it matches LoraLoaderModelOnly on the exported file bit for bit.
- ComfyUI leaves the last sampled patcher loaded with its weight patches merged into the shared
  nn.Module; the base weights come back only when another clone is loaded. apply_merge therefore
  adds an ON_CLEANUP callback (run in CFGGuider.outer_sample's finally after every sampling run)
  that unloads the patcher through comfy.model_management as free_memory does: LoadedModel.
  model_unload() (ModelPatcher.detach -> unpatch_model restores the backed-up weights, then moves
  the model to its offload device) and removal from current_loaded_models. On a GPU the next run
  loads the weights again.
- calc_cond_batch stacks cond and uncond chunks in one model call; every chunk holds the whole
  latent batch (areas crop H/W only), and transformer_options["cond_or_uncond"] has one entry per
  chunk. So model-input row j is latent row j % (rows / chunks), whatever the chunking.
- WrappersMP.APPLY_MODEL wrappers registered on a patcher reach BaseModel.apply_model through
  transformer_options on every model call; apply_dynamic injects its forward hooks there, for
  the duration of the call only.
"""
from __future__ import annotations

import uuid

import torch

from .lora import LoRABundle
from .lora_inject import PerRowLoRA

DIFFUSION_PREFIX = "diffusion_model."


def verify_model(model, bundle: LoRABundle) -> None:
    """A clear error when the LoRA was generated for another backbone (names the first mismatches)."""
    bundle.spec.verify(model.model.diffusion_model)


def apply_merge(model, bundle: LoRABundle, item: int = 0, strength: float = 1.0):
    """A clone of `model` with LoRA `item` merged as weight patches; base weights restored after each run."""
    import comfy.lora
    import comfy.patcher_extension

    verify_model(model, bundle)
    state_dict = bundle.to_comfy_state_dict(item, prefix=DIFFUSION_PREFIX)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    patches = comfy.lora.load_lora(state_dict, key_map, log_missing=False)
    unmatched = sorted({k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in state_dict} -
                       {key for key in _loaded_lora_names(patches)})
    if unmatched:
        raise ValueError(f"ComfyUI's LoRA key map has no weight for {unmatched[:3]}: this model type does not "
                         "accept LoRA on those modules; use mode 'dynamic'")
    clone = model.clone()
    clone.add_patches(patches, strength)
    clone.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, f"hywu_merge_{uuid.uuid4().hex}",
                                unload_after_sampling)
    return clone


def _loaded_lora_names(patches: dict) -> set[str]:
    """The LoRA key stems (e.g. "diffusion_model.x.qkv") that comfy.lora turned into patches."""
    names = set()
    for adapter in patches.values():
        for key in getattr(adapter, "loaded_keys", ()):
            names.add(key.rsplit(".lora_", 1)[0].removesuffix(".alpha"))
    return names


def unload_after_sampling(patcher) -> None:
    """ON_CLEANUP: unload `patcher` the way comfy.model_management.free_memory does, restoring the base weights."""
    import comfy.model_management as mm

    for index, loaded in enumerate(mm.current_loaded_models):
        if loaded.model is patcher:
            if loaded.model_unload():
                mm.current_loaded_models.pop(index)
            return


def latent_rows(batch_rows: int, chunks: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """LoRA index of each model-input row: chunk-stacked latent rows, LoRA = latent row % count.

    Built on `device` (the model input's), so the forward hooks never copy indices host -> device."""
    if chunks < 1 or batch_rows % chunks:
        raise ValueError(f"model input of {batch_rows} rows does not split into {chunks} cond/uncond chunks")
    latent = torch.arange(batch_rows, device=device) % (batch_rows // chunks)
    return latent % count


def apply_dynamic(model, bundle: LoRABundle, strength: float = 1.0):
    """A clone of `model` that adds LoRA (latent row % N) to each latent row in the forward pass."""
    import comfy.patcher_extension

    verify_model(model, bundle)
    injection = PerRowLoRA(bundle, strength)
    count = bundle.batch_size

    def apply_model_wrapper(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        chunks = len(transformer_options.get("cond_or_uncond") or [0])
        model_rows = latent_rows(x.shape[0], chunks, count, x.device)
        folded: dict[int, torch.Tensor] = {}

        def rows(n: int) -> torch.Tensor:
            if n == model_rows.shape[0]:
                return model_rows
            if n % model_rows.shape[0] == 0:  # batch folded with frames or tokens, batch-major
                if n not in folded:
                    folded[n] = model_rows.repeat_interleave(n // model_rows.shape[0])
                return folded[n]
            raise ValueError(f"a LoRA-adapted layer saw {n} rows for a model batch of {model_rows.shape[0]}: "
                             "this model reshapes its batch in a way per-item LoRA cannot follow; use mode 'merge'")

        with injection.inject(executor.class_obj.diffusion_model, rows):
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    clone = model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, f"hywu_dynamic_{uuid.uuid4().hex}",
                               apply_model_wrapper)
    return clone
