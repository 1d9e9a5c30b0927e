"""Where the generator's time goes (paper §3.5, Table 2): measured per part, beside a FLOP count.

One NNT forward is split by forward hooks on its modules into

    inter_attn   self-attention over the l layers, for every within-layer position
    intra_attn   self-attention over the S = s r / g within-layer positions, for every layer
    self_attn    the single self-attention over all l S positions (attention="full" only)
    cross_attn   every latent position reading the condition
    ffn          the feed-forward layers
    norms        the RMSNorms
    condition    the condition's input projection and norm
    heads        the A / B output heads
    other        the rest of the forward: parameter embeddings, RoPE angle tables, reshapes,
                 residual adds, the token scatter (total minus the hooked parts)

and each part's FLOPs are counted from the shapes (multiply-adds x 2; attention: projections plus
the two score / value products). Timing a part with hooks synchronises around it, so the parts are
taken in their own forward passes and the total (unhooked) in separate ones, interleaved. Why full
attention is not "attention FLOPs" times slower follows from the table: the parts that both
variants share (projections, FFN, heads, other) stay, and at small widths they run below the
machine's FLOP rate.
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch

from hywu_core.bench.attention import token_layout
from hywu_core.bench.timing import interleaved
from hywu_core.nnt import NNT, NNTConfig

PARTS = ("inter_attn", "intra_attn", "self_attn", "cross_attn", "ffn", "norms", "condition", "heads", "other")


def part_of(name: str) -> str | None:
    """The part a module (by its path in the NNT) is timed under, None for containers."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("inter_attn", "intra_attn", "self_attn", "cross_attn", "ffn"):
        return leaf
    if leaf.startswith("norm_") and name.startswith("blocks.") or leaf == "norm_out":
        return "norms"
    if leaf in ("cond_in", "cond_norm"):
        return "condition"
    if leaf in ("head_A", "head_B"):
        return "heads"
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_parts(model: NNT, cond: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per part over `repeats` hooked forwards (one warm-up first); "other" excluded."""
    device = cond.device
    samples: dict[str, list[float]] = defaultdict(list)
    current: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}
    handles = []

    def pre(module, args):
        _sync(device)
        starts[id(module)] = time.perf_counter()

    def post_for(part):
        def post(module, args, output):
            _sync(device)
            current[part] += time.perf_counter() - starts.pop(id(module))
        return post

    for name, module in model.named_modules():
        part = part_of(name)
        if part is not None:
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post_for(part))]
    try:
        with torch.no_grad():
            for run in range(repeats + 1):
                current.clear()
                model(cond)
                if run:
                    for part, seconds in current.items():
                        samples[part].append(seconds)
    finally:
        for handle in handles:
            handle.remove()
    return {part: sorted(values)[len(values) // 2] for part, values in samples.items()}


def part_flops(model: NNT, cond_len: int) -> dict[str, float]:
    """FLOPs (2 x multiply-adds) of one forward per part, batch 1, from the model's sizes."""
    cfg = model.config
    C, P, l, S, L = cfg.width, model.l * model.S, model.l, model.S, cond_len
    proj = 4 * P * C * C                      # q, k, v, out over the latent
    flops = defaultdict(float)
    for _ in range(cfg.depth):
        if cfg.attention == "factorized":
            flops["inter_attn"] += 2 * (proj + 2 * P * l * C)
            flops["intra_attn"] += 2 * (proj + 2 * P * S * C)
        else:
            flops["self_attn"] += 2 * (proj + 2 * P * P * C)
        flops["cross_attn"] += 2 * (2 * P * C * C + 2 * L * C * C + 2 * P * L * C)
        flops["ffn"] += 2 * (2 * P * C * cfg.ffn_dim)
    flops["condition"] = 2 * L * cfg.cond_dim * C
    flops["heads"] = 2 * (P * cfg.rank_group) * (C // cfg.rank_group) * model.d
    return dict(flops)


def breakdown(l: int, s: int, r: int, d: int, width: int, depth: int = 2, heads: int = 4, cond_len: int = 32,
              repeats: int = 3, device="cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Both attention variants at token shape (l, s, r, d): total ms (unhooked, interleaved), ms and
    GFLOP per part, and the full / factorized ratios of time and of FLOPs."""
    torch.manual_seed(0)
    layout = token_layout(l, s, r, d)
    cond = torch.randn(1, cond_len, width, device=device, dtype=dtype)
    models = {attention: NNT(NNTConfig(cond_dim=width, width=width, depth=depth, heads=heads, attention=attention),
                             layout).to(device=device, dtype=dtype).eval()
              for attention in ("factorized", "full")}
    with torch.no_grad():
        totals = interleaved({name: (lambda m=m: m(cond)) for name, m in models.items()}, repeats)
    variants = {}
    for name, model in models.items():
        parts = time_parts(model, cond, repeats)
        parts["other"] = max(totals[name] - sum(parts.values()), 0.0)
        flops = part_flops(model, cond_len)
        variants[name] = {"ms_total": totals[name] * 1000,
                          "ms": {p: parts[p] * 1000 for p in PARTS if p in parts},
                          "share": {p: parts[p] / totals[name] for p in PARTS if p in parts},
                          "gflop": {p: flops[p] / 1e9 for p in PARTS if p in flops},
                          "gflop_total": sum(flops.values()) / 1e9}
    fact, full = variants["factorized"], variants["full"]
    attention_flops = {name: sum(v["gflop"].get(p, 0) for p in ("inter_attn", "intra_attn", "self_attn"))
                       for name, v in variants.items()}
    return {"l": l, "s": s, "r": r, "d": d, "width": width, "depth": depth, "heads": heads, "cond_len": cond_len,
            "positions": l * s * r, "dtype": str(dtype).removeprefix("torch."), "variants": variants,
            "full_over_factorized": {"time": full["ms_total"] / fact["ms_total"],
                                     "flops": full["gflop_total"] / fact["gflop_total"],
                                     "self_attention_flops": attention_flops["full"] / attention_flops["factorized"]}}


def print_breakdown(row: dict) -> None:
    ratio = row["full_over_factorized"]
    print(f"  l={row['l']} s={row['s']} r={row['r']} d={row['d']}, width {row['width']}, depth {row['depth']}: "
          f"full / factorized: time {ratio['time']:.1f}x, all FLOPs {ratio['flops']:.1f}x, "
          f"self-attention FLOPs {ratio['self_attention_flops']:.1f}x")
    for name, v in row["variants"].items():
        parts = ", ".join(f"{p} {v['ms'][p]:.1f} ms ({v['share'][p] * 100:.0f}%, {v['gflop'].get(p, 0):.2f} GFLOP)"
                          for p in PARTS if p in v["ms"])
        print(f"    {name}: {v['ms_total']:.1f} ms, {v['gflop_total']:.2f} GFLOP: {parts}")
