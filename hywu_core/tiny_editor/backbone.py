"""The demo backbone: a tiny instruct-pix2pix editor in pixel space, made of ComfyUI's own classes.

This is the frozen diffusion backbone that the generator writes per-input LoRAs for (paper §3.2)
in the embedded demo (docs/design.md, "The tiny editor"). Everything the stock graph touches is stock ComfyUI 0.3.75:

  MODEL  comfy.model_base.SD3 (MMDiT, rectified flow: ModelSamplingDiscreteFlow + CONST) reading
         6 channels = 3 noisy pixels + the 3 source pixels that InstructPixToPixConditioning puts in
         "concat_latent_image" (BaseModel.concat_cond, concat key "concat_image"); 3 channels out;
         latent format ChromaRadiance (3 channels, pixel space, identity scaling).
  CLIP   comfy.sd.CLIP over comfy.sd1_clip.SDClipModel with ComfyUI's T5 encoder class and the
         ByT5 byte tokenizer that ships in comfy/text_encoders/byt5_tokenizer (nothing to download);
         the stock CLIPTextEncode node encodes prompts with it.
  VAE    the stock "pixel_space" VAE (what VAELoader builds for that choice): IMAGE [0, 1] <-> [-1, 1].

One checkpoint file holds the MMDiT ("model.diffusion_model.*") and the text encoder
("text_encoders.demo_byt5.transformer.*"); its safetensors metadata holds the format tag and the
DemoBackboneConfig JSON. Only safetensors is ever read.

ComfyUI 0.3.75 facts this module is built on:
- MMDiT's width is set by `depth`: hidden = 64 * depth with `depth` heads (head dim fixed at 64);
  `num_blocks` sets the number of joint blocks on its own. The last joint block is "pre_only" on
  the text side (its context_block has only attn.qkv and adaLN_modulation), so the blocks'
  Linear layers are not all alike.
- With num_patches=None the MMDiT has no pos_embed buffer: 2-D sin-cos positions are computed
  each forward, so any image size works (inputs are padded to the patch size).
- Layers from comfy.ops skip weight initialisation: a model built through ComfyUI holds
  uninitialised memory until weights are loaded, so fresh weights are made with plain torch.nn.
- The CLIP-architecture text encoder (comfy.clip_model) always has a 49408-row token embedding
  (CLIPTextModel_ does not pass vocab_size on): 1.6M parameters at width 32 for the embedding
  alone. The T5 class reads vocab_size from its config, so a 384-entry byte vocabulary keeps
  the whole text encoder near 0.1M parameters.
- comfy.model_management.text_encoder_dtype() is float16 even on the CPU; the demo pins float32.
- SDClipModel.load_sd and BaseModel.load_model_weights load with strict=False and only log
  mismatches; this loader checks names and shapes itself.
- The stock CheckpointLoaderSimple cannot load this family (model_detection takes any MMDiT for
  SD3 with 16 latent channels), hence a dedicated loader. The stock LoRA loaders do work on it:
  comfy.lora maps both "diffusion_model.joint_blocks.*" and diffusers SD3 names for any SD3 model.
- `import nodes` outside the server is ambiguous: this pack's nodes/ package shadows ComfyUI's
  nodes.py whenever the pack's root comes first on sys.path, so `sample` avoids it.
- Every model call of a sampling run (comfy.samplers calc_cond_batch) goes through
  BaseModel.apply_model with the noisy latent x (N, C, H, W); the first comes at step 0, before
  any network compute. PixelEditor checks the image size there (check_image_size): a latent too
  small for the patch embedding fails deep inside torch, a huge one runs for hours at step 0.

Functions here import comfy when called: call them where ComfyUI is importable and set up (inside
ComfyUI, or after the tests' comfy_lib fixture).
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

FORMAT = "hywu-demo-backbone"
FORMAT_VERSION = "1"
TEXT_ENCODER = "demo_byt5"
MODEL_PREFIX = "model.diffusion_model."
TEXT_PREFIX = f"text_encoders.{TEXT_ENCODER}.transformer."
BYTE_VOCAB = 384  # ByT5: pad, eos, unk, 256 bytes, 125 sentinel ids
IMAGE_CHANNELS = 3
MIN_SIZE, MAX_SIZE = 8, 256  # pixels per side the demo editor samples (trained at 64 x 64)


# What the MMDiT's output means (the denoised image D from the output `out`, noisy pixels x_t at sigma,
# source pixels s): "velocity"  D = x_t - sigma * out (rectified flow, SD3's CONST);
# "x0"  D = out (the clean image itself); "source_residual"  D = s + out (the change to the source);
# "source_affine"  D = s + M s + b + r: a smooth local colour transform of the source plus detail
# (local_affine).
PREDICTIONS = ("velocity", "x0", "source_residual", "source_affine")
AFFINE_CHANNELS = IMAGE_CHANNELS + IMAGE_CHANNELS ** 2 + IMAGE_CHANNELS   # detail r, matrix M, offset b


class DemoCheckpointError(ValueError):
    """A demo backbone file or state dict that cannot be used; the message names the problem and the fix."""


@dataclass(frozen=True)
class DemoBackboneConfig:
    """Sizes of the demo family. Defaults: 1.68M-parameter MMDiT, 0.11M-parameter text encoder."""

    patch_size: int = 4
    depth: int = 2            # MMDiT width 64 * depth, `depth` heads
    num_blocks: int = 3
    mlp_ratio: float = 4.0
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_ffn: int = 128
    text_length: int = 64     # bytes per prompt chunk; prompts are padded to whole chunks
    shift: float = 1.0        # flow-matching timestep shift (SD3 uses 3.0 at 1024 px)
    prediction: str = "velocity"  # what the MMDiT outputs: one of PREDICTIONS

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise DemoCheckpointError(f"demo backbone prediction {self.prediction!r} is not one of "
                                      f"{', '.join(PREDICTIONS)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DemoBackboneConfig":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise DemoCheckpointError(f"demo backbone config is not valid JSON ({error})") from error
        if not isinstance(values, dict):
            raise DemoCheckpointError(f"demo backbone config must be a JSON object, got {type(values).__name__}")
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise DemoCheckpointError(f"demo backbone config has unknown fields {unknown}: "
                                      "the file was written by a newer ComfyUI-HY-WU; update the pack")
        return cls(**values)

    def mmdit_config(self) -> dict:
        """Keyword arguments of ComfyUI's MMDiT (the model config's unet_config)."""
        return {
            "patch_size": self.patch_size,
            "in_channels": 2 * IMAGE_CHANNELS,
            "out_channels": AFFINE_CHANNELS if self.prediction == "source_affine" else IMAGE_CHANNELS,
            "depth": self.depth,
            "num_blocks": self.num_blocks,
            "mlp_ratio": self.mlp_ratio,
            "context_embedder_config": {"target": "torch.nn.Linear",
                                        "params": {"in_features": self.text_width, "out_features": 64 * self.depth}},
        }

    def text_encoder_config(self) -> dict:
        """Config dict of ComfyUI's T5 encoder class (comfy.text_encoders.t5.T5)."""
        return {
            "model_type": "t5",
            "vocab_size": BYTE_VOCAB,
            "d_model": self.text_width,
            "num_layers": self.text_layers,
            "num_heads": self.text_heads,
            "d_kv": self.text_width // self.text_heads,
            "d_ff": self.text_ffn,
            "dense_act_fn": "gelu_pytorch_tanh",
            "is_gated_act": True,
        }


