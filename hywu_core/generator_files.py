"""Generator files: ours (one .safetensors) and the public HY-WU release's folder (paper §3.4-3.5).

Ours: a single .safetensors file (ComfyUI users keep models as single files). The tensors are
the Generator's state dict; the safetensors metadata holds everything needed to rebuild it:

    format = "hywu-generator", format_version = "1",
    nnt_config = NNTConfig JSON, spec = TargetSpec JSON, layout = ParameterLayout JSON, alpha

Official: a folder with config.json (model_type "parameter_generator") and model.safetensors
(or sharded model-*.safetensors with model.safetensors.index.json), as published in
tencent/HY-WU. Its config selects our NNT's release variant (official position scheme,
rank_group = dim_accumulation, heads = d_model / head_dim, FFN 4 * d_model) and the
"official_flat" parameter layout; its weight names are mapped onto our module tree.

Only safetensors is ever read (no pickle).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from hywu_core import checks
from hywu_core.generator import Generator
from hywu_core.nnt import NNTConfig
from hywu_core.targets import TargetSpec
from hywu_core.tokenizer import ParameterLayout, make_layout

FORMAT = "hywu-generator"
FORMAT_VERSION = "1"
OFFICIAL_MODEL_TYPE = "parameter_generator"

# Official weight name -> ours: whole-name prefixes first, then the names of block parts.
OFFICIAL_PREFIXES = {
    "hidden_in.": "nnt.cond_in.",
    "model.norm_input.": "nnt.cond_norm.",
    "model.norm_tokens.": "nnt.embed_norm.",
    "model.hw_pos.": "nnt.embed_within.",
    "model.layer_pos.": "nnt.embed_layer.",
    "model.norm_final.": "nnt.norm_out.",
    "model.proj_out_A.": "nnt.head_A.",
    "model.proj_out_B.": "nnt.head_B.",
    "model.blocks.": "nnt.blocks.",
}
OFFICIAL_BLOCK_PARTS = {
    "self_attn_n": "inter_attn", "self_attn_hw": "intra_attn", "self_attn_cross": "cross_attn",
    "norm1": "norm_inter", "norm2": "norm_intra", "norm3": "norm_cross", "norm4": "norm_ffn",
    "feed_forward": "ffn", "fc1": "fc_in", "fc2": "fc_out",
    "W_q": "to_q", "W_k": "to_k", "W_v": "to_v", "W_o": "to_out",
}
OFFICIAL_CONFIG_FIELDS = ("token_dim", "rank", "alpha", "input_dim", "dim_accumulation", "d_model", "head_dim",
                          "num_base_model_layers", "output_dim", "num_pg_layers", "prefix", "pg_mapping")
OFFICIAL_SIZE_FIELDS = ("token_dim", "rank", "input_dim", "dim_accumulation", "d_model", "head_dim",
                        "num_base_model_layers", "output_dim", "num_pg_layers")

BLOCK_NAME = re.compile(r"nnt\.blocks\.(\d+)\.")
LAYER_EMBEDDING, POSITION_EMBEDDING = "nnt.embed_layer.weight", "nnt.embed_within.weight"
MAX_TOKENS = 2**22       # l x s: the layout's token masks, built on the CPU
MAX_POSITIONS = 2**24    # l x s x r / g: the NNT's latent index buffers, built on the CPU
MAX_SCALE = 1e3          # alpha / rank; trained LoRAs have scales near 1

# The release's generator (the sizes of its ParameterGeneratorConfig defaults): HunyuanImage-3.0's targets.
RELEASE_CONFIG = {
    "model_type": OFFICIAL_MODEL_TYPE, "token_dim": 1024, "rank": 16, "alpha": 64, "input_dim": 4096,
    "dim_accumulation": 4, "d_model": 4096, "head_dim": 128, "num_base_model_layers": 32, "output_dim": 1024,
    "num_pg_layers": 24, "prefix": "model.layers.",
    "pg_mapping": {
        "self_attn.qkv_proj": {"lora_A_dim": 4096, "lora_B_dim": 6144},
        "self_attn.o_proj": {"lora_A_dim": 4096, "lora_B_dim": 4096},
        "mlp.shared_mlp.gate_and_up_proj": {"lora_A_dim": 4096, "lora_B_dim": 6144},
        "mlp.shared_mlp.down_proj": {"lora_A_dim": 3072, "lora_B_dim": 4096},
        "mlp.experts": {"type": "grouped", "num_experts": 64,
                        "sub_weights": {"w1": {"lora_A_dim": 4096, "lora_B_dim": 3072},
                                        "w2": {"lora_A_dim": 3072, "lora_B_dim": 4096},
                                        "w3": {"lora_A_dim": 4096, "lora_B_dim": 3072}}},
    },
}


class GeneratorFileError(ValueError):
    """A generator file or folder that cannot be loaded; the message names the problem and the fix."""


def save_generator(path, generator: Generator) -> None:
    """Write `generator` as one .safetensors file (weights + config/spec/layout in the metadata)."""
    tensors = {name: t.detach().contiguous() for name, t in generator.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nnt_config": json.dumps(generator.config.to_dict()),
        "spec": generator.spec.to_json(),
        "layout": generator.layout.to_json(),
        "alpha": repr(generator.alpha),
    }
    save_file(tensors, str(path), metadata=metadata)


def load_generator(path, device="cpu") -> Generator:
    """Load our single-file generator, or an official release folder (or its config.json).

    Nothing is built before the stored config is checked against the tensors in the file
    (check_stored_sizes, check_layout_sizes), and the module is built on the meta device."""
    path = Path(path).expanduser()
    if path.is_dir():
        return load_official_generator(path, device)
    if path.name == "config.json":
        return load_official_generator(path.parent, device)
    if not path.is_file():
        raise GeneratorFileError(f"{path}: no such file or folder; pass a HY-WU generator .safetensors file "
                                 "or an official release folder (config.json + model.safetensors)")
    metadata, shapes = read_header(path)
    if metadata.get("format") != FORMAT:
        raise GeneratorFileError(
            f"{path}: not a HY-WU generator file (its safetensors metadata has no format={FORMAT!r}); "
            "save generators with hywu_core.generator_files.save_generator, or pass an official release folder")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise GeneratorFileError(f"{path}: generator file format version {metadata.get('format_version')!r} "
                                 f"is not supported (this code reads version {FORMAT_VERSION}); update ComfyUI-HY-WU")
    try:
        config = NNTConfig.from_dict(json.loads(metadata["nnt_config"]))
        spec = TargetSpec.from_json(metadata["spec"])
        stored_layout = json.loads(metadata["layout"])
        rank, token_dim = stored_layout["rank"], stored_layout["token_dim"]
        alpha = float(metadata["alpha"])
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise damaged(path, error) from error
    check_stored_sizes(path, config, spec.num_layers, shapes)
    check_layout_sizes(path, config, spec, rank, token_dim, alpha, shapes)
    try:
        layout = ParameterLayout.from_json(metadata["layout"], spec)
    except (KeyError, ValueError, TypeError) as error:
        raise damaged(path, error) from error
    return build_loaded(path, config, layout, alpha, read_safetensors(path, device)[1])


def damaged(path: Path, error: Exception) -> GeneratorFileError:
    """The error for metadata that does not parse."""
    return GeneratorFileError(f"{path}: damaged generator metadata ({type(error).__name__}: {error}); "
                              "re-save the generator")


def unreadable(path: Path, error: Exception) -> GeneratorFileError:
    """The error for a file that safetensors cannot open."""
    return GeneratorFileError(f"{path}: not a readable safetensors file ({error}); it may be truncated "
                              "(an interrupted download) or another format: download or save it again")


def read_header(path: Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """(metadata, {tensor name: shape}) of a .safetensors file, read from its header alone."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}, {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError) as error:
        raise unreadable(path, error) from error


