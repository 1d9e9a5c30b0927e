"""HunyuanImage3Transformer: one denoising step of HunyuanImage-3.0 over a prepared token sequence.

The image is generated inside the language model's own sequence. A step:

    h            = wte(input_ids)                                          text and special tokens
    h[cond VAE]  = patch_embed(cond latent, time_embed(0))                  each input image, clean (t = 0)
    h[cond ViT]  = aligner(ViT(image))                                      precomputed, StepInputs.vit_embeds
    h[image]     = patch_embed(x_t, time_embed(t));  h[<timestep>] = timestep_emb(t)
    out          = trunk(h, mask, 2D rope)                                  causal text, bidirectional image blocks
    v            = final_layer(out[image], time_embed_2(t))                 the last layer's output, before ln_f

Everything but the generated image's `<timestep>` and image tokens is the same at every step, and the
mask hides those tokens from everything before them, so the attention keys and values of the rest are
computed once per sampling run and reused (the release does the same): `denoise(..., run=...)` keeps
them for as long as `run` (any object naming one sampling run) and the rows' keys stay the same. A new
run recomputes them, which is what makes the cache safe under weight patches: ComfyUI changes a
model's patches (a LoRA, HY-WU's per-edit LoRA) only between sampling runs.

The module holds the checkpoint's `model.*` (the decoder trunk), `lm_head` and the image-side modules
under their original key names; the VAE and the vision tower are separate modules (they run before
sampling).
"""
import torch
from torch import nn

from hywu_core.hunyuan3.decoder import (
    DecoderTrunk,
    KVCache,
    build_lm_head,
    gather_tokens,
)
from hywu_core.hunyuan3.image_embed import image_modules
from hywu_core.hunyuan3.moe import EXPERT_LORA_SLOTS

DIFFUSION_PREFIXES = ("model.", "lm_head.", "timestep_emb.", "guidance_emb.", "timestep_r_emb.", "patch_embed.",
                      "time_embed.", "final_layer.", "time_embed_2.")
MAX_CACHED_BATCHES = 4      # cond and uncond may come as separate batches; one entry per distinct batch of rows


