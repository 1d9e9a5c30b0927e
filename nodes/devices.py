"""Device and dtype choices shared by the loader nodes ("auto" follows ComfyUI's model management).

ComfyUI 0.3.75 does not check V3 combo values (hywu_core.checks): a prompt may send any string,
so both are looked up in explicit tables and anything else is refused.
"""
import comfy.model_management as mm
import torch

from hywu_core.checks import one_of

DEVICES = ["auto", "cpu"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ["auto", *DTYPES]


def resolve_device(choice: str) -> torch.device:
    """"auto": ComfyUI's compute device (the GPU when there is one, the CPU under --cpu)."""
    return torch.device("cpu") if one_of(choice, DEVICES, "device") == "cpu" else mm.get_torch_device()


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    """"auto": float32 on the CPU, bfloat16 on a GPU that supports it, else float32."""
    if one_of(choice, DTYPE_CHOICES, "dtype") != "auto":
        return DTYPES[choice]
    if device.type != "cpu" and mm.should_use_bf16(device):
        return torch.bfloat16
    return torch.float32