def read_safetensors(path: Path, device="cpu") -> tuple[dict, dict]:
    """(metadata, tensors) of a .safetensors file, with a clear error for truncated or foreign files."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return f.metadata() or {}, {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as error:
        raise unreadable(path, error) from error


def check_stored_sizes(source: Path, config: NNTConfig, num_layers, shapes: dict) -> None:
    """Refuse a stored config that the tensors present do not back, before anything is built.

    Building costs what the config says, not what the file holds: `depth` blocks of Python
    modules (no tensor memory on the meta device, but time), and l = num_layers target blocks.
    So every size must be a positive integer, `depth` the number of NNT blocks in the file and
    l the rows of the layer embedding. Widths cost nothing on the meta device; build_loaded
    checks them against every tensor."""
    sizes = {"cond_dim": config.cond_dim, "width": config.width, "depth": config.depth, "heads": config.heads,
             "ffn_dim": config.ffn_dim, "rank_group": config.rank_group, "target blocks": num_layers}
    for name, value in sizes.items():
        if type(value) is not int or value < 1:
            raise GeneratorFileError(f"{source}: stored {name} {value!r} is not a positive integer; "
                                     "the file is damaged: re-download or re-save the generator")
    for name, value in (("rope_theta", config.rope_theta), ("norm_eps", config.norm_eps)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise GeneratorFileError(f"{source}: stored {name} {value!r} is not a finite positive number; "
                                     "the file is damaged: re-download or re-save the generator")
    blocks = {int(match.group(1)) for name in shapes if (match := BLOCK_NAME.match(name))}
    if config.depth != len(blocks):
        raise GeneratorFileError(f"{source}: the stored config says depth {config.depth}, but the weights hold "
                                 f"{len(blocks)} NNT block(s); config and weights do not belong together: "
                                 "re-download or re-save the generator")
    for name in (LAYER_EMBEDDING, POSITION_EMBEDDING):
        if len(shapes.get(name, ())) != 2:
            raise GeneratorFileError(f"{source}: weights do not match the generator its config describes; "
                                     f"missing or misshapen: {name}")
    if num_layers != shapes[LAYER_EMBEDDING][0]:
        raise GeneratorFileError(f"{source}: the stored target spec has {num_layers} block(s), but the weights "
                                 f"embed {shapes[LAYER_EMBEDDING][0]} layer(s) ({LAYER_EMBEDDING}); config and "
                                 "weights do not belong together: re-download or re-save the generator")


def layer_tokens(block, token_dim: int) -> int:
    """Tokens of one target block in either layout: a factor of E x r x dim elements takes ceil(E * dim / d)."""
    return sum(-(-module.experts * dim // token_dim) for module in block.modules for dim in (module.d_in, module.d_out))


def check_layout_sizes(source: Path, config: NNTConfig, spec: TargetSpec, rank, token_dim, alpha: float,
                       shapes: dict) -> None:
    """The layout the stored spec implies must fit the weights and bounds before it is built.

    The layout's token masks (l x s) and the NNT's latent index buffers (l x s * r / g) are
    built on the CPU: s * r must be the rows of the within-layer embedding, l x s at most
    MAX_TOKENS and l x s x r / g at most MAX_POSITIONS. The LoRA scale alpha / r must be finite,
    positive and at most MAX_SCALE."""
    for name, value in (("rank", rank), ("token_dim", token_dim)):
        if type(value) is not int or value < 1:
            raise GeneratorFileError(f"{source}: stored {name} {value!r} is not a positive integer; "
                                     "the file is damaged: re-download or re-save the generator")
    tokens = max(layer_tokens(block, token_dim) for block in spec.blocks)
    positions = shapes[POSITION_EMBEDDING][0]
    if tokens * rank != positions:
        raise GeneratorFileError(f"{source}: the stored target spec needs {tokens} token(s) of rank {rank} per layer "
                                 f"({tokens * rank} positions), but the weights embed {positions} "
                                 f"({POSITION_EMBEDDING}); config and weights do not belong together: "
                                 "re-download or re-save the generator")
    layers = spec.num_layers
    if layers * tokens > MAX_TOKENS or layers * positions // config.rank_group > MAX_POSITIONS:
        raise GeneratorFileError(f"{source}: {layers} layers x {tokens} tokens of rank {rank} is beyond what a "
                                 f"generator can hold ({MAX_TOKENS} tokens, {MAX_POSITIONS} latent positions); "
                                 "the file is damaged or not a HY-WU generator")
    if not (math.isfinite(alpha) and alpha > 0 and alpha / rank <= MAX_SCALE):
        raise GeneratorFileError(f"{source}: LoRA alpha {alpha} (scale alpha / rank = {alpha / rank}) is not a "
                                 f"finite positive scale of at most {MAX_SCALE:g}; the file is damaged: "
                                 "re-download or retrain the generator")


def build_loaded(source: Path, config: NNTConfig, layout, alpha: float, tensors: dict) -> Generator:
    """A Generator with exactly `tensors` as its weights (names, shapes and dtypes checked)."""
    with torch.device("meta"):
        generator = Generator(config, layout, alpha)
    expected = generator.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong_shape = [f"{k} {tuple(tensors[k].shape)} (expected {tuple(v.shape)})"
                   for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        problems = [f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''} ({len(names)})"
                    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
                    if names]
        raise GeneratorFileError(f"{source}: weights do not match the generator its config describes; "
                                 + "; ".join(problems))
    generator.load_state_dict(tensors, strict=True, assign=True)
    device = next(iter(tensors.values())).device
    generator.source = Path(source).name
    return generator.to(device).eval()


def official_name(name: str) -> str | None:
    """Our parameter name for an official weight name, None if it is not an official name."""
    for theirs, ours in OFFICIAL_PREFIXES.items():
        if name.startswith(theirs):
            rest = name[len(theirs):].split(".")
            return ours + ".".join(OFFICIAL_BLOCK_PARTS.get(part, part) for part in rest)
    return None


def official_weight_files(folder: Path) -> list[Path]:
    """model.safetensors, or the shards its index names (each confined to the folder)."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            return checks.index_shards(index)
        except ValueError as error:
            raise GeneratorFileError(str(error)) from error
    raise GeneratorFileError(f"{folder}: no model.safetensors (or model.safetensors.index.json) next to config.json; "
                             "download the release's safetensors weights (other weight formats are not read)")


