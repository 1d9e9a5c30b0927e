"""Device and dtype choices shared by the loader nodes ("auto" follows ComfyUI's model management)."""
import torch

import comfy.model_management as mm

DEVICES = ["auto", "cpu"]
DTYPES = ["auto", "float32", "bfloat16", "float16"]


def resolve_device(choice: str) -> torch.device:
    """"auto": ComfyUI's compute device (the GPU when there is one, the CPU under --cpu)."""
    return torch.device("cpu") if choice == "cpu" else mm.get_torch_device()


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    """"auto": float32 on the CPU, bfloat16 on a GPU that supports it, else float32."""
    if choice != "auto":
        return getattr(torch, choice)
    if device.type != "cpu" and mm.should_use_bf16(device):
        return torch.bfloat16
    return torch.float32