class HunyuanImage3Transformer(nn.Module):
    """The trunk, lm_head and image-side modules of config.json (a dict), built through `ops`."""

    expert_lora_slots = EXPERT_LORA_SLOTS     # where the official HY-WU expert LoRA goes (moe.py)

    def __init__(self, config, ops=nn, dtype=None, device=None):
        super().__init__()
        if config.get("cfg_distilled") or config.get("use_meanflow"):
            raise ValueError("this HunyuanImage-3 variant (cfg_distilled / use_meanflow) is not supported: the "
                             "Instruct release uses neither")
        self.config = config
        self.model = DecoderTrunk(config, ops=ops, device=device, dtype=dtype)
        self.lm_head = build_lm_head(config, ops=ops, device=device, dtype=dtype)
        for name, module in image_modules(config, ops=ops, device=device, dtype=dtype).items():
            self.add_module(name, module)
        self._runs = {}

    def load_weights(self, state_dict, dtype=None):
        """Load every weight (strict: the checkpoint's keys, no more and no less), taking the tensors as they
        are (cast to `dtype` when given), so a model built on the meta device costs no second copy."""
        expected = set(self.state_dict().keys())
        missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if missing or unexpected:
            raise ValueError(f"HunyuanImage-3 weights do not match config.json: {len(missing)} missing "
                             f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); the "
                             "config and the weights come from different downloads")
        self.load_state_dict({k: v if dtype is None else v.to(dtype) for k, v in state_dict.items()},
                             strict=True, assign=True)
        self._runs.clear()

    # -- embeddings --------------------------------------------------------------------------------------------

    def image_tokens(self, x, t):
        """(B, C, H, W) model latents at timesteps t (B,) -> (B, H * W, hidden) tokens."""
        return self.patch_embed(x, self.time_embed(t, dtype=x.dtype))[0]

    def embed_context(self, inputs, dtype):
        """Input embeddings (B, L, hidden) of everything but the generated image: text, the condition images'
        VAE tokens at t = 0 with their `<timestep>` slots, and their ViT tokens."""
        h = self.model.wte(inputs.input_ids).to(dtype).clone()
        b, _, d = h.shape
        if inputs.cond_latents:
            zeros = torch.zeros(b, device=h.device)
            cond = torch.cat([self.image_tokens(c.to(dtype), zeros) for c in inputs.cond_latents], dim=1)
            h.scatter_(1, inputs.cond_image_slots[..., None].expand(-1, -1, d), cond)
            stamp = self.timestep_emb(zeros, dtype=dtype)
            slots = inputs.cond_timestep_slots
            h.scatter_(1, slots[..., None].expand(-1, -1, d), stamp[:, None].expand(-1, slots.shape[1], -1))
        if inputs.vit_embeds.shape[1]:
            h.scatter_(1, inputs.vit_slots[..., None].expand(-1, -1, d), inputs.vit_embeds.to(dtype))
        return h

    def embed(self, x, t, inputs):
        """The whole sequence's input embeddings (B, L, hidden) for latents x (B, C, H, W) at timesteps t (B,)."""
        h = self.embed_context(inputs, x.dtype)
        d = h.shape[-1]
        h.scatter_(1, inputs.image_slots[..., None].expand(-1, -1, d), self.image_tokens(x, t))
        h.scatter_(1, inputs.timestep_slot[..., None].expand(-1, -1, d),
                   self.timestep_emb(t, dtype=x.dtype)[:, None])
        return h

    def prefill_states(self, inputs, dtype):
        """The last decoder layer's output before ln_f (B, L, hidden) over prompt rows without a generated image:
        over the img_ratio prefill it is HY-WU's condition, what the official generator reads."""
        cos, sin = self.model.rope(inputs.positions)
        return self.model(self.embed_context(inputs, dtype), inputs.attention_mask, cos, sin).last_layer

    # -- the step ----------------------------------------------------------------------------------------------

    def _predict(self, image_hidden, t, grid):
        return self.final_layer(image_hidden, self.time_embed_2(t, dtype=image_hidden.dtype), *grid)

    def _check(self, x, inputs):
        grid = tuple(x.shape[-2:])
        if grid != tuple(inputs.image_grid):
            raise ValueError(f"the latent is {grid[0]}x{grid[1]} but the conditioning was prepared for a "
                             f"{inputs.image_grid[0]}x{inputs.image_grid[1]} image: use the latent the HunyuanImage-3 "
                             "conditioning node outputs (or change its image size)")
        if x.shape[0] != inputs.batch_size:
            raise ValueError(f"{x.shape[0]} latents for {inputs.batch_size} prepared sequences")

    def denoise(self, x, timesteps, inputs, run=None):
        """The flow-matching velocity (B, C, H, W) for model latents x at timesteps (B,) = 1000 sigma.

        `run`: an object that names the current sampling run; while it and the rows' keys stay the same, the
        steps after the first reuse the sequence's attention keys / values and compute only the generated image's
        `<timestep>` and image tokens. None: compute the whole sequence every time."""
        self._check(x, inputs)
        t = timesteps.to(x.device).float().expand(x.shape[0])
        mask = inputs.attention_mask
        cache = self._cache_for(run, inputs)
        if cache is None or not cache.keys:
            cos, sin = self.model.rope(inputs.positions)
            out = self.model(self.embed(x, t, inputs), mask, cos, sin, kv_cache=cache).last_layer
            hidden = gather_tokens(out, inputs.image_slots, 1)
        else:
            indices = torch.cat([inputs.timestep_slot, inputs.image_slots], dim=1)
            d = self.config["hidden_size"]
            stamp = self.timestep_emb(t, dtype=x.dtype)[:, None]
            h = torch.cat([stamp, self.image_tokens(x, t)], dim=1)
            cos, sin = self.model.rope(gather_tokens(inputs.positions, indices, 1))
            out = self.model(h, gather_tokens(mask, indices, 2), cos, sin, kv_cache=cache, indices=indices)
            hidden = out.last_layer[:, inputs.timestep_slot.shape[1]:].reshape(x.shape[0], -1, d)
        return self._predict(hidden, t, inputs.image_grid)

    def _cache_for(self, run, inputs):
        if run is None or not inputs.keys:
            return None
        held = self._runs.get("run")
        if held is not run:
            self._runs = {"run": run}
        key = inputs.keys
        if key not in self._runs:
            if len(self._runs) > MAX_CACHED_BATCHES:
                self._runs = {"run": run}
            self._runs[key] = KVCache()
        return self._runs[key]

    def forget_runs(self):
        """Drop every cached prefix (e.g. before the weights change outside a sampling run)."""
        self._runs = {}
