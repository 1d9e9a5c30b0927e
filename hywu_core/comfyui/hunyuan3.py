"""HunyuanImage-3.0 as a ComfyUI model: the MODEL that KSampler drives, its latent format, its VAE.

The plain-PyTorch port lives in hywu_core.hunyuan3; this module only fits it to ComfyUI:

- MODEL: a comfy.model_base.BaseModel (flow matching, `shift` from generation_config.json, timestep
  = 1000 sigma) whose diffusion_model is the port built through comfy.ops, so ComfyUI's weight
  dtypes (bf16, fp8_e4m3fn with manual cast) and its low-VRAM offloading apply, and whose Linear
  weights take LoRA patches under `diffusion_model.model.layers.N...` like any other model.
- Conditioning: each CONDITIONING entry carries one prepared sequence (hywu_core.hunyuan3.inputs.
  StepInputs) under the key `hunyuan3`; `Hunyuan3Cond` batches rows for ComfyUI's cond/uncond batch.
- The denoiser reuses the sequence prefix's attention K/V across the steps of one sampling run
  (HunyuanImage3Transformer.denoise); a new run, which is where ComfyUI re-applies a changed set of
  weight patches or a HY-WU LoRA wrapper, always recomputes it. The run is named by a fresh object that
  an OUTER_SAMPLE wrapper, registered on the loader's MODEL (and so on every clone), puts into the run's
  transformer_options.
- VAE: a comfy.sd.VAE around the port's autoencoder (latent channels and the 16x downscale from the
  folder's config), so the stock VAE Decode / VAE Encode nodes work.

ComfyUI facts (0.3.75) this depends on, kept as few as possible:
- BaseModel(model_config, model_type, unet_model=cls) builds `cls(**model_config.unet_config,
  device=..., operations=comfy.ops...)`; `_apply_model` passes extra conds that are neither tensors
  nor lists unchanged.
- `transformer_options["sample_sigmas"]` does not name a run: two samplers fed by one scheduler node get
  the same sigmas tensor (the base and HY-WU branches of a workflow do). CFGGuider.sample clones its
  model_options for each run and runs the OUTER_SAMPLE wrappers (the patcher's, merged in by
  comfy.sampler_helpers.prepare_model_patcher) with itself as `executor.class_obj`; what a wrapper puts
  into `class_obj.model_options["transformer_options"]` reaches the model's forward for that run only.
- CONDRegular subclasses decide batching through can_concat / concat and are repeated to the latent
  batch through process_cond(batch_size=...).
- comfy.sd.VAE has no constructor for an unknown autoencoder; built for the "pixel_space_vae" key
  it sets up every generic attribute, and the model-specific ones (first_stage_model, ratios,
  latent channels, memory estimates, the ModelPatcher) are then replaced here.
"""
import functools
import hashlib
from types import SimpleNamespace

import torch

from hywu_core.condition import Condition
from hywu_core.hunyuan3 import cot
from hywu_core.hunyuan3.config import FolderError, open_folder
from hywu_core.hunyuan3.inputs import StepInputs
from hywu_core.hunyuan3.model import DIFFUSION_PREFIXES, HunyuanImage3Transformer
from hywu_core.hunyuan3.request import RequestBuilder, initial_noise
from hywu_core.hunyuan3.vae import HunyuanVAE

COND_KEY = "hunyuan3"
RUN_KEY = "hunyuan3_run"
WEIGHT_DTYPES = {"default": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                 "fp8_e4m3fn": torch.float8_e4m3fn}


