"""An edit or generation request made ready for sampling: (prompt, input images, CoT, size, seed) -> rows.

This is the release's input preparation, run once before sampling: each input image goes to its
nearest-ratio bucket (its VAE copy) and through SigLIP2's naflex preprocessing (its ViT copy); the VAE
encodes the first copy and draws its posterior sample from the request's seeded generator; the vision
tower and aligner embed the second; the prompt builder lays out the token sequence around them. The
result is one conditioned row and its unconditioned twin (prompt and CoT tokens replaced by `<cfg>`),
plus the generated image's latent grid, and the img_ratio prefill row of the same request (system prompt, images,
prompt and CoT, then `<answer><boi><img_size_B>`), over which HY-WU reads its condition.

Randomness follows the release exactly: one CPU `torch.Generator` seeded with the request's seed
draws, in order, each input image's posterior noise (float32, image order) and then the initial
latent noise (drawn in bfloat16, then widened): `initial_noise` replays that order.
"""
import os
import uuid
from dataclasses import dataclass

import torch

from hywu_core.hunyuan3.images import (
    NaflexPreprocessor,
    RatioBuckets,
    output_bucket,
    prepare_cond_image,
)
from hywu_core.hunyuan3.inputs import StepInputs
from hywu_core.hunyuan3.prompt import (
    HunyuanTokenizer,
    InputImage,
    OutputImage,
    PromptBuilder,
)
from hywu_core.hunyuan3.system_prompts import DEFAULT as DEFAULT_SYSTEM_PROMPT
from hywu_core.hunyuan3.system_prompts import system_prompt as system_prompt_text
from hywu_core.hunyuan3.vae import HunyuanVAE
from hywu_core.hunyuan3.vision import VISION_PREFIXES, VisionEncoder


@dataclass
class Prepared:
    cond: StepInputs                 # one row
    uncond: StepInputs               # its twin with `<cfg>` in place of prompt and CoT
    ratio: StepInputs                # the img_ratio prefill of the same request (HY-WU's condition is read there)
    latent_shape: tuple              # (1, C, H, W) model latent of the generated image
    posterior_shapes: tuple          # the VAE posterior draws made before the initial noise, in order
    seed: int
    size: tuple                      # (height, width) in pixels of the generated image
    prompt: str = ""
    model_name: str = ""             # the model folder's name

    def initial_noise(self):
        """The release's initial latent noise for this request's seed (see the module docstring)."""
        return initial_noise(self.seed, self.posterior_shapes, self.latent_shape)


def initial_noise(seed, posterior_shapes, latent_shape):
    generator = torch.Generator().manual_seed(int(seed))
    for shape in posterior_shapes:
        torch.randn(shape, generator=generator)
    return torch.randn(latent_shape, generator=generator, dtype=torch.bfloat16).float()


