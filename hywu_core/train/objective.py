"""The editing objective L_edit of §3.6: the backbone's own denoising loss, per-sample LoRA injected.

For sample i with clean latent x0_i, noise n_i and a noise level sigma_i drawn from the
backbone's own training schedule (model_sampling.sigmas: its discretisation, shift included):

    x_t = model_sampling.noise_scaling(sigma_i, n_i, x0_i)        (CONST flow: sigma n + (1 - sigma) x0)
    D   = BaseModel.apply_model(x_t, sigma_i, **conds_i)           with LoRA_i injected (dynamic path)

ComfyUI's apply_model returns the denoised estimate D = calculate_denoised(sigma, out, x_t), which
is affine in the raw network output `out` for every parameterisation ComfyUI has (EPS, V, EDM,
CONST flow matching, X0, ...): D = a + b * out. The loss is taken on the raw output, i.e. in the
model's own parameterisation: L_i = mean(((D - x0_i) / b)^2) = mean((out - out*)^2), with b read
off calculate_denoised itself. For flow matching this is the velocity loss |v - (n - x0)|^2, for
EPS the noise loss |eps - n|^2.

Optional, not in the paper: `high_frequency` = lambda adds lambda * mean(H(e)^2) to L_i, with e the
same raw-output error and H the 3x3 mask [[1,-2,1],[-2,4,-2],[1,-2,1]] (the grain metric's, see
demo.edits.noise_sigma) run over every channel of every frame. A plain mean-squared loss barely
notices faint grain (an error of std 0.003 costs 1e-5), so a LoRA is left with it; the mask passes
white noise with gain 36 and smooth error with about none, so lambda = 1 already pulls 37x harder on
grain while leaving the edit's own (smooth) error as it was. lambda = 0 is the paper's L_edit.

Optional, not in the paper: `patch_lattice` = mu adds mu * mean(P(e)^2), with P(e) the part of the
error that repeats with the backbone's patch grid: e averaged over all patches at each of the p x p
positions (p: the model's patch size), each channel's mean removed. A pattern the final layer draws
the same in every patch (a 4x4 texture or steps on every grid line of a patchified backbone) is
1/(p*p)-th of a plain squared loss spread over a whole image, yet it is what a viewer sees first;
error that is smooth or tied to the content averages out of P. demo.edits.patch_lattice measures
the same pattern in the luma of an output. mu = 0 leaves L_edit as it was.

conds_i are what ComfyUI's sampler feeds the model (convert_cond + encode_model_conds with the
model's extra_conds, then process_cond and cond_cat, as samplers.calc_cond_batch does), so
concat images, reference latents, pooled vectors, guidance etc. enter exactly as in sampling.
Samples whose conditioning cannot be concatenated (e.g. different text lengths for a model with
attention masks) run as separate forward passes, like ComfyUI's own batching.

Gradients: the backbone is frozen. The bundle that reaches the backbone is a detached leaf copy
of the generated one; each group's loss is back-propagated into it inside the injection (so
gradient-checkpointed blocks recompute with the LoRA in place), and the caller back-propagates
the leaf gradients through the generator once.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import Tensor

from hywu_core.condition import encode_condition
from hywu_core.lora import LoRABundle
from hywu_core.lora_inject import per_row_injection
from hywu_core.train.backbone import checkpointed


def sample_noise(shape: tuple[int, ...], sigmas: Tensor, seed: int, sample_index: int) -> tuple[Tensor, Tensor]:
    """(noise of `shape`, sigma) for one sample, from a stream keyed by (seed, global sample index):
    the same sample gets the same draw however the batch is split over processes and micro-steps."""
    generator = torch.Generator().manual_seed((seed * 0x9E3779B1 + sample_index) % (2 ** 63))
    noise = torch.randn(shape, generator=generator)
    k = int(torch.randint(len(sigmas), (1,), generator=generator))
    return noise, sigmas.detach().float().cpu()[k].reshape(())


HIGH_FREQUENCY_MASK = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))


def high_frequency_error(error: Tensor) -> Tensor:
    """Per-sample mean of the squared 3x3 high-frequency mask response over the last two dims of
    `error` (N, ..., H, W), each channel and frame on its own."""
    if error.shape[-1] < 3 or error.shape[-2] < 3:
        raise ValueError(f"the high-frequency loss needs latents of at least 3x3, got {tuple(error.shape[-2:])}")
    planes = error.reshape(-1, 1, *error.shape[-2:])
    mask = torch.tensor(HIGH_FREQUENCY_MASK, dtype=planes.dtype, device=planes.device).view(1, 1, 3, 3)
    response = torch.nn.functional.conv2d(planes, mask)
    return response.reshape(error.shape[0], -1).square().mean(1)


def patch_lattice_error(error: Tensor, patch: int) -> Tensor:
    """Per-sample mean square of the part of `error` (N, C, H, W) that repeats every `patch` pixels:
    the error averaged over the patches at each position, each channel's mean removed."""
    h, w = (error.shape[-2] // patch) * patch, (error.shape[-1] // patch) * patch
    if h == 0 or w == 0:
        raise ValueError(f"the patch-lattice loss needs latents of at least one {patch}x{patch} patch, "
                         f"got {tuple(error.shape[-2:])}")
    tiles = error[..., :h, :w].reshape(error.shape[0], -1, h // patch, patch, w // patch, patch)
    pattern = tiles.mean((2, 4))
    pattern = pattern - pattern.mean((-2, -1), keepdim=True)
    return pattern.square().flatten(1).mean(1)


def model_patch_size(model) -> int:
    """The patch size of a ComfyUI BaseModel's diffusion model (its unet_config's "patch_size")."""
    patch = model.model_config.unet_config.get("patch_size")
    if not isinstance(patch, int) or patch < 2:
        raise ValueError(f"the patch-lattice loss needs a patchified backbone (unet_config patch_size >= 2), this "
                         f"one has patch_size {patch!r}; set train.patch_lattice to 0")
    return patch


def leaf_bundle(bundle: LoRABundle) -> LoRABundle:
    """A copy of the bundle whose factors are fresh leaves that collect gradients."""
    return LoRABundle(bundle.spec, bundle.rank, bundle.alpha,
                      {p: t.detach().requires_grad_() for p, t in bundle.A.items()},
                      {p: t.detach().requires_grad_() for p, t in bundle.B.items()})


def backward_into_generator(bundle: LoRABundle, leaf: LoRABundle) -> None:
    """Back-propagate the leaf's gradients through the generated bundle into the generator."""
    tensors, grads = [], []
    for factors, leaves in ((bundle.A, leaf.A), (bundle.B, leaf.B)):
        for path, tensor in factors.items():
            if leaves[path].grad is not None and tensor.requires_grad:
                tensors.append(tensor)
                grads.append(leaves[path].grad.to(tensor.dtype))
    if tensors:
        torch.autograd.backward(tensors, grads)


class DenoisingObjective:
    """L_edit for a Backbone (train.backbone.Backbone): per-sample losses, back-propagated into a LoRA leaf."""

    def __init__(self, backbone, block_checkpointing: bool = False, spec=None, high_frequency: float = 0.0,
                 patch_lattice: float = 0.0):
        for name, weight in (("high_frequency", high_frequency), ("patch_lattice", patch_lattice)):
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"{name} = {weight}: give a finite weight >= 0 (0: the plain L_edit)")
        self.backbone = backbone
        self.high_frequency = float(high_frequency)
        self.patch_lattice = float(patch_lattice)
        self.patch = model_patch_size(backbone.model.model) if self.patch_lattice else 0
        self.checkpoint_blocks = backbone.block_modules(spec) if block_checkpointing else []

    def model_conds(self, positive: list, x0: Tensor, noise: Tensor, seed: int) -> dict:
        """ComfyUI's per-sample model inputs (batch 1) for a positive conditioning list."""
        import comfy.sampler_helpers
        import comfy.samplers

        conds = comfy.sampler_helpers.convert_cond(positive)
        if len(conds) != 1:
            raise ValueError(f"an edit's conditioning must be one entry, got {len(conds)} (area or timestep-range "
                             "conditioning is not supported in training)")
        model = self.backbone.model.model
        device = self.backbone.device
        empty = model.process_latent_in(torch.zeros_like(x0))
        conds = comfy.samplers.encode_model_conds(model.extra_conds, conds, noise.to(device), device, "positive",
                                                  latent_image=empty.to(device), seed=seed)
        return {k: v.process_cond(batch_size=1, area=None) for k, v in conds[0]["model_conds"].items()}

    def inputs(self, sources: Tensor, targets: Tensor, instructions: list[str], references: list[Tensor],
               index: list[int], seed: int) -> tuple[Tensor, list[dict], Tensor, Tensor]:
        """(x0, per-sample model conds, noise, sigma) for edits given as IMAGE batches: edit i's noise and
        noise level come from the stream keyed by (seed, index[i]), its conds from the backbone's edit
        conditioning of its source, instruction and references."""
        x0 = self.backbone.latents(targets)
        sigmas = self.backbone.model_sampling.sigmas
        conds, noises, levels = [], [], []
        for i, key in enumerate(index):
            noise, sigma = sample_noise(tuple(x0[i:i + 1].shape), sigmas, seed, key)
            positive, _, latent = self.backbone.conditioning(sources[i:i + 1], instructions[i],
                                                             [r[i:i + 1] for r in references])
            if tuple(latent.shape[-2:]) != tuple(x0.shape[-2:]):
                raise ValueError(f"edit {key}: its target encodes to a {tuple(x0.shape[-2:])} latent but the backbone "
                                 f"generates {tuple(latent.shape[-2:])} for its source; give source and target the "
                                 "same size (data.resolution)")
            conds.append(self.model_conds(positive, x0[i:i + 1], noise, key))
            noises.append(noise)
            levels.append(sigma)
        return x0, conds, torch.cat(noises), torch.stack(levels)

    @staticmethod
    def _concatable(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(a[k].can_concat(b[k]) for k in a)

    def backward(self, leaf: LoRABundle, conds: list[dict], x0: Tensor, noise: Tensor, sigma: Tensor,
                 weight: float) -> Tensor:
        """Run the backbone on every sample with LoRA row i for sample i, back-propagate
        weight * sum_i L_i into `leaf`, return the per-sample losses L_i (detached, float32)."""
        return self._run(leaf, conds, x0, noise, sigma, weight)

    @torch.no_grad()
    def losses(self, bundle: LoRABundle | None, conds: list[dict], x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        """The per-sample losses L_i without gradients; bundle None is the base backbone."""
        return self._run(bundle, conds, x0, noise, sigma, None)

    def _run(self, bundle, conds, x0, noise, sigma, weight) -> Tensor:
        import comfy.samplers

        self.backbone.load()
        device = self.backbone.device
        model = self.backbone.model.model
        ms = self.backbone.model_sampling
        x0, noise, sigma = x0.to(device), noise.to(device), sigma.to(device)
        groups: list[list[int]] = []
        for i in range(len(conds)):
            if groups and self._concatable(conds[groups[-1][0]], conds[i]):
                groups[-1].append(i)
            else:
                groups.append([i])
        losses = torch.zeros(len(conds), dtype=torch.float32)
        options = self.backbone.model.model_options.get("transformer_options", {})
        for group in groups:
            rows = torch.tensor(group, dtype=torch.long, device=device)
            s, x0_g, noise_g = sigma[rows], x0[group], noise[group]
            x_t = ms.noise_scaling(s, noise_g, x0_g)
            c = comfy.samplers.cond_cat([conds[i] for i in group])
            c["transformer_options"] = {**options, "sigmas": s, "cond_or_uncond": [0]}
            injection = nullcontext() if bundle is None else per_row_injection(self.backbone.diffusion_model, bundle, rows)
            with injection, checkpointed(self.checkpoint_blocks if weight is not None else []):
                denoised = model.apply_model(x_t, s, **c)
                offset = ms.calculate_denoised(s, torch.zeros_like(x_t), x_t)
                slope = ms.calculate_denoised(s, torch.ones_like(x_t), x_t) - offset
                error = (denoised.float() - x0_g.float()) / slope.float()
                per_sample = error.square().flatten(1).mean(1)
                if self.high_frequency:
                    per_sample = per_sample + self.high_frequency * high_frequency_error(error)
                if self.patch_lattice:
                    per_sample = per_sample + self.patch_lattice * patch_lattice_error(error, self.patch)
                if weight is not None:
                    (per_sample.sum() * weight).backward()
            losses[group] = per_sample.detach().float().cpu()
        return losses


@torch.no_grad()
def evaluation_loss(backbone, encoder, generator, dataset, seed: int = 0) -> float:
    """Mean L_edit over every record of `dataset` with fixed noise and noise levels (keyed by record
    index and `seed`): with generator None, the base backbone's loss on the same draws."""
    objective = DenoisingObjective(backbone)
    total = 0.0
    for i in range(len(dataset)):
        batch = dataset.batch([i], [i])
        x0, conds, noise, sigma = objective.inputs(batch.source, batch.target, batch.instructions, batch.references,
                                                   [i], seed)
        bundle = None
        if generator is not None:
            bundle = generator(encode_condition(encoder, batch.source, batch.instructions, batch.references))
        total += float(objective.losses(bundle, conds, x0, noise, sigma).sum())
    return total / len(dataset)
