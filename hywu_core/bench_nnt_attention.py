"""Factorized vs full self-attention in the NNT at the paper's token shape (§3.5, Table 2).

    python -m hywu_core.bench_nnt_attention [--width 64] [--depth 2] [--heads 4] [--repeats 3]

Tokens (l, s, r, d) = (32, 24, 16, 128) as in Table 2, a small NNT width. "factorized" attends
over l and over s*r separately; "full" is the same NNT with attention="full": one self-attention
over all l*s*r = 12288 latent positions. Prints parameter counts, the median generation time of
each (same machine, same run) and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from .nnt import NNT, NNTConfig

TABLE2 = {"l": 32, "s": 24, "r": 16, "d": 128}


def table2_layout():
    """A rank-anchored layout with Table 2's token shape: 32 blocks of four 384 x 384 Linears, d = 128."""
    from .targets import TargetBlock, TargetModule, TargetSpec
    from .tokenizer import make_layout

    modules = tuple(TargetModule(name=f"proj{i}", d_in=384, d_out=384) for i in range(4))
    spec = TargetSpec(blocks=tuple(TargetBlock(prefix=f"blocks.{b}", modules=modules) for b in range(TABLE2["l"])))
    layout = make_layout(spec, TABLE2["r"], kind="rank_anchored", token_dim=TABLE2["d"])
    shape = (layout.num_layers, layout.tokens_per_layer, layout.rank, layout.token_dim)
    if shape != tuple(TABLE2.values()):
        raise RuntimeError(f"the Table 2 layout came out as {shape}, not {tuple(TABLE2.values())}")
    return layout


def time_generation(model: NNT, cond: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        model(cond)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(cond)
            if cond.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    layout = table2_layout()
    cond = torch.randn(1, args.cond_len, args.width, device=args.device)
    l, s, r, d = (layout.num_layers, layout.tokens_per_layer, layout.rank, layout.token_dim)
    print(f"NNT at Table 2 token shape l={l} s={s} r={r} d={d} (l*s*r = {l * s * r} latent positions), "
          f"width={args.width} depth={args.depth} heads={args.heads}, condition length {args.cond_len}, "
          f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {}
    for attention in ("factorized", "full"):
        config = NNTConfig(cond_dim=args.width, width=args.width, depth=args.depth, heads=args.heads, attention=attention)
        model = NNT(config, layout).to(args.device).eval()
        params = sum(p.numel() for p in model.parameters())
        seconds = time_generation(model, cond, args.repeats)
        results[attention] = seconds
        print(f"  {attention:<10}  parameters {params:>9,d}   generation {seconds * 1000:9.1f} ms "
              f"(median of {args.repeats})")
    print(f"  full / factorized generation time: {results['full'] / results['factorized']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
