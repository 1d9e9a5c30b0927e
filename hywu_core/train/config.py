"""The training config: one TOML file naming backbone, encoder, generator, data and optimisation (§3.6-3.7).

Sections and their keys are the dataclasses below; every key has a default except the data
folder. Relative paths are resolved against the config file's folder. An unknown section or key
is an error that names it and lists the known ones (a typo must not silently train with a default).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

BACKBONE_KINDS = ("demo", "comfy", "hunyuan3")
ENCODER_BACKBONES = ("hunyuan3",)
EDIT_CONDITIONINGS = ("instruct_pix2pix", "reference_latent", "qwen_image_edit_plus")
PRECISIONS = ("auto", "bf16", "fp32")
CHECKPOINTING = ("none", "generator", "backbone", "both")
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2", "bf16", "fp16", "fp32")


class ConfigError(ValueError):
    """A training config that cannot be used; the message names the key and the fix."""


@dataclass
class RunConfig:
    output: str = "runs/hywu"          # run folder: checkpoints, loss log, samples
    seed: int = 0
    device: str = "auto"               # auto: ComfyUI's compute device; or "cpu"
    checkpoint_every: int = 100        # optimizer steps between checkpoints (the last step always saves)
    keep_checkpoints: int = 0          # 0 keeps every checkpoint; N keeps the newest N
    log_every: int = 1                 # steps between loss log rows


@dataclass
class BackboneConfig:
    kind: str = "demo"                 # demo: hywu_core.tiny_editor.backbone; comfy: files ComfyUI loads;
                                       # hunyuan3: a HunyuanImage-3.0-Instruct folder (backbone.folder)
    checkpoint: str = ""               # demo: a demo backbone file; comfy: a full checkpoint (model+clip+vae)
    seed: int = 0                      # demo without a file: weights built from this seed
    demo: dict = field(default_factory=dict)   # demo without a file: DemoBackboneConfig fields
    diffusion_model: str = ""          # comfy: diffusion model file (models/diffusion_models)
    weight_dtype: str = "default"      # comfy, hunyuan3: as the stock "Load Diffusion Model" node
    folder: str = ""                   # hunyuan3: the model folder (config.json, safetensors, tokenizer)
    text_encoders: list = field(default_factory=list)  # comfy: text encoder files (models/text_encoders)
    text_encoder_type: str = ""        # comfy: comfy.sd.CLIPType name, e.g. "qwen_image", "flux", "sd3"
    vae: str = ""                      # comfy: VAE file (models/vae)
    edit: str = "instruct_pix2pix"     # how the source image enters the backbone, see backbone.py
    negative_prompt: str = ""          # validation sampling only


@dataclass
class EncoderConfig:
    folder: str = ""                   # transformers dual-encoder folder (SigLIP2, SigLIP, CLIP)
    tiny: str = ""                     # "siglip2": build a tiny random one into <output>/encoder (demo, tests)
    backbone: str = ""                 # "hunyuan3": the backbone's own condition, the official generator's input
    trainable: bool = False            # train the encoder with the generator
    lr_scale: float = 1.0              # its learning rate relative to train.lr


@dataclass
class GeneratorConfig:
    width: int = 256
    depth: int = 4
    heads: int = 4
    ffn_dim: int = 0                   # 0: 4 * width
    rank_group: int = 1
    attention: str = "factorized"
    positions: str = "independent"
    rank: int = 8
    alpha: float = 8.0
    include: list = field(default_factory=list)   # derive_targets regexes over module paths
    exclude: list = field(default_factory=list)
    layout: str = "rank_anchored"      # or "official_flat"
    token_dim: int = 0                 # 0: the gcd of the adapted dimensions
    init: str = ""                     # start from this generator file instead of a fresh one


@dataclass
class DataConfig:
    folder: str = ""
    manifest: str = "manifest.jsonl"
    validation_manifest: str = ""      # empty: validate on the first records of the training manifest
    resolution: list = field(default_factory=list)   # [height, width]; empty: images used as they are
    procedural: dict = field(default_factory=dict)   # {kind = "brighten_darken", count, size}: written if absent


@dataclass
class OptimConfig:
    steps: int = 1000
    batch_size: int = 8                # global batch per optimizer step (all ranks, all micro-steps)
    grad_accum: int = 1                # micro-steps per optimizer step
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0          # the cosine decays to lr * min_lr_ratio at the last step
    grad_clip: float = 1.0             # 0: no clipping
    precision: str = "auto"            # auto: bf16 autocast on CUDA, fp32 elsewhere
    checkpointing: str = "none"        # gradient checkpointing: none | generator | backbone | both
    high_frequency: float = 0.0        # weight of the loss's high-frequency term (train/objective.py); 0: L_edit
    patch_lattice: float = 0.0         # weight of the loss's patch-lattice term (train/objective.py); 0: L_edit


@dataclass
class ValidationConfig:
    every: int = 0                     # optimizer steps between sample grids; 0: only after the last step
    count: int = 4                     # edits per grid
    steps: int = 8
    cfg: float = 2.0
    seed: int = 0
    sampler: str = "euler"
    scheduler: str = "simple"


SECTIONS = {"run": RunConfig, "backbone": BackboneConfig, "encoder": EncoderConfig, "generator": GeneratorConfig,
            "data": DataConfig, "train": OptimConfig, "validation": ValidationConfig}


@dataclass
class TrainConfig:
    run: RunConfig
    backbone: BackboneConfig
    encoder: EncoderConfig
    generator: GeneratorConfig
    data: DataConfig
    train: OptimConfig
    validation: ValidationConfig
    base_dir: Path = Path(".")          # the config file's folder; relative paths start here
    source: str = ""                    # the config file

    def path(self, value: str) -> Path:
        """A config path: absolute, or relative to the config file's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def output(self) -> Path:
        return self.path(self.run.output)

    def to_json(self) -> str:
        return json.dumps({name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}, sort_keys=True)

    def check(self) -> None:
        """Raise ConfigError for the first inconsistent setting (before anything is loaded)."""
        b, e, g, d, t, v, r = self.backbone, self.encoder, self.generator, self.data, self.train, self.validation, self.run
        choose = [("backbone.kind", b.kind, BACKBONE_KINDS), ("backbone.edit", b.edit, EDIT_CONDITIONINGS),
                  ("backbone.weight_dtype", b.weight_dtype, WEIGHT_DTYPES), ("train.precision", t.precision, PRECISIONS),
                  ("train.checkpointing", t.checkpointing, CHECKPOINTING)]
        for key, value, options in choose:
            if value not in options:
                raise ConfigError(f"{key} = {value!r}: use one of {', '.join(options)}")
        if b.kind == "comfy":
            if not (b.checkpoint or b.diffusion_model):
                raise ConfigError("backbone.kind = 'comfy' needs backbone.checkpoint (a full checkpoint file) or "
                                  "backbone.diffusion_model + text_encoders + text_encoder_type + vae")
            if b.diffusion_model and not (b.text_encoders and b.text_encoder_type and b.vae):
                raise ConfigError("backbone.diffusion_model needs backbone.text_encoders, text_encoder_type and vae "
                                  "too (as the stock Load Diffusion Model / Load CLIP / Load VAE nodes)")
        if b.kind == "hunyuan3" and not b.folder:
            raise ConfigError("backbone.kind = 'hunyuan3' needs backbone.folder: the HunyuanImage-3.0-Instruct folder "
                              "(config.json, model safetensors, tokenizer files)")
        if b.kind == "hunyuan3":
            from hywu_core.comfyui.hunyuan3 import WEIGHT_DTYPES as HUNYUAN3_WEIGHT_DTYPES

            if b.weight_dtype not in HUNYUAN3_WEIGHT_DTYPES:
                raise ConfigError(f"backbone.weight_dtype = {b.weight_dtype!r}: HunyuanImage-3 loads as "
                                  f"{', '.join(HUNYUAN3_WEIGHT_DTYPES)} (the loader node's choices)")
        if sum(map(bool, (e.folder, e.tiny, e.backbone))) != 1:
            raise ConfigError("encoder: set exactly one of encoder.folder (a transformers SigLIP2/SigLIP/CLIP folder), "
                              "encoder.tiny = 'siglip2' (a tiny random encoder, for the demo and tests) and "
                              "encoder.backbone = 'hunyuan3' (the backbone's own condition)")
        if e.backbone and e.backbone not in ENCODER_BACKBONES:
            raise ConfigError(f"encoder.backbone = {e.backbone!r}: only 'hunyuan3' is built in")
        if e.backbone and (b.kind != e.backbone or e.trainable):
            raise ConfigError(f"encoder.backbone = {e.backbone!r} reads the condition off the frozen backbone: it "
                              f"needs backbone.kind = {e.backbone!r} and encoder.trainable = false")
        if e.tiny and e.tiny != "siglip2":
            raise ConfigError(f"encoder.tiny = {e.tiny!r}: only 'siglip2' is built in")
        if not d.folder:
            raise ConfigError("data.folder is empty: name the folder that holds the JSONL manifest and the images")
        if d.resolution and (len(d.resolution) != 2 or min(d.resolution) < 8):
            raise ConfigError(f"data.resolution = {d.resolution}: give [height, width], each at least 8")
        positive = [("train.steps", t.steps), ("train.batch_size", t.batch_size), ("train.grad_accum", t.grad_accum),
                    ("train.lr", t.lr), ("run.checkpoint_every", r.checkpoint_every), ("run.log_every", r.log_every),
                    ("generator.rank", g.rank), ("generator.alpha", g.alpha), ("validation.count", v.count),
                    ("validation.steps", v.steps)]
        for key, value in positive:
            if not value > 0:
                raise ConfigError(f"{key} = {value}: must be positive")
        if t.batch_size % t.grad_accum:
            raise ConfigError(f"train.batch_size = {t.batch_size} is not divisible by train.grad_accum = {t.grad_accum}")
        if not 0 <= t.min_lr_ratio <= 1 or t.warmup_steps < 0 or t.grad_clip < 0 or v.every < 0:
            raise ConfigError("train.min_lr_ratio must be in [0, 1]; train.warmup_steps, train.grad_clip and "
                              "validation.every must not be negative")
        for key, weight in (("high_frequency", t.high_frequency), ("patch_lattice", t.patch_lattice)):
            if not (math.isfinite(weight) and weight >= 0):
                raise ConfigError(f"train.{key} = {weight}: give a finite weight >= 0 (0 trains on the paper's "
                                  "L_edit alone)")
        if len(t.betas) != 2:
            raise ConfigError(f"train.betas = {t.betas}: give two numbers, e.g. [0.9, 0.999]")

    def per_rank_micro_batch(self, world_size: int) -> int:
        """Samples one rank runs per micro-step: batch_size / (grad_accum * world_size)."""
        t = self.train
        if t.batch_size % (t.grad_accum * world_size):
            raise ConfigError(f"train.batch_size = {t.batch_size} does not split over grad_accum = {t.grad_accum} "
                              f"x {world_size} processes: make it a multiple of {t.grad_accum * world_size}")
        return t.batch_size // (t.grad_accum * world_size)


def _section(name: str, values) -> object:
    cls = SECTIONS[name]
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"[{name}] has unknown key(s) {unknown}; known keys: {', '.join(known)}")
    defaults = cls()
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"[{name}] {key} = {value!r}: expected a {expected.__name__}")
    return cls(**values)


def config_from_dict(data: dict, base_dir: Path = Path("."), source: str = "") -> TrainConfig:
    """A checked TrainConfig from the parsed TOML tables."""
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; the sections are [{'], ['.join(SECTIONS)}]")
    config = TrainConfig(**{name: _section(name, dict(data.get(name, {}))) for name in SECTIONS},
                         base_dir=Path(base_dir).resolve(), source=source)
    config.check()
    return config


def load_config(path) -> TrainConfig:
    """Read and check a TOML training config."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"training config {path} does not exist; see configs/train/demo.toml for an example")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from error
    try:
        return config_from_dict(data, path.resolve().parent, str(path))
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
