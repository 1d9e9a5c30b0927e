"""Generated LoRAs written as files: ComfyUI LoRAs and the official release's output dict (paper §3.4).

    comfy_state_dict   one item's LoRA in ComfyUI's key format (lora_up / lora_down / alpha): what
                       the stock LoraLoader reads and LORA_MODEL carries
    save_comfy_lora    that as .safetensors, with the item's provenance in the metadata
    check_filename_prefix  the Save LoRA node's prefix must end in a file name
    official_state_dict / save_official_lora
                       the release's generator output, batch axis first:
                       "{module}.lora_A" (B, [E,] r, d_in), "{module}.lora_B" (B, [E,] d_out, r),
                       "scale" alpha / rank

The Save LoRA node and `./hywu generate-lora` both write through here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from hywu_core.lora import LoRABundle

OFFICIAL_FORMAT = "hywu-official-lora"


def comfy_state_dict(bundle: LoRABundle, row: int) -> dict[str, Tensor]:
    """Item `row`'s LoRA in ComfyUI's key format, on the CPU, contiguous."""
    return {key: value.detach().cpu().contiguous() for key, value in bundle.to_comfy_state_dict(row).items()}


def provenance_metadata(bundle: LoRABundle, item: dict) -> dict[str, str]:
    """safetensors metadata for one generated LoRA: generator, instruction, source digest, rank, alpha."""
    return {"hywu.generator": item.get("generator", ""), "hywu.instruction": item.get("instruction", ""),
            "hywu.source_sha256": item.get("source", ""), "hywu.rank": str(bundle.rank),
            "hywu.alpha": repr(bundle.alpha), "hywu.item": json.dumps(item)}


def check_filename_prefix(prefix: str) -> str:
    """`prefix` if its last component names a file: not blank, not only dots.

    ComfyUI 0.3.75 fact: folder_paths.get_save_image_path names the file after
    os.path.basename(os.path.normpath(prefix)), so "" or ".." would write hidden "._00001_" files."""
    name = os.path.basename(os.path.normpath(prefix)) if isinstance(prefix, str) else ""
    if not name.strip() or not name.strip("."):
        raise ValueError(f"filename_prefix {prefix!r} names no file: give a path that ends in a file name, "
                         "such as 'hywu/my_edit'")
    return prefix


def save_comfy_lora(path: str | Path, bundle: LoRABundle, row: int, item: dict | None = None) -> Path:
    """Item `row` as a standard ComfyUI LoRA file; `item` (its provenance record) goes into the metadata."""
    path = Path(path)
    save_file(comfy_state_dict(bundle, row), str(path), metadata=provenance_metadata(bundle, item or {}))
    return path


def official_state_dict(bundle: LoRABundle) -> dict[str, Tensor]:
    """The release's output dict: per module lora_A / lora_B with the batch axis first, plus "scale"."""
    out = {}
    for path in bundle.A:
        out[f"{path}.lora_A"] = bundle.A[path].detach().cpu().contiguous()
        out[f"{path}.lora_B"] = bundle.B[path].detach().cpu().contiguous()
    some = next(iter(out.values()))
    out["scale"] = torch.tensor(bundle.scale, dtype=some.dtype)
    return out


def save_official_lora(path: str | Path, bundle: LoRABundle) -> Path:
    """The whole batch in the release's key names."""
    path = Path(path)
    save_file(official_state_dict(bundle), str(path), metadata={"format": OFFICIAL_FORMAT})
    return path
