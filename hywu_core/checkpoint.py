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
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .generator import Generator
from .nnt import NNTConfig

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
    """Load our single-file generator, or an official release folder (or its config.json)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return load_official_generator(path, device)
    if path.name == "config.json":
        return load_official_generator(path.parent, device)
    if not path.is_file():
        raise GeneratorFileError(f"{path}: no such file or folder; pass a HY-WU generator .safetensors file "
                                 "or an official release folder (config.json + model.safetensors)")
    metadata, tensors = read_safetensors(path, device)
    if metadata.get("format") != FORMAT:
        raise GeneratorFileError(
            f"{path}: not a HY-WU generator file (its safetensors metadata has no format={FORMAT!r}); "
            "save generators with hywu_core.checkpoint.save_generator, or pass an official release folder")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise GeneratorFileError(f"{path}: generator file format version {metadata.get('format_version')!r} "
                                 f"is not supported (this code reads version {FORMAT_VERSION}); update ComfyUI-HY-WU")
    from .targets import TargetSpec
    from .tokenizer import ParameterLayout

    try:
        config = NNTConfig.from_dict(json.loads(metadata["nnt_config"]))
        spec = TargetSpec.from_json(metadata["spec"])
        layout = ParameterLayout.from_json(metadata["layout"], spec)
        alpha = float(metadata["alpha"])
    except (KeyError, ValueError, TypeError) as error:
        raise GeneratorFileError(f"{path}: damaged generator metadata ({type(error).__name__}: {error}); "
                                 "re-save the generator") from error
    return build_loaded(path, config, layout, alpha, tensors)


def read_safetensors(path: Path, device="cpu") -> tuple[dict, dict]:
    """(metadata, tensors) of a .safetensors file, with a clear error for truncated or foreign files."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return f.metadata() or {}, {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as error:
        raise GeneratorFileError(f"{path}: not a readable safetensors file ({error}); it may be truncated "
                                 "(an interrupted download) or another format: download or save it again") from error


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


def read_official_weights(folder: Path, device="cpu") -> dict:
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single, device)[1]
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(read_safetensors(folder / shard, device)[1])
        return tensors
    raise GeneratorFileError(f"{folder}: no model.safetensors (or model.safetensors.index.json) next to config.json; "
                             "download the release's safetensors weights (other weight formats are not read)")


def load_official_generator(folder: Path, device="cpu") -> Generator:
    """Load a tencent/HY-WU release folder into our Generator (release variant of the NNT)."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise GeneratorFileError(f"{folder}: no config.json; an official generator folder holds config.json "
                                 "and model.safetensors (ours is a single .safetensors file)")
    try:
        cfg = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise GeneratorFileError(f"{config_path}: not valid JSON ({error}); download it again") from error
    if cfg.get("model_type") != OFFICIAL_MODEL_TYPE:
        raise GeneratorFileError(f"{config_path}: model_type is {cfg.get('model_type')!r}, not "
                                 f"{OFFICIAL_MODEL_TYPE!r}: this is not a HY-WU parameter generator folder")
    missing = [k for k in OFFICIAL_CONFIG_FIELDS if k not in cfg]
    if missing:
        raise GeneratorFileError(f"{config_path}: missing fields {missing}; download the release's config.json again")
    if cfg["output_dim"] != cfg["token_dim"]:
        raise GeneratorFileError(f"{config_path}: output_dim {cfg['output_dim']} differs from token_dim "
                                 f"{cfg['token_dim']}; the release's tokens need them equal")
    if cfg["d_model"] % cfg["head_dim"]:
        raise GeneratorFileError(f"{config_path}: d_model {cfg['d_model']} is not a multiple of head_dim {cfg['head_dim']}")
    from .tokenizer import make_layout

    from .targets import TargetSpec

    spec = TargetSpec.from_pg_config(cfg)
    layout = make_layout(spec, cfg["rank"], kind="official_flat", token_dim=cfg["token_dim"])
    config = NNTConfig(cond_dim=cfg["input_dim"], width=cfg["d_model"], depth=cfg["num_pg_layers"],
                       heads=cfg["d_model"] // cfg["head_dim"], ffn_dim=4 * cfg["d_model"],
                       rank_group=cfg["dim_accumulation"], positions="official")
    theirs = read_official_weights(folder, device)
    tensors, foreign = {}, []
    for name, tensor in theirs.items():
        ours = official_name(name)
        if ours is None:
            foreign.append(name)
        else:
            tensors[ours] = tensor
    if foreign:
        raise GeneratorFileError(f"{folder}: weights with names the release does not use: {foreign[:5]} "
                                 f"({len(foreign)}); this is not an official HY-WU generator checkpoint")
    return build_loaded(folder, config, layout, float(cfg["alpha"]), tensors)
