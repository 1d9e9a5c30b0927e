"""StepInputs: what one denoising step needs besides the noisy latent, for a batch of sequences.

HunyuanImage-3 denoises inside one token sequence: text, the condition images (VAE tokens after a
`<timestep>` slot at t = 0, then ViT tokens), and the generated image's block, whose `<timestep>`
slot and image tokens change every step. Everything else in a row is fixed for a whole sampling run,
so it is prepared once (the prompt builder, the ViT and the VAE run before sampling) and carried
here: token ids, the attention mask, the 2D rope positions, and where each kind of embedding goes.

Rows are batched by concatenation when they have equal length and equal slot counts (ComfyUI's
cond / uncond batch: the uncond row replaces prompt and CoT tokens by `<cfg>` at equal length).
"""
from dataclasses import dataclass, fields

import torch


@dataclass
class StepInputs:
    input_ids: torch.Tensor          # (B, L) int64
    attention_mask: torch.Tensor     # (B, 1, L, L) bool: True where a query may attend to a key
    positions: torch.Tensor          # (B, L, 2) int64: (y, x) rope position of every token
    cond_latents: tuple              # per condition image, (B, C, h_i, w_i) in model latent space (may be empty)
    cond_image_slots: torch.Tensor   # (B, sum h_i * w_i) int64: where their patch-embedded tokens go, image order
    cond_timestep_slots: torch.Tensor  # (B, n_cond) int64: their `<timestep>` tokens (t = 0)
    vit_embeds: torch.Tensor         # (B, n_vit, D) aligner output of the condition images, all images in order
    vit_slots: torch.Tensor          # (B, n_vit) int64
    image_slots: torch.Tensor        # (B, H * W) int64: the generated image's tokens, row-major
    timestep_slot: torch.Tensor      # (B, 1) int64: the generated image's `<timestep>` token
    image_grid: tuple                # (H, W) of the generated image in tokens
    keys: tuple = ()                 # one id per row (the conditioning that made it): names the prefix cache entry

    @property
    def batch_size(self):
        return self.input_ids.shape[0]

    def _tensors(self):
        return [f.name for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)]

    def can_batch_with(self, other):
        return (self.image_grid == other.image_grid
                and all(getattr(self, n).shape[1:] == getattr(other, n).shape[1:] for n in self._tensors())
                and [c.shape[1:] for c in self.cond_latents] == [c.shape[1:] for c in other.cond_latents])

    @classmethod
    def cat(cls, rows):
        first = rows[0]
        for row in rows[1:]:
            if not first.can_batch_with(row):
                raise ValueError("these HunyuanImage-3 sequences differ in length or image layout and cannot share "
                                 "a batch")
        values = {n: torch.cat([getattr(r, n) for r in rows]) for n in first._tensors()}
        values["cond_latents"] = tuple(torch.cat(group) for group in zip(*(r.cond_latents for r in rows)))
        return cls(**values, image_grid=first.image_grid,
                   keys=tuple(k for r in rows for k in r.keys))

    def select(self, index):
        """The rows at `index` (a list or int64 tensor of row numbers), in that order."""
        index = torch.as_tensor(index, dtype=torch.long)
        values = {n: getattr(self, n)[index] for n in self._tensors()}
        values["cond_latents"] = tuple(c[index] for c in self.cond_latents)
        return StepInputs(**values, image_grid=self.image_grid,
                          keys=tuple(self.keys[i] for i in index.tolist()) if self.keys else ())

    def repeat_to(self, batch_size):
        """Rows repeated cyclically to `batch_size` (ComfyUI's repeat_to_batch_size for a latent batch)."""
        if batch_size == self.batch_size:
            return self
        return self.select(torch.arange(batch_size) % self.batch_size)

    def to(self, device, dtype=None):
        values = {}
        for n in self._tensors():
            t = getattr(self, n)
            values[n] = t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)
        values["cond_latents"] = tuple(c.to(device=device, dtype=dtype or c.dtype) for c in self.cond_latents)
        return StepInputs(**values, image_grid=self.image_grid, keys=self.keys)
