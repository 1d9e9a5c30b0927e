"""`python -m hywu_core generate-lora`: condition file -> generated LoRA file (paper §3.3-3.5).

    python -m hywu_core generate-lora --generator PATH --condition COND.safetensors \\
        --out LORA.safetensors [--format official|comfy] [--index I] [--device DEV]

COND.safetensors holds "condition" (B, L, D) or (B, 1, L, D) and optionally "condition_mask"
(B, L), nonzero = real token.

--format official (default): the dict the release's generator forward returns, batch axis first:
    "{prefix}{layer}.{module}.lora_A"  (B, [E,] r, d_in)
    "{prefix}{layer}.{module}.lora_B"  (B, [E,] d_out, r)
    "scale"                            scalar alpha / rank
--format comfy: ComfyUI LoRA keys (lora_up / lora_down / alpha), one LoRA per file. With B > 1,
    --index I writes condition I to --out; without --index every condition i goes to
    "<out stem>_<i>.safetensors" next to --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

FORMATS = ("official", "comfy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generator", required=True, type=Path,
                        help="HY-WU generator .safetensors file, or an official release folder")
    parser.add_argument("--condition", required=True, type=Path,
                        help='.safetensors with "condition" (B, L, D) or (B, 1, L, D) [and "condition_mask" (B, L)]')
    parser.add_argument("--out", required=True, type=Path, help="output LoRA .safetensors")
    parser.add_argument("--format", choices=FORMATS, default="official",
                        help="official: the release's lora_A/lora_B/scale dict (default); comfy: ComfyUI LoRA keys")
    parser.add_argument("--index", type=int, default=None,
                        help="comfy format, batch > 1: write only this condition (default: one file per condition)")
    parser.add_argument("--device", default="cpu", help="torch device to generate on (default cpu)")


def read_condition(path: Path):
    """(condition (B, L, D), mask (B, L) bool or None) from a condition .safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error
    if "condition" not in tensors:
        raise ValueError(f'{path}: no "condition" tensor (found {sorted(tensors)}); '
                         'save the condition under the key "condition"')
    cond = tensors["condition"]
    if cond.dim() == 4 and cond.shape[1] == 1:
        cond = cond[:, 0]
    if cond.dim() != 3:
        raise ValueError(f'{path}: "condition" has shape {tuple(cond.shape)}; expected (B, L, D) or (B, 1, L, D)')
    mask = tensors.get("condition_mask")
    if mask is not None:
        if tuple(mask.shape) != tuple(cond.shape[:2]):
            raise ValueError(f'{path}: "condition_mask" has shape {tuple(mask.shape)}; expected {tuple(cond.shape[:2])}')
        mask = mask != 0
    return cond, mask


def official_state_dict(bundle) -> dict:
    """The release's output dict: per module lora_A / lora_B with the batch axis first, plus "scale"."""
    import torch

    out = {}
    for path in bundle.A:
        out[f"{path}.lora_A"] = bundle.A[path].detach().cpu().contiguous()
        out[f"{path}.lora_B"] = bundle.B[path].detach().cpu().contiguous()
    some = next(iter(out.values()))
    out["scale"] = torch.tensor(bundle.scale, dtype=some.dtype)
    return out


def write_outputs(bundle, args) -> list[Path]:
    from safetensors.torch import save_file

    if args.format == "official":
        if args.index is not None:
            raise ValueError("--index applies to --format comfy only (the official format keeps the whole batch)")
        save_file(official_state_dict(bundle), str(args.out), metadata={"format": "hywu-official-lora"})
        return [args.out]
    n = bundle.batch_size
    if args.index is not None:
        if not 0 <= args.index < n:
            raise ValueError(f"--index {args.index} is out of range for a batch of {n} conditions")
        items = [(args.index, args.out)]
    elif n == 1:
        items = [(0, args.out)]
    else:
        items = [(i, args.out.with_name(f"{args.out.stem}_{i}{args.out.suffix}")) for i in range(n)]
    for i, path in items:
        state = {k: v.detach().cpu().contiguous() for k, v in bundle.to_comfy_state_dict(i).items()}
        save_file(state, str(path))
    return [path for _, path in items]


def run(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import GeneratorFileError, load_generator

    try:
        generator = load_generator(args.generator, device=args.device)
        cond, mask = read_condition(args.condition)
        with torch.no_grad():
            bundle = generator.generate(cond.to(args.device), None if mask is None else mask.to(args.device))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        written = write_outputs(bundle, args)
    except (GeneratorFileError, ValueError) as error:
        print(f"hywu generate-lora: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
