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

from hywu_core.condition import load_condition_file
from hywu_core.generated_lora import generate_lora
from hywu_core.generator_files import GeneratorFileError, load_generator
from hywu_core.lora_files import save_comfy_lora, save_official_lora

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


def write_outputs(generated, args) -> list[Path]:
    if args.format == "official":
        if args.index is not None:
            raise ValueError("--index applies to --format comfy only (the official format keeps the whole batch)")
        return [save_official_lora(args.out, generated.bundle)]
    n = generated.batch_size
    if args.index is not None:
        if not 0 <= args.index < n:
            raise ValueError(f"--index {args.index} is out of range for a batch of {n} conditions")
        items = [(args.index, args.out)]
    elif n == 1:
        items = [(0, args.out)]
    else:
        items = [(i, args.out.with_name(f"{args.out.stem}_{i}{args.out.suffix}")) for i in range(n)]
    return [save_comfy_lora(path, generated.bundle, i, generated.items[i]) for i, path in items]


def run(args: argparse.Namespace) -> int:
    try:
        generator = load_generator(args.generator, device=args.device)
        generated = generate_lora(generator, load_condition_file(args.condition))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        written = write_outputs(generated, args)
    except (GeneratorFileError, ValueError) as error:
        print(f"hywu generate-lora: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
