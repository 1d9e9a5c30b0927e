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


def interleaved(variants: dict, repeats: int, setup: dict | None = None) -> dict[str, float]:
    """Median seconds of each variant, run in turn (a, b, a, b, ...) `repeats` times after one warm-up each.

    setup[name], where given, runs untimed before every call of that variant (e.g. loading its model,
    so that what the previous variant left loaded does not count against it)."""
    setup = setup or {}
    for name, fn in variants.items():
        setup.get(name, lambda: None)()
        fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            setup.get(name, lambda: None)()
            times[name].append(timed(fn))
    return {name: statistics.median(values) for name, values in times.items()}
