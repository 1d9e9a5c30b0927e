"""Training-state files for --resume (§3.6): safetensors tensors + JSON metadata, never pickle.

A checkpoint at step N is two files in <output>/checkpoints/:

    step_<N>.safetensors        the generator, in our generator format (hywu_core.generator_files)
    step_<N>.state.safetensors  what resuming needs besides the weights:
        tensors   "optim/<parameter name>/<key>"   AdamW moments and step counts (full, unsharded)
                  "rng/torch", "rng/cuda/<i>"       global RNG states
        metadata  format = "hywu-train-state", format_version = "1", and JSON for step,
                  optimizer param_groups, scheduler, data order, config, generator file name
                  (and the trained condition encoder's folder when it is trainable)

Both are written to a temporary name and renamed, the state file last: a state file on disk means
the whole checkpoint is complete, even when the run was killed right after.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT = "hywu-train-state"
FORMAT_VERSION = "1"
STATE_SUFFIX = ".state.safetensors"
_STEP = re.compile(r"step_(\d+)\.state\.safetensors$")


class TrainStateError(ValueError):
    """A training-state file that cannot be resumed from; the message names the file and the fix."""


def checkpoint_paths(folder: Path, step: int) -> tuple[Path, Path]:
    """(generator file, state file) of the checkpoint at `step`."""
    return folder / f"step_{step:07d}.safetensors", folder / f"step_{step:07d}{STATE_SUFFIX}"


def completed_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, state file) of every complete checkpoint in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.search(p.name))]
    return sorted(found)


def atomic_save(path: Path, tensors: dict, metadata: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    save_file(tensors, str(temporary), metadata=metadata)
    os.replace(temporary, path)


def rng_state() -> dict[str, torch.Tensor]:
    state = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state |= {f"rng/cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return state


def set_rng_state(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = sorted((int(k.rsplit("/", 1)[1]), v) for k, v in tensors.items() if k.startswith("rng/cuda/"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([v for _, v in cuda])


def save_train_state(path: Path, step: int, optimizer_state: dict, scheduler_state: dict, data_state: dict,
                     config_json: str, generator_file: str, encoder_folder: str = "") -> None:
    """Write the state file; `optimizer_state` is a full (unsharded) state dict keyed by parameter name."""
    tensors = {}
    for name, entries in optimizer_state["state"].items():
        for key, value in entries.items():
            tensors[f"optim/{name}/{key}"] = value.detach().cpu().contiguous() if torch.is_tensor(value) \
                else torch.tensor(value)
    tensors.update(rng_state())
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": str(step),
        "param_groups": json.dumps(optimizer_state["param_groups"]),
        "scheduler": json.dumps(scheduler_state),
        "data": json.dumps(data_state),
        "config": config_json,
        "generator": generator_file,
        "encoder": encoder_folder,
    }
    atomic_save(path, tensors, metadata)


def load_train_state(path: Path) -> dict:
    """The contents of a state file: step, optimizer (full state dict), scheduler, data, config,
    generator / encoder paths (resolved next to the state file), rng tensors."""
    path = Path(path)
    if not path.is_file():
        raise TrainStateError(f"no training state {path}; resume from a step_<N>{STATE_SUFFIX} file in the run's "
                              "checkpoints folder (or pass --resume alone for the newest one)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as error:
        raise TrainStateError(f"{path} is not a readable safetensors file ({error}); resume from an earlier "
                              "checkpoint") from error
    if metadata.get("format") != FORMAT or metadata.get("format_version") != FORMAT_VERSION:
        raise TrainStateError(f"{path} is not a HY-WU training state (format {metadata.get('format')!r} version "
                              f"{metadata.get('format_version')!r}; expected {FORMAT!r} version {FORMAT_VERSION})")
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            name, entry = key[len("optim/"):].rsplit("/", 1)
            state.setdefault(name, {})[entry] = value
    generator = path.parent / metadata["generator"]
    if not generator.is_file():
        raise TrainStateError(f"{path} belongs to generator file {generator}, which is missing; resume from an "
                              "earlier checkpoint")
    return {
        "step": int(metadata["step"]),
        "optimizer": {"state": state, "param_groups": json.loads(metadata["param_groups"])},
        "scheduler": json.loads(metadata["scheduler"]),
        "data": json.loads(metadata["data"]),
        "config": metadata["config"],
        "generator": generator,
        "encoder": path.parent / metadata["encoder"] if metadata.get("encoder") else None,
        "rng": {k: v for k, v in tensors.items() if k.startswith("rng/")},
    }