@functools.cache
def _comfy_types():
    """The ComfyUI subclasses, defined on first use so that hywu_core imports without ComfyUI."""
    import comfy.conds
    import comfy.latent_formats
    import comfy.model_base
    import comfy.supported_models_base

    class Hunyuan3Cond(comfy.conds.CONDRegular):
        """A CONDITIONING entry's prepared sequence; rows batch when their layouts match."""

        def process_cond(self, batch_size, **kwargs):
            return self._copy_with(self.cond.repeat_to(batch_size))

        def can_concat(self, other):
            return self.cond.can_batch_with(other.cond)

        def concat(self, others):
            return StepInputs.cat([self.cond] + [o.cond for o in others])

        def size(self):
            return list(self.cond.input_ids.shape)


    def latent_format(vae_config):
        """The folder's latent space: ComfyUI's process_in is the release's (z - shift) * scale."""
        fmt = comfy.latent_formats.LatentFormat()
        fmt.latent_channels = int(vae_config["latent_channels"])
        fmt.scale_factor = float(vae_config.get("scaling_factor") or 1.0)
        fmt.shift_factor = float(vae_config.get("shift_factor") or 0.0)
        fmt.process_in = lambda z: (z - fmt.shift_factor) * fmt.scale_factor
        fmt.process_out = lambda z: z / fmt.scale_factor + fmt.shift_factor
        return fmt


    class ComfyTransformer(HunyuanImage3Transformer):
        """The port called the way BaseModel calls a diffusion model (timestep = 1000 sigma)."""

        def __init__(self, config, dtype=None, device=None, operations=None):
            # Built on the meta device: load_weights assigns the checkpoint's tensors, so the 80B model is never
            # initialised or held twice.
            super().__init__(config, ops=operations or torch.nn, dtype=dtype, device="meta")
            self.dtype = dtype or torch.float32       # BaseModel.get_dtype reads it

        def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kwargs):
            inputs = kwargs.get(COND_KEY)
            if inputs is None:
                raise ValueError("HunyuanImage-3 needs its own conditioning: connect the HunyuanImage-3 Conditioning "
                                 "node's positive / negative outputs to the sampler")
            run = (transformer_options or {}).get(RUN_KEY)
            return self.denoise(x, timesteps, inputs.to(x.device, x.dtype), run=run)


    class HunyuanImage3Model(comfy.model_base.BaseModel):
        def __init__(self, model_config, device=None):
            super().__init__(model_config, comfy.model_base.ModelType.FLOW, device=device,
                             unet_model=ComfyTransformer)

        def extra_conds(self, **kwargs):
            inputs = kwargs.get(COND_KEY)
            return {} if inputs is None else {COND_KEY: Hunyuan3Cond(inputs)}


    def model_config_for(folder):
        class HunyuanImage3Config(comfy.supported_models_base.BASE):
            unet_config = {}
            unet_extra_config = {}
            latent_format = comfy.latent_formats.LatentFormat
            supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]
            memory_usage_factor = 1.0

            def get_model(self, state_dict, prefix="", device=None):
                return HunyuanImage3Model(self, device=device)

        config = HunyuanImage3Config({"config": folder.config})
        config.latent_format = latent_format(folder.config["vae"])
        config.sampling_settings = {"shift": float(folder.generation.get("flow_shift", 1.0)), "multiplier": 1000}
        return config

    return SimpleNamespace(cond=Hunyuan3Cond, model=HunyuanImage3Model, config_for=model_config_for,
                           latent_format=latent_format)


def sampling_defaults(folder):
    """(steps, guidance scale) of the folder's generation_config.json, as the release reads them."""
    generation = folder.generation
    missing = [k for k in ("diff_infer_steps", "diff_guidance_scale") if k not in generation]
    if missing:
        raise FolderError(f"{folder.path}/generation_config.json lacks {', '.join(missing)}; download it again")
    return int(generation["diff_infer_steps"]), float(generation["diff_guidance_scale"])