def official_parts(cfg: dict, shapes: dict | None = None, source: Path = Path("config.json")):
    """(NNTConfig, TargetSpec, ParameterLayout, alpha) of an official config.json (a dict); with `shapes`
    (the weights' {our name: shape}), the config is checked against them before the layout is built."""
    config = NNTConfig(cond_dim=cfg["input_dim"], width=cfg["d_model"], depth=cfg["num_pg_layers"],
                       heads=cfg["d_model"] // cfg["head_dim"], ffn_dim=4 * cfg["d_model"],
                       rank_group=cfg["dim_accumulation"], positions="official")
    if shapes is not None:
        check_stored_sizes(source, config, cfg["num_base_model_layers"], shapes)
    try:
        spec = TargetSpec.from_pg_config(cfg)
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise GeneratorFileError(f"{source}: unusable pg_mapping ({type(error).__name__}: {error}); "
                                 "download the release's config.json again") from error
    alpha = float(cfg["alpha"])
    if shapes is not None:
        check_layout_sizes(source, config, spec, cfg["rank"], cfg["token_dim"], alpha, shapes)
    return config, spec, make_layout(spec, cfg["rank"], kind="official_flat", token_dim=cfg["token_dim"]), alpha


def load_official_generator(folder: Path, device="cpu") -> Generator:
    """Load a tencent/HY-WU release folder into our Generator (release variant of the NNT).

    config.json is checked against the weights' headers before the target spec or the module is built."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise GeneratorFileError(f"{folder}: no config.json; an official generator folder holds config.json "
                                 "and model.safetensors (ours is a single .safetensors file)")
    try:
        cfg = checks.read_json(config_path)
    except ValueError as error:
        raise GeneratorFileError(str(error)) from error
    if not isinstance(cfg, dict) or cfg.get("model_type") != OFFICIAL_MODEL_TYPE:
        model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
        raise GeneratorFileError(f"{config_path}: model_type is {model_type!r}, not "
                                 f"{OFFICIAL_MODEL_TYPE!r}: this is not a HY-WU parameter generator folder")
    missing = [k for k in OFFICIAL_CONFIG_FIELDS if k not in cfg]
    if missing:
        raise GeneratorFileError(f"{config_path}: missing fields {missing}; download the release's config.json again")
    for name in OFFICIAL_SIZE_FIELDS:
        if type(cfg[name]) is not int or cfg[name] < 1:
            raise GeneratorFileError(f"{config_path}: {name} {cfg[name]!r} is not a positive integer; "
                                     "download the release's config.json again")
    try:
        alpha = float(cfg["alpha"])
    except (TypeError, ValueError, OverflowError) as error:
        raise GeneratorFileError(f"{config_path}: alpha {cfg['alpha']!r} is not a number; "
                                 "download the release's config.json again") from error
    if cfg["output_dim"] != cfg["token_dim"]:
        raise GeneratorFileError(f"{config_path}: output_dim {cfg['output_dim']} differs from token_dim "
                                 f"{cfg['token_dim']}; the release's tokens need them equal")
    if cfg["d_model"] % cfg["head_dim"]:
        raise GeneratorFileError(f"{config_path}: d_model {cfg['d_model']} is not a multiple of head_dim {cfg['head_dim']}")
    files = official_weight_files(folder)
    names = {}
    for path in files:
        names |= read_header(path)[1]
    foreign = [name for name in names if official_name(name) is None]
    if foreign:
        raise GeneratorFileError(f"{folder}: weights with names the release does not use: {foreign[:5]} "
                                 f"({len(foreign)}); this is not an official HY-WU generator checkpoint")
    shapes = {official_name(name): shape for name, shape in names.items()}
    try:
        config, spec, layout, alpha = official_parts(cfg, shapes, config_path)
    except GeneratorFileError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise GeneratorFileError(f"{config_path}: {error}; download the release's config.json again") from error
    tensors = {}
    for path in files:
        tensors |= {official_name(name): tensor for name, tensor in read_safetensors(path, device)[1].items()}
    return build_loaded(folder, config, layout, alpha, tensors)
