"""Factorized vs full self-attention in the NNT (paper §3.5, Table 2): the one attention bench.

    python -m hywu_core.bench.attention [--width 64] [--depth 2] [--heads 4] [--repeats 3]

"factorized" attends over l and over s*r separately; "full" is the same NNT with
attention="full": one self-attention over all l*s*r latent positions. Token shapes (l, s, r, d)
grow up to Table 2's (32, 24, 16, 128); each prints the parameter counts and the median generation
time of both variants, timed interleaved in the same run, and their ratio. `./hywu bench` runs
the same measurement.
"""
from __future__ import annotations

import argparse

import torch

from hywu_core.bench.timing import interleaved
from hywu_core.nnt import NNT, NNTConfig
from hywu_core.targets import TargetBlock, TargetModule, TargetSpec
from hywu_core.tokenizer import ParameterLayout, make_layout

TABLE2 = (32, 24, 16, 128)
SHAPES = ((4, 8, 4, 64), (8, 8, 8, 64), (16, 16, 16, 64), TABLE2)
QUICK_SHAPES = ((4, 8, 4, 64), (8, 8, 8, 64))
VARIANTS = ("factorized", "full")


def token_layout(l: int, s: int, r: int, d: int) -> ParameterLayout:
    """A rank-anchored layout of token shape (l, s, r, d): l blocks of s/2 Linears d x d (one A and one B token each)."""
    modules = tuple(TargetModule(name=f"proj{i}", d_in=d, d_out=d) for i in range(s // 2))
    spec = TargetSpec(blocks=tuple(TargetBlock(prefix=f"blocks.{b}", modules=modules) for b in range(l)))
    layout = make_layout(spec, r, kind="rank_anchored", token_dim=d)
    shape = (layout.num_layers, layout.tokens_per_layer, layout.rank, layout.token_dim)
    if shape != (l, s, r, d):
        raise ValueError(f"token shape {(l, s, r, d)} came out as {shape}: s must be even")
    return layout


def table2_layout() -> ParameterLayout:
    return token_layout(*TABLE2)


def bench_attention(shapes, repeats: int, width: int = 64, depth: int = 2, heads: int = 4, cond_len: int = 32,
                    device: str = "cpu") -> list[dict]:
    """Per token shape: parameters and median generation ms of factorized and full attention, and their ratio."""
    rows = []
    for l, s, r, d in shapes:
        layout = token_layout(l, s, r, d)
        cond = torch.randn(1, cond_len, width, device=device)
        models = {attention: NNT(NNTConfig(cond_dim=width, width=width, depth=depth, heads=heads,
                                           attention=attention), layout).to(device).eval()
                  for attention in VARIANTS}
        with torch.no_grad():
            seconds = interleaved({name: (lambda m=m: m(cond)) for name, m in models.items()}, repeats)
        rows.append({"l": l, "s": s, "r": r, "d": d, "positions": l * s * r,
                     "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
                     "ms": {k: v * 1000 for k, v in seconds.items()},
                     "full_over_factorized": seconds["full"] / seconds["factorized"]})
    return rows


def print_rows(rows: list[dict]) -> None:
    for row in rows:
        print(f"  l={row['l']:>2} s={row['s']:>2} r={row['r']:>2} d={row['d']:>3} ({row['positions']:>5} positions): "
              f"factorized {row['ms']['factorized']:.1f} ms  full {row['ms']['full']:.1f} ms  "
              f"({row['full_over_factorized']:.1f}x); parameters {row['parameters']['factorized']:,d} vs "
              f"{row['parameters']['full']:,d}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--cond-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    print(f"NNT generation, factorized vs full attention: width={args.width} depth={args.depth} heads={args.heads}, "
          f"condition length {args.cond_len}, device {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, medians of {args.repeats} interleaved runs")
    print_rows(bench_attention(SHAPES, args.repeats, args.width, args.depth, args.heads, args.cond_len, args.device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
