"""ComfyUI model folders the pack reads: models/hywu (generators), models/hywu_encoders (folders) and
models/hunyuan3 (HunyuanImage-3.0-Instruct folders as downloaded from Hugging Face).

The pack's own demo_models/ (the shipped demo family) is added after them to hywu, hywu_encoders and
checkpoints, so the example workflows run on a fresh ComfyUI; a user's files of the same name win.

folder_paths facts (ComfyUI 0.3.75): extra_model_paths.yaml is applied before custom nodes
load, and add_model_folder_path() creates a missing entry with an empty extension set, which
get_filename_list() treats as "every file"; so we set the extensions ourselves. The default
folders are appended, not made default: a user's extra_model_paths.yaml entry stays first.
The lists are built while the server answers /object_info, in its HTTP event loop: they follow
links but enter each real folder once (hywu_core.checks.walk_once), so a link loop cannot hang it.
"""
import os
from pathlib import Path

import folder_paths

from hywu_core.checks import walk_once

GENERATORS = "hywu"
ENCODERS = "hywu_encoders"
HUNYUAN3 = "hunyuan3"
DEMO_MODELS = Path(__file__).resolve().parents[1] / "demo_models"


def register() -> None:
    for name in (GENERATORS, ENCODERS, HUNYUAN3):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
    for name in (GENERATORS, ENCODERS, "checkpoints"):
        if (DEMO_MODELS / name).is_dir():
            folder_paths.add_model_folder_path(name, str(DEMO_MODELS / name))
    paths, _ = folder_paths.folder_names_and_paths[GENERATORS]
    folder_paths.folder_names_and_paths[GENERATORS] = (paths, {".safetensors"})


def generator_choices() -> list[str]:
    """Our single-file generators, and official release folders (config.json + safetensors) by folder name."""
    names = set()
    for base in folder_paths.get_folder_paths(GENERATORS):
        for root, dirs, files in walk_once(base):
            relative = Path(root).relative_to(base).as_posix()
            if "config.json" in files and any(f.endswith(".safetensors") for f in files):
                names.add(relative)
                dirs.clear()
                continue
            names.update(f if relative == "." else f"{relative}/{f}" for f in files if f.endswith(".safetensors"))
    return sorted(names)


def encoder_choices() -> list[str]:
    """Condition encoder folders (a transformers folder with config.json) under models/hywu_encoders."""
    return _config_folders(ENCODERS)


def hunyuan3_choices() -> list[str]:
    """HunyuanImage-3 folders (config.json beside the weights) under models/hunyuan3."""
    return _config_folders(HUNYUAN3)


def _config_folders(folder_name: str) -> list[str]:
    names = set()
    for base in folder_paths.get_folder_paths(folder_name):
        for root, dirs, files in walk_once(base):
            if "config.json" in files:
                names.add(Path(root).relative_to(base).as_posix())
                dirs.clear()
    names.discard(".")
    return sorted(names)


def _resolve(folder_name: str, name: str, what: str, found) -> Path:
    """The entry `name` inside one of the `folder_name` model folders; refuses paths outside them."""
    bases = folder_paths.get_folder_paths(folder_name)
    for base in bases:
        root = Path(os.path.abspath(base))
        candidate = Path(os.path.normpath(root / name))  # lexical: links inside the folder may point anywhere
        if candidate != root and root not in candidate.parents:
            raise ValueError(f"{what} {name!r} points outside the model folder {root}; "
                             f"choose an entry listed under models/{folder_name}")
        if found(candidate):
            return candidate
    raise ValueError(f"{what} {name!r} not found in {', '.join(bases)}; put it there and refresh the node list")


def resolve_generator(name: str) -> Path:
    """The generator file or official folder `name` names inside models/hywu."""
    return _resolve(GENERATORS, name, "generator",
                    lambda path: path.is_file() or (path / "config.json").is_file())


def resolve_encoder(name: str) -> Path:
    """The condition encoder folder `name` names inside models/hywu_encoders."""
    return _resolve(ENCODERS, name, "condition encoder", lambda path: (path / "config.json").is_file())


def resolve_hunyuan3(name: str) -> Path:
    """The HunyuanImage-3 folder `name` names inside models/hunyuan3."""
    return _resolve(HUNYUAN3, name, "HunyuanImage-3 folder", lambda path: (path / "config.json").is_file())
