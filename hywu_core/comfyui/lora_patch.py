"""Generated LoRAs on a ComfyUI MODEL, through its ModelPatcher (paper §3.2; docs/design.md, "ComfyUI facts").

    apply          the Apply node's rule: "merge", "dynamic", or "auto" (merge when every item
                   holds the same LoRA, dynamic otherwise)
    apply_merge    one LoRA for the whole batch as ComfyUI weight patches: the stock LoRA loaders' path
    apply_dynamic  LoRA i for latent row i (or one LoRA for every row), added in the forward pass

Both return a clone and never change the input patcher, so other branches of a graph keep the
base model: whatever ran before, a consumer of the input MODEL samples its base weights. This is
the module of hywu_core that imports comfy (inside the functions).

ComfyUI 0.3.75 facts this relies on:
- comfy.sd.load_lora_for_models builds its patches with comfy.lora.load_lora over the key map of
  comfy.lora.model_lora_keys_unet and adds them with ModelPatcher.add_patches; apply_merge does
  exactly that, so it matches LoraLoaderModelOnly on the exported file bit for bit. load_lora
  tries every weight adapter class on every key map entry (the whole model's, ~4000 string
  lookups on the demo backbone); apply_merge passes only the entries its LoRA names.
- Loading is left to ComfyUI, as for a stock LoRA: the last sampled patcher stays loaded with its
  patches merged into the shared nn.Module, and the next consumer gets its own weights when
  comfy.model_management loads it (clones share one weight backup; ModelPatcher.partially_load
  restores the backed-up base weights when the module holds another clone's patches_uuid, then
  patches its own). So the shared module may hold a merged LoRA between prompts: read weights
  through the loader (fingerprint.model_fingerprint), never from the module directly.
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

from hywu_core.checks import finite
from hywu_core.lora import LoRABundle
from hywu_core.lora_inject import PerRowLoRA

DIFFUSION_PREFIX = "diffusion_model."
MODES = ("auto", "merge", "dynamic")


def bound_to(model, bundle: LoRABundle) -> LoRABundle:
    """The bundle on this model's modules: expert groups named by sub weight (the official release's) bound to the
    model's expert Linears as the model declares them (`expert_lora_slots`, targets.bind_expert_groups), then
    checked, with a clear error naming the first mismatches when the LoRA was generated for another backbone."""
    diffusion = model.model.diffusion_model
    bundle = bundle.bound(getattr(diffusion, "expert_lora_slots", None))
    bundle.spec.verify(diffusion)
    return bundle


def apply_merge(model, bundle: LoRABundle, item: int = 0, strength: float = 1.0):
    """A clone of `model` with LoRA `item` as weight patches, loaded and unloaded by ComfyUI like a stock LoRA."""
    import comfy.lora

    state_dict = bound_to(model, bundle).to_comfy_state_dict(item, prefix=DIFFUSION_PREFIX)
    stems = {k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in state_dict}
    # load_lora tries every weight adapter on every key map entry: only ours can match, so only ours go in
    key_map = {k: v for k, v in comfy.lora.model_lora_keys_unet(model.model, {}).items() if k in stems}
    patches = comfy.lora.load_lora(state_dict, key_map, log_missing=False)
    unmatched = sorted(stems - _loaded_lora_names(patches))
    if unmatched:
        raise ValueError(f"ComfyUI's LoRA key map has no weight for {unmatched[:3]}: this model type does not "
                         "accept LoRA on those modules; use mode 'dynamic'")
    clone = model.clone()
    clone.add_patches(patches, strength)
    return clone


def _loaded_lora_names(patches: dict) -> set[str]:
    """The LoRA key stems (e.g. "diffusion_model.x.qkv") that comfy.lora turned into patches."""
    names = set()
    for adapter in patches.values():
        for key in getattr(adapter, "loaded_keys", ()):
            names.add(key.rsplit(".lora_", 1)[0].removesuffix(".alpha"))
    return names


def latent_rows(batch_rows: int, chunks: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """LoRA index of each model-input row: chunk-stacked latent rows, LoRA = latent row (or 0 for one LoRA).

    The latent batch is batch_rows / chunks; `count` LoRAs must be 1 or that batch, anything else
    would silently reuse or drop LoRAs. Built on `device` (the model input's), so the forward hooks
    never copy indices host -> device."""
    if chunks < 1 or batch_rows % chunks:
        raise ValueError(f"model input of {batch_rows} rows does not split into {chunks} cond/uncond chunks")
    batch = batch_rows // chunks
    if count not in (1, batch):
        raise ValueError(f"dynamic mode got {count} LoRAs for a latent batch of {batch}: give one LoRA per latent "
                         f"(encode the {batch} images the sampler edits) or a single LoRA for all")
    latent = torch.arange(batch_rows, device=device) % batch
    return latent % count


def apply_dynamic(model, bundle: LoRABundle, strength: float = 1.0):
    """A clone of `model` that adds LoRA i to latent row i (one LoRA: to every row) in the forward pass."""
    import comfy.patcher_extension

    injection = PerRowLoRA(bound_to(model, bundle), strength)
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


def shares_one_lora(bundle: LoRABundle) -> bool:
    """True when every item of the batch holds the same LoRA (bitwise)."""
    return all(torch.equal(factors[path][0], factors[path][i])
               for factors in (bundle.A, bundle.B) for path in factors
               for i in range(1, bundle.batch_size))


def apply(model, bundle: LoRABundle, strength: float = 1.0, mode: str = "auto"):
    """A clone of `model` with the generated LoRAs applied by `mode`; strength 0 returns `model` itself.

    merge is exact and free per step but holds one LoRA for the batch; dynamic holds one per item
    (§3.2, §3.7); auto merges when that loses nothing, i.e. when all items share one LoRA.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    strength = finite(strength, "strength")
    if strength == 0:
        return model
    single = bundle.batch_size == 1 or shares_one_lora(bundle)
    if mode == "merge" and not single:
        raise ValueError(f"merge applies one LoRA to the whole batch, but this HYWU_LORA holds "
                         f"{bundle.batch_size} different LoRAs: use mode 'dynamic' (one LoRA per image), "
                         "or pick one with HYWU LoRA To LoRA Model / average them with HYWU Average LoRA")
    if mode == "merge" or (mode == "auto" and single):
        return apply_merge(model, bundle, item=0, strength=strength)
    return apply_dynamic(model, bundle, strength=strength)