def build_demo_backbone(seed: int = 0, config: DemoBackboneConfig | None = None
                        ) -> tuple[dict[str, torch.Tensor], DemoBackboneConfig]:
    """Fresh weights for the demo family, the same for the same seed: (checkpoint state dict, config).

    PyTorch's default initialisation, drawn from a private RNG stream (the global one is untouched).
    """
    config = config or DemoBackboneConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mmdit, text = _modules(config, device=None)
    with torch.no_grad():
        for name, weight in text.named_parameters():
            if name.endswith("layer_norm.weight"):  # T5LayerNorm allocates with torch.empty
                weight.fill_(1.0)
    state_dict = {MODEL_PREFIX + k: v for k, v in mmdit.state_dict().items()}
    state_dict |= {TEXT_PREFIX + k: v for k, v in text.state_dict().items()}
    return state_dict, config


def save_demo_checkpoint(path, state_dict: dict[str, torch.Tensor], config: DemoBackboneConfig,
                         dtype: torch.dtype | None = None) -> None:
    """Write the demo family as one .safetensors file (weights, config JSON in the metadata).

    `dtype` stores the weights in that precision (e.g. torch.bfloat16 halves the file); loading
    always computes in float32.
    """
    from safetensors.torch import save_file

    _check_state_dict(state_dict, config)
    tensors = {k: (v if dtype is None else v.to(dtype)).detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata={"format": FORMAT, "format_version": FORMAT_VERSION,
                                            "config": config.to_json()})