def load_model(folder, weight_dtype="default"):
    """MODEL (a ModelPatcher) from a HunyuanImage-3 folder; every diffusion weight must load."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.patcher_extension

    if isinstance(folder, str):
        folder = open_folder(folder)
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    state_dict = {}
    for prefix in DIFFUSION_PREFIXES:
        state_dict.update(folder.state_dict(prefix, strip=False))
    if not state_dict:
        raise FolderError(f"{folder.path} holds no HunyuanImage-3 transformer weights ({', '.join(DIFFUSION_PREFIXES)})")
    load_device = mm.get_torch_device()
    params = sum(t.numel() for t in state_dict.values())
    stored = next(iter(state_dict.values())).dtype
    model_config = _comfy_types().config_for(folder)
    dtype = WEIGHT_DTYPES[weight_dtype] or mm.unet_dtype(model_params=params,
                                                          supported_dtypes=model_config.supported_inference_dtypes,
                                                          weight_dtype=stored)
    model_config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, load_device,
                                                                model_config.supported_inference_dtypes))
    model = model_config.get_model({})
    model.diffusion_model.load_weights(state_dict, dtype=dtype)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, RUN_KEY, _name_the_run)
    return patcher


def _name_the_run(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: a fresh object per sampling run in its transformer_options, which keys the prefix
    K/V cache (see the module docstring)."""
    executor.class_obj.model_options.setdefault("transformer_options", {})[RUN_KEY] = object()
    return executor(*args, **kwargs)


class _FirstStage(torch.nn.Module):
    """The port's autoencoder as comfy.sd.VAE calls it: encode gives the posterior mean (ComfyUI's VAE Encode
    is deterministic), decode the image; both in raw VAE latents. Its weights keep their `vae.` keys."""

    def __init__(self, vae_config):
        super().__init__()
        self.vae = HunyuanVAE.from_config(vae_config)

    def encode(self, pixels):
        return self.vae.encode(pixels).mean

    def decode(self, z):
        return self.vae.decode(z)


def load_vae(folder, dtype=None):
    """A comfy.sd.VAE around the port's autoencoder (IMAGE [0, 1] <-> raw latents, 16x downscale), so the stock
    VAE Decode / VAE Encode nodes work."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd

    vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
    vae_config = folder.config["vae"]
    module = _FirstStage(vae_config)
    module.load_state_dict(folder.state_dict("vae.", strip=False), strict=True)
    factor = int(vae_config.get("ffactor_spatial", 16))
    vae.first_stage_model = module.eval()
    vae.latent_channels = int(vae_config["latent_channels"])
    vae.downscale_ratio = vae.upscale_ratio = factor
    vae.memory_used_encode = lambda shape, dtype: 2000 * shape[2] * shape[3] * mm.dtype_size(dtype)
    vae.memory_used_decode = lambda shape, dtype: 2000 * shape[2] * shape[3] * factor * factor * mm.dtype_size(dtype)
    vae.vae_dtype = dtype or mm.vae_dtype(vae.device, [torch.float32, torch.bfloat16])
    vae.first_stage_model.to(vae.vae_dtype)
    vae.patcher = comfy.model_patcher.ModelPatcher(vae.first_stage_model, load_device=vae.device,
                                                   offload_device=mm.vae_offload_device())
    vae.size = None
    return vae


class Hunyuan3Encoder:
    """The request side of a HunyuanImage-3 folder (socket HUNYUAN3_ENCODER): tokenizer and prompt template,
    ratio buckets, the VAE that encodes input images and the SigLIP2 tower + aligner that embeds them.
    They run once per request, before sampling, on ComfyUI's torch device, then go back to the offload device."""

    def __init__(self, folder):
        import comfy.model_management as mm

        self.folder = folder
        self.device = mm.get_torch_device()
        self.offload_device = mm.text_encoder_offload_device()
        dtype = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        self.requests = RequestBuilder.from_folder(folder, dtype)
        self.vae, self.vision = self.requests.vae.to(self.offload_device), self.requests.vision.to(self.offload_device)

    def prepare(self, prompt, images=(), cot_text=None, system_prompt=None, image_size="auto", seed=0):
        """The Prepared rows of an image request (request.RequestBuilder.prepare)."""
        return self._on_device(self.requests.prepare, prompt, images, cot_text=cot_text, system_prompt=system_prompt,
                               image_size=image_size, seed=seed)

    def prepare_cot(self, prompt, images=(), system_prompt=None, mode="think", seed=0):
        """The prompt row the model continues with its CoT (request.RequestBuilder.prepare_cot)."""
        return self._on_device(self.requests.prepare_cot, prompt, images, system_prompt=system_prompt, mode=mode,
                               seed=seed)

    def _on_device(self, fn, *args, **kwargs):
        for module in (self.vae, self.vision):
            module.to(self.device)
        try:
            return fn(*args, **kwargs)
        finally:
            for module in (self.vae, self.vision):
                module.to(self.offload_device)


