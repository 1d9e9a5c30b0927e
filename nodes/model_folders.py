"""ComfyUI model folders the pack reads: models/hywu (generators) and models/hywu_encoders.

folder_paths facts (ComfyUI 0.3.75): extra_model_paths.yaml is applied before custom nodes
load, and add_model_folder_path() creates a missing entry with an empty extension set, which
get_filename_list() treats as "every file"; so we set the extensions ourselves.
"""
import os
from pathlib import Path

import folder_paths

GENERATORS = "hywu"
ENCODERS = "hywu_encoders"


def register() -> None:
    for name in (GENERATORS, ENCODERS):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name), is_default=True)
    paths, _ = folder_paths.folder_names_and_paths[GENERATORS]
    folder_paths.folder_names_and_paths[GENERATORS] = (paths, {".safetensors"})


def generator_choices() -> list[str]:
    """Our single-file generators, and official release folders (config.json + safetensors) by folder name."""
    names = set()
    for base in folder_paths.get_folder_paths(GENERATORS):
        for root, dirs, files in os.walk(base, followlinks=True):
            relative = Path(root).relative_to(base).as_posix()
            if "config.json" in files and any(f.endswith(".safetensors") for f in files):
                names.add(relative)
                dirs.clear()
                continue
            names.update(f if relative == "." else f"{relative}/{f}" for f in files if f.endswith(".safetensors"))
    return sorted(names)


def resolve_generator(name: str) -> Path:
    """The file or official folder `name` names inside models/hywu; refuses paths outside it."""
    bases = folder_paths.get_folder_paths(GENERATORS)
    for base in bases:
        root = Path(base).resolve()
        candidate = (root / name).resolve()
        if candidate != root and root not in candidate.parents:
            raise ValueError(f"generator {name!r} points outside the model folder {root}; "
                             "choose a file listed under models/hywu")
        if candidate.is_file() or (candidate / "config.json").is_file():
            return candidate
    raise ValueError(f"generator {name!r} not found in {', '.join(bases)}; put the generator .safetensors "
                     "(or the official HY-WU folder) there and refresh the node list")