def read_demo_checkpoint(path) -> tuple[dict[str, torch.Tensor], DemoBackboneConfig]:
    """The state dict and config of a demo backbone file, checked against each other."""
    from safetensors import SafetensorError, safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise DemoCheckpointError(f"demo backbone file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise DemoCheckpointError(f"{path} is not a readable .safetensors file ({error}); it may be truncated "
                                  "or corrupted: download or rebuild it") from error
    if metadata.get("format") != FORMAT:
        raise DemoCheckpointError(f"{path} is not a HY-WU demo backbone (safetensors metadata format="
                                  f"{metadata.get('format')!r}, expected {FORMAT!r}): pick the demo backbone file")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise DemoCheckpointError(f"{path} has demo backbone format version {metadata.get('format_version')!r}; "
                                  f"this pack reads version {FORMAT_VERSION}: update the pack or rebuild the file")
    if "config" not in metadata:
        raise DemoCheckpointError(f"{path} has no 'config' in its safetensors metadata: rebuild it with "
                                  "save_demo_checkpoint")
    config = DemoBackboneConfig.from_json(metadata["config"])
    _check_state_dict(state_dict, config, source=str(path))
    return state_dict, config


def load_demo_checkpoint(path):
    """(MODEL as a comfy ModelPatcher, CLIP, VAE) from one demo backbone file."""
    return assemble_demo_backbone(*read_demo_checkpoint(path))


def assemble_demo_backbone(state_dict: dict[str, torch.Tensor], config: DemoBackboneConfig,
                           dtype: torch.dtype = torch.float32):
    """(MODEL, CLIP, VAE) of the demo family from a checkpoint state dict, on ComfyUI's devices; the
    MODEL computes in `dtype` (float32 for the demo; the benches' real-width stacks also take bfloat16)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd

    _check_state_dict(state_dict, config)
    model_config = _pixel_editor_config_class()(config.mmdit_config(), shift=config.shift,
                                                prediction=config.prediction)
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({})
    model.diffusion_model.load_state_dict(_strip(state_dict, MODEL_PREFIX))
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())

    text_state = _strip(state_dict, TEXT_PREFIX)
    clip = comfy.sd.CLIP(_clip_target(config), parameters=sum(v.numel() for v in text_state.values()),
                         model_options={"dtype": torch.float32})
    getattr(clip.cond_stage_model, TEXT_ENCODER).transformer.load_state_dict(text_state)

    vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
    return patcher, clip, vae


def demo_state_dict(model, clip) -> dict[str, torch.Tensor]:
    """The checkpoint state dict of a loaded demo MODEL and CLIP, as their weights are now
    (e.g. after training the backbone; remove applied LoRA patches first)."""
    mmdit = model.model.diffusion_model.state_dict()
    text = getattr(clip.cond_stage_model, TEXT_ENCODER).transformer.state_dict()
    state_dict = {MODEL_PREFIX + k: v.detach().cpu() for k, v in mmdit.items()}
    state_dict |= {TEXT_PREFIX + k: v.detach().cpu() for k, v in text.items()}
    return state_dict


def sample(model, clip, vae, source_image: torch.Tensor, prompt: str, seed: int, steps: int = 8,
           cfg: float = 2.0, negative_prompt: str = "", sampler_name: str = "euler",
           scheduler: str = "simple") -> torch.Tensor:
    """Edit `source_image` (IMAGE: N, H, W, 3 in [0, 1]) by `prompt` the way the stock graph does:
    CLIPTextEncode -> InstructPixToPixConditioning -> KSampler -> VAEDecode. Returns IMAGE (N, H, W, 3).

    InstructPixToPixConditioning runs as the node itself; CLIPTextEncode, KSampler
    (nodes.common_ksampler: fix_empty_latent_channels, prepare_noise, comfy.sample.sample) and
    VAEDecode are their bodies, because `import nodes` is ambiguous here: this pack's nodes/
    package shadows ComfyUI's nodes.py whenever the pack's root is first on sys.path.
    InstructPixToPixConditioning centre-crops H and W to multiples of 8.
    """
    import comfy.sample
    from comfy_extras.nodes_ip2p import InstructPixToPixConditioning

    if not (torch.is_tensor(source_image) and source_image.ndim == 4 and source_image.shape[-1] == IMAGE_CHANNELS):
        shape = tuple(source_image.shape) if torch.is_tensor(source_image) else type(source_image).__name__
        raise ValueError(f"source_image must be an IMAGE tensor (N, H, W, 3) with values in [0, 1], got {shape}; "
                         "convert channels-first images with .permute(0, 2, 3, 1)")
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(negative_prompt))
    positive, negative, latent = InstructPixToPixConditioning.execute(positive, negative, source_image, vae).result
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed)
    samples = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative,
                                  latent_image, seed=seed, disable_pbar=True)
    return vae.decode(samples)


def local_affine(source: torch.Tensor, out: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The denoised image of prediction "source_affine": D = s + M s + b + r, per pixel.

    `out` (N, AFFINE_CHANNELS, H, W) holds the detail r (3 channels), then a 3x3 colour matrix M
    (9, row-major) and an offset b (3). M and b are averaged over each patch and upsampled
    bilinearly, so they are smooth by construction: they carry a tone or colour change that follows
    the source (exposure: M diagonal, b constant; chroma: M = c I + (1 - c) 1 w^T, w the luma
    weights) without the patch grid a change written pixel by pixel through the final layer leaves
    (its 16 outputs per token are not tied to each other); r carries what is not a colour transform
    (detail, blur, grain) and is per pixel, so it can still draw a texture inside the patches (a
    family trained on this prediction did: docs/design.md, "The tiny editor"). With out = 0 the model
    returns its source.
    """
    c = IMAGE_CHANNELS
    if out.shape[1] != AFFINE_CHANNELS or source.shape[1] != c or out.shape[-2:] != source.shape[-2:]:
        raise ValueError(f"local_affine needs a source (N, {c}, H, W) and an output (N, {AFFINE_CHANNELS}, H, W), "
                         f"got {tuple(source.shape)} and {tuple(out.shape)}")
    coarse = torch.nn.functional.avg_pool2d(out[:, c:], patch_size, ceil_mode=True)
    coarse = torch.nn.functional.interpolate(coarse, size=tuple(source.shape[-2:]), mode="bilinear",
                                             align_corners=False)
    matrix, offset = coarse[:, :c * c].unflatten(1, (c, c)), coarse[:, c * c:]
    return source + torch.einsum("nijhw,njhw->nihw", matrix, source) + offset + out[:, :c]


