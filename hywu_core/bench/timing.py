"""Wall-clock timing for the benches: medians of variants run in turn, so drift hits them all alike."""
from __future__ import annotations

import statistics
import time

import torch


def timed(fn) -> float:
    """Seconds of one call, the device synchronised before and after."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved(variants: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each variant, run in turn (a, b, a, b, ...) `repeats` times after one warm-up each."""
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    return {name: statistics.median(values) for name, values in times.items()}
