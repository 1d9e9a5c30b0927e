"""`comfy` imported as a library (no server): training, the experiments, the bench and the demo retraining.

ComfyUI 0.3.75 facts used here:
- comfy.model_management picks its device when first imported, from comfy.cli_args.args
  (args.cpu); import_comfy sets that first. cli_args parses no argv unless comfy.options says so.
- ComfyUI is not an installed package: its folder (COMFYUI_DIR from ./hywu, or a user's
  COMFYUI_PATH) goes on sys.path.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import torch


class ComfyUINotFound(FileNotFoundError):
    """No ComfyUI folder to import `comfy` from; the message says how to name one."""


def import_comfy(device: str = "auto"):
    """Make `comfy` importable (COMFYUI_DIR / COMFYUI_PATH) and fix its device before its first import."""
    if "comfy.model_management" not in sys.modules:
        if importlib.util.find_spec("comfy") is None:
            folder = os.environ.get("COMFYUI_DIR") or os.environ.get("COMFYUI_PATH")
            if not folder or not (Path(folder) / "comfy").is_dir():
                raise ComfyUINotFound("ComfyUI is not importable: run through ./hywu (it sets COMFYUI_DIR) or set "
                                      "COMFYUI_PATH to your ComfyUI folder")
            sys.path.insert(0, str(Path(folder).resolve()))
        from comfy.cli_args import args

        if device == "cpu" or not torch.cuda.is_available():
            args.cpu = True
    import comfy.model_management

    return comfy.model_management