def check_image_size(height: int, width: int) -> None:
    """Refuse image sizes the demo editor cannot sample, naming the accepted range."""
    if not (MIN_SIZE <= height <= MAX_SIZE and MIN_SIZE <= width <= MAX_SIZE):
        raise ValueError(f"the HY-WU demo editor samples images of {MIN_SIZE} to {MAX_SIZE} pixels per side "
                         f"(trained at 64x64), but this run's image is {width}x{height} pixels "
                         "(InstructPixToPixConditioning crops to multiples of 8): resize the image into that "
                         "range, e.g. with ImageScale")


def _modules(config: DemoBackboneConfig, device):
    """The MMDiT and T5 encoder as plain torch.nn layers (which, unlike comfy.ops, initialise)."""
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper
    from comfy.text_encoders.t5 import T5

    mmdit = OpenAISignatureMMDITWrapper(**config.mmdit_config(), dtype=torch.float32, device=device,
                                        operations=torch.nn)
    text = T5(config.text_encoder_config(), torch.float32, device, torch.nn)
    return mmdit, text


def _check_state_dict(state_dict: dict[str, torch.Tensor], config: DemoBackboneConfig,
                      source: str = "demo backbone state dict") -> None:
    """Raise DemoCheckpointError naming the first missing, unexpected or mis-shaped tensors."""
    mmdit, text = _modules(config, device="meta")
    expected = {MODEL_PREFIX + k: v.shape for k, v in mmdit.state_dict().items()}
    expected |= {TEXT_PREFIX + k: v.shape for k, v in text.state_dict().items()}
    problems = [f"missing {k}" for k in expected if k not in state_dict]
    problems += [f"unexpected {k}" for k in state_dict if k not in expected]
    problems += [f"{k} has shape {tuple(state_dict[k].shape)}, config needs {tuple(shape)}"
                 for k, shape in expected.items() if k in state_dict and state_dict[k].shape != shape]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise DemoCheckpointError(f"{source} does not match its config {config.to_json()}: "
                                  f"{'; '.join(problems[:3])}{more}. Rebuild the file with save_demo_checkpoint")