class RequestBuilder:
    """Everything of a model folder that prepares requests: tokenizer, buckets, preprocessors, the VAE and the
    vision tower (modules the caller has loaded and placed)."""

    def __init__(self, folder, vae, vision):
        self.folder = folder
        self.tokenizer = HunyuanTokenizer(folder.path)
        self.prompts = PromptBuilder.from_config(self.tokenizer, folder.config, folder.generation)
        self.buckets = RatioBuckets.from_config(folder.config)
        self.naflex = NaflexPreprocessor.from_config(folder.config.get("vit_processor", {}))
        self.vae, self.vision = vae, vision
        self.factor = int(folder.config["vae"].get("ffactor_spatial", 16))

    @classmethod
    def from_folder(cls, folder, dtype=torch.float32):
        """A builder with the folder's VAE and vision tower + aligner loaded (every key, strict), on the CPU."""
        vae = HunyuanVAE.from_config(folder.config["vae"])
        vae.load_state_dict(folder.state_dict("vae."), strict=True)
        vision = VisionEncoder(folder.config)
        vision.load_state_dict(folder.state_dict(VISION_PREFIXES, strip=False), strict=True)
        return cls(folder, vae.eval().to(dtype), vision.eval().to(dtype))

    def system_prompt(self, name=None, custom=None):
        name = name or self.folder.generation.get("use_system_prompt") or DEFAULT_SYSTEM_PROMPT
        text = system_prompt_text(name, task="image", custom=custom)
        return (text or "").strip() or None

    @torch.no_grad()
    def prepare(self, prompt, images=(), cot_text=None, system_prompt=None, image_size="auto", seed=0, key=None):
        """Prepared rows for `prompt` with up to three PIL `images`; `image_size` as images.output_bucket takes it
        ("auto" takes the first input image's bucket, or the square one without images)."""
        picked = output_bucket(image_size, self.buckets)
        specs, latents, shapes, vit = self._images(images, crop=picked is not None, seed=seed)
        if picked is None:
            index = specs[0].ratio_index if specs else self.buckets.nearest(1, 1)
            picked = index, self.buckets[index]
        ratio_index, bucket = picked
        grid = (bucket.height // self.factor, bucket.width // self.factor)
        sequence = self.prompts.image(prompt, specs, OutputImage(grid, ratio_index),
                                      system_prompt=self.system_prompt(system_prompt), cot=cot_text or None)
        key = key if key is not None else uuid.uuid4().hex
        gen = sequence.blocks_of("gen")[0]
        rows = [self._row(sequence, ids, latents, vit, (gen.start, gen.stop), gen.timestep, grid, (key, which))
                for ids, which in ((sequence.input_ids, "cond"), (sequence.uncond_ids, "uncond"))]
        ratio = self.prompts.ratio(prompt, specs, system_prompt=self.system_prompt(system_prompt), cot=cot_text or None)
        latent_channels = int(self.folder.config["vae"]["latent_channels"])
        return Prepared(cond=rows[0], uncond=rows[1], ratio=self._row(ratio, ratio.input_ids, latents, vit),
                        latent_shape=(1, latent_channels, *grid),
                        posterior_shapes=tuple(shapes), seed=int(seed), size=(bucket.height, bucket.width),
                        prompt=prompt, model_name=os.path.basename(os.path.normpath(self.folder.path)))

    @torch.no_grad()
    def prepare_cot(self, prompt, images=(), system_prompt=None, mode="think", seed=0):
        """The one-row prompt the model continues with its CoT (`mode` "think" or "recaption")."""
        specs, latents, _, vit = self._images(images, crop=True, seed=seed)
        sequence = self.prompts.cot(prompt, specs, system_prompt=self.system_prompt(system_prompt), mode=mode)
        return self._row(sequence, sequence.input_ids, latents, vit)

    def _images(self, images, crop, seed):
        """(InputImage specs, model latents, posterior shapes, ViT embeddings) of the input images, the posterior
        noise drawn from a CPU generator seeded with `seed`, image by image."""
        conds = [prepare_cond_image(im, self.buckets, self.naflex, crop=crop) for im in images]
        device = next(self.vae.parameters()).device
        dtype = next(self.vae.parameters()).dtype
        generator = torch.Generator().manual_seed(int(seed))
        latents, shapes = [], []
        for c in conds:
            posterior = self.vae.encode(c.vae[None].to(device, dtype))
            shapes.append(tuple(posterior.mean.shape))
            latents.append(self.vae.to_model_latent(self.vae.sample(posterior, generator)).float().cpu())
        specs = [InputImage(vae_grid=tuple(lat.shape[-2:]), ratio_index=c.bucket_index,
                            vit_grid=tuple(c.vit.spatial_shape.tolist()), vit_tokens=self.naflex.max_patches)
                 for c, lat in zip(conds, latents)]
        return specs, latents, shapes, self._vit(conds)

    def _vit(self, conds):
        hidden = self.folder.config["hidden_size"]
        if not conds:
            return torch.zeros(1, 0, hidden)
        device = next(self.vision.parameters()).device
        dtype = next(self.vision.parameters()).dtype
        pixels = torch.stack([c.vit.pixel_values for c in conds]).to(device, dtype)
        mask = torch.stack([c.vit.attention_mask for c in conds]).to(device)
        shapes = torch.stack([c.vit.spatial_shape for c in conds]).to(device)
        return self.vision(pixels, mask, shapes).float().cpu().reshape(1, -1, hidden)

    @staticmethod
    def _row(sequence, ids, latents, vit, image_span=(0, 0), timestep=None, grid=(0, 0), key=None):
        return StepInputs(
            input_ids=ids[None], attention_mask=sequence.attention_mask(batch=1).clone(),
            positions=sequence.rope_yx[None], cond_latents=tuple(latents),
            cond_image_slots=sequence.positions("cond_vae")[None],
            cond_timestep_slots=sequence.timestep_positions("cond_vae")[None],
            vit_embeds=vit, vit_slots=sequence.positions("cond_vit")[None],
            image_slots=torch.arange(*image_span)[None],
            timestep_slot=torch.tensor([[timestep]] if timestep is not None else [[]], dtype=torch.long),
            image_grid=grid, keys=(key,) if key is not None else ())
