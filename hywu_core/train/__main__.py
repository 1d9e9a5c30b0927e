"""`python -m hywu_core.train CONFIG [--resume [STATE]]` (and `./hywu train`, `python -m hywu_core train`).

Under `torchrun --nproc_per_node=N -m hywu_core.train CONFIG` every rank runs this; the generator
is sharded with FSDP2 and rank 0 writes the outputs (§3.7).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hywu_core.train.config import load_config
from hywu_core.train.loop import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="training config (TOML), e.g. configs/train/demo.toml")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="STATE",
                        help="continue from the newest complete checkpoint of the run (or from this "
                             "step_<N>.state.safetensors file), bit for bit")


def run(args) -> int:
    try:
        config = load_config(args.config)
        result = train(config, resume=args.resume)
    except (ValueError, FileNotFoundError) as error:
        print(f"hywu train: {error}", file=sys.stderr)
        return 2
    if result.is_main and result.losses:
        print(f"[hywu] trained to step {result.losses[-1][0]} (loss {result.losses[-1][1]:.5f}, "
              f"{result.steps_per_second:.2f} steps/s); generator: {result.generator_file}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hywu_core.train",
                                     description="train a HY-WU generator through a frozen backbone (paper §3.6)")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