def _strip(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


@functools.cache
def _pixel_editor_config_class():
    """The demo family's ComfyUI model config class (defined on first use: hywu_core imports without comfy)."""
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_sampling
    import comfy.supported_models_base

    class ModelSamplingFlowX0(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        """SD3's flow noise schedule (x_t = sigma n + (1 - sigma) x0) with a network that outputs the
        denoised image itself."""

        def calculate_denoised(self, sigma, model_output, model_input):
            return model_output

    class PixelEditor(comfy.model_base.SD3):
        """SD3's MMDiT on [noisy pixels ; source pixels]: BaseModel.concat_cond appends the
        InstructPixToPixConditioning image as channels for the concat key "concat_image".

        With prediction "x0", "source_residual" or "source_affine" the model's model_sampling returns the
        output as the denoised image; for "source_residual" _apply_model adds the source (c_concat) to it,
        for "source_affine" it applies local_affine (the MMDiT then has AFFINE_CHANNELS outputs: ComfyUI's
        BaseModel._apply_model passes any channel count through, and the image returned has 3).
        ComfyUI's ModelSamplingSD3 / ModelSamplingAuraFlow nodes patch "model_sampling" with a velocity
        (CONST) class, which ModelPatcher sets on this model when it loads: for these predictions that
        would turn every output into noise, so _apply_model refuses it by name.
        """

        def __init__(self, model_config, device=None):
            super().__init__(model_config, device=device)
            self.concat_keys = ("concat_image",)
            self.prediction = model_config.prediction
            self.patch_size = model_config.unet_config["patch_size"]
            if self.prediction != "velocity":
                self.model_sampling = ModelSamplingFlowX0(model_config)

        def apply_model(self, x, *args, **kwargs):
            check_image_size(*x.shape[-2:])
            return super().apply_model(x, *args, **kwargs)

        def _apply_model(self, x, t, c_concat=None, *args, **kwargs):
            if self.prediction != "velocity" and not isinstance(self.model_sampling, ModelSamplingFlowX0):
                raise ValueError(f"this HY-WU demo backbone predicts {self.prediction!r}, but a node (e.g. "
                                 f"ModelSamplingSD3) replaced its model sampling with a velocity one "
                                 f"({type(self.model_sampling).__name__}): remove that node from the workflow")
            denoised = super()._apply_model(x, t, c_concat, *args, **kwargs)
            if self.prediction == "source_residual":
                denoised = denoised + c_concat.to(denoised)
            elif self.prediction == "source_affine":
                denoised = local_affine(c_concat.to(denoised), denoised, self.patch_size)
            return denoised

    class PixelEditorConfig(comfy.supported_models_base.BASE):
        """supported_models-style config: pixel-space latents, float32, SD3 flow sampling with `shift`."""

        unet_extra_config = {}
        latent_format = comfy.latent_formats.ChromaRadiance
        supported_inference_dtypes = [torch.float32]

        def __init__(self, unet_config, shift, prediction="velocity"):
            super().__init__(unet_config)
            self.sampling_settings = {"shift": shift}
            self.prediction = prediction

        def get_model(self, state_dict, prefix="", device=None):
            return PixelEditor(self, device=device)

    return PixelEditorConfig


def _clip_target(config: DemoBackboneConfig):
    """ClipTarget for comfy.sd.CLIP: ByT5 byte tokenizer + ComfyUI's T5 class inside SDClipModel.

    Prompts are padded to whole `text_length` chunks (pad id 0, masked and zeroed in the output),
    so a prompt and the empty negative prompt have the same length and CFG runs them as one batch.
    """
    import comfy.sd1_clip
    import comfy.supported_models_base
    import comfy.text_encoders.t5
    from transformers import ByT5Tokenizer

    tokenizer_path = os.path.join(os.path.dirname(comfy.text_encoders.t5.__file__), "byt5_tokenizer")
    byte_tokenizer = functools.partial(
        comfy.sd1_clip.SDTokenizer, tokenizer_path=tokenizer_path, tokenizer_class=ByT5Tokenizer,
        has_start_token=False, pad_with_end=False, max_length=config.text_length,
        embedding_size=config.text_width, embedding_key=TEXT_ENCODER)
    tokenizer = functools.partial(comfy.sd1_clip.SD1Tokenizer, name=TEXT_ENCODER, tokenizer=byte_tokenizer)
    target = comfy.supported_models_base.ClipTarget(tokenizer, comfy.sd1_clip.SD1ClipModel)
    target.params = {
        "name": TEXT_ENCODER,
        "clip_model": comfy.sd1_clip.SDClipModel,
        "model_class": comfy.text_encoders.t5.T5,
        "textmodel_json_config": config.text_encoder_config(),
        "special_tokens": {"end": 1, "pad": 0},
        "enable_attention_masks": True,
        "zero_out_masked": True,
    }
    return target