def conditioning(prepared):
    """(positive, negative, latent) for a Prepared request: CONDITIONING lists carrying one row each, and the
    empty LATENT (VAE space, as ComfyUI's latents are) of the generated image's size."""
    def entry(row):
        return [[torch.zeros(1, row.input_ids.shape[1], 1), {COND_KEY: row, "hunyuan3_request": prepared}]]

    return entry(prepared.cond), entry(prepared.uncond), {"samples": torch.zeros(prepared.latent_shape)}


class ReferenceNoise:
    """NOISE for SamplerCustomAdvanced: the release's initial noise for the request's seed (its generator first
    draws the input images' posterior noise, then the latent noise in bfloat16), so the same seed gives the
    release's image. For a batch of N latents, one draw of N, as the release draws a batch."""

    def __init__(self, prepared):
        self.prepared = prepared
        self.seed = prepared.seed

    def generate_noise(self, input_latent):
        samples = input_latent["samples"]
        expected = tuple(self.prepared.latent_shape[1:])
        if tuple(samples.shape[1:]) != expected:
            raise ValueError(f"the latent is {tuple(samples.shape[1:])} but this noise was prepared for {expected}: "
                             "use the latent the HunyuanImage-3 Conditioning node outputs")
        p = self.prepared
        return initial_noise(p.seed, p.posterior_shapes, (samples.shape[0], *expected))


def request_of(positive):
    """The Prepared request behind a HunyuanImage-3 CONDITIONING, or a ValueError naming the fix."""
    for _, options in positive:
        if "hunyuan3_request" in options:
            return options["hunyuan3_request"]
    raise ValueError("this CONDITIONING does not come from the HunyuanImage-3 Conditioning node: connect its "
                     "positive output")


def encode_condition(model, positive):
    """HY-WU's condition for the request behind `positive` (the official generator's input): the last decoder
    layer's output before ln_f over the request's img_ratio prefill (system prompt, input images, prompt, CoT,
    `<answer><boi><img_size_B>`), (1, tokens, hidden) float32, computed by the MODEL as ComfyUI loads it (the
    loader's MODEL: no LoRA, as the release computes it)."""
    import comfy.model_management as mm

    prepared = request_of(positive)
    mm.load_models_gpu([model])
    dtype = model.model.manual_cast_dtype or model.model.get_dtype()
    with torch.no_grad():
        states = model.model.diffusion_model.prefill_states(prepared.ratio.to(model.load_device, dtype), dtype)
    digest = hashlib.sha256(prepared.ratio.input_ids.cpu().numpy().tobytes())
    for latent in prepared.ratio.cond_latents:
        digest.update(latent.float().cpu().numpy().tobytes())
    return Condition(tokens=states.float(), mask=torch.ones(states.shape[:2], dtype=torch.bool, device=states.device),
                     instructions=(prepared.prompt,), sources=(digest.hexdigest()[:16],),
                     encoder=f"HunyuanImage-3 ({prepared.model_name})")


def generate_cot(model, encoder, prompt, images=(), system_prompt=None, mode="think", max_new_tokens=1024,
                 sampling=None, seed=0, on_token=None):
    """The model's CoT text for a request (`<think>...</think><recaption>...</recaption>`), decoded by the MODEL
    as ComfyUI loads it (its weight patches applied, on its device)."""
    import comfy.model_management as mm

    row = encoder.prepare_cot(prompt, images, system_prompt=system_prompt, mode=mode, seed=seed)
    mm.load_models_gpu([model])
    diffusion = model.model.diffusion_model
    dtype = model.model.manual_cast_dtype or model.model.get_dtype()
    device = model.load_device
    tokens, _ = cot.generate(diffusion, row.to(device, dtype), encoder.requests.tokenizer, max_new_tokens, sampling,
                             on_token=on_token, dtype=dtype)
    return cot.cot_text(encoder.requests.tokenizer, mode, tokens)
