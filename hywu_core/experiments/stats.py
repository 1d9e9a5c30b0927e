"""Bootstrap 95% intervals for the reports (paper §5 figures are point estimates; ours carry their spread).

Every interval is a seeded percentile bootstrap (Efron & Tibshirani 1993, ch. 13): RESAMPLES
resamples of the units with replacement, the statistic on each, the 2.5th and 97.5th percentiles
(torch.quantile, linear interpolation). Resampling is stratified by group (an edit's direction,
a sample's task): each resample keeps every group's count, so a macro average over groups never
loses a group. The same seed and the same groups give the same resample indices, so two methods
measured on the same edits are resampled together (a paired difference). A group of one unit
never varies under resampling, so then there is no interval: its bounds are nan (and a verdict on
it is "inconclusive").

    mean_interval(x)                      the mean over units
    macro_interval(x, groups)             the mean of per-group means (groups of different scale
                                          or size weigh equally)
    paired_difference(a, b, groups)       macro(a) - macro(b) on the same resamples
    bootstrap(columns, groups, statistic) any statistic of the per-group means of named columns
    pair_mean_interval(values, mask, groups)
                                          the mean of values[i, j] over the pairs (i, j) in mask,
                                          resampling units (not pairs): a unit drawn k times weighs
                                          k, pairs of a unit with itself are left out

Pure torch (float64), deterministic; no models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap percentile interval and the number of units it rests on."""

    estimate: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n}

    def text(self, spec: str = "+.3f") -> str:
        return f"{self.estimate:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def _groups(groups, n: int) -> tuple[list[str], list[Tensor]]:
    labels = ["all"] * n if groups is None else list(groups)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} group labels for {n} units")
    names = list(dict.fromkeys(labels))
    return names, [torch.tensor([i for i, g in enumerate(labels) if g == name]) for name in names]


def stratified_indices(groups, resamples: int = RESAMPLES, seed: int = SEED) -> list[Tensor]:
    """Per group (in first-seen order), a (resamples, count) tensor of unit indices drawn with
    replacement from that group's units."""
    names, members = _groups(groups, len(groups))
    generator = torch.Generator().manual_seed(seed)
    return [m[torch.randint(len(m), (resamples, len(m)), generator=generator)] for m in members]


def bootstrap(columns: dict[str, Tensor], groups, statistic: Callable[[dict[str, Tensor]], Tensor],
              resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> Interval:
    """`statistic` maps {name: (R, G) per-group means} to (R,); it is applied to the sample itself
    (R = 1: the estimate) and to `resamples` stratified resamples (the interval). Every column is
    resampled with the same indices."""
    values = {k: torch.as_tensor(v, dtype=torch.float64).flatten() for k, v in columns.items()}
    n = len(next(iter(values.values())))
    if n == 0 or any(len(v) != n for v in values.values()):
        raise ValueError(f"bootstrap needs columns of one non-zero length, got {[len(v) for v in values.values()]}")
    groups = ["all"] * n if groups is None else list(groups)
    _, members = _groups(groups, n)
    point = {k: torch.stack([v[m].mean() for m in members])[None] for k, v in values.items()}
    estimate = float(statistic(point)[0])
    if min(len(m) for m in members) < 2:   # a group of one never varies: no interval to speak of
        return Interval(estimate, float("nan"), float("nan"), n)
    indices = stratified_indices(groups, resamples, seed)
    resampled = {k: torch.stack([v[i].mean(1) for i in indices], dim=1) for k, v in values.items()}
    low, high = torch.quantile(statistic(resampled), torch.tensor([(1 - level) / 2, (1 + level) / 2],
                                                                  dtype=torch.float64)).tolist()
    return Interval(estimate, low, high, n)


def mean_interval(values: Tensor, **options) -> Interval:
    """The mean over units, with its interval."""
    return bootstrap({"x": values}, None, lambda m: m["x"].mean(1), **options)


def macro_interval(values: Tensor, groups, **options) -> Interval:
    """The average of per-group means (stratified resampling), with its interval."""
    return bootstrap({"x": values}, groups, lambda m: m["x"].mean(1), **options)


def paired_difference(a: Tensor, b: Tensor, groups=None, **options) -> Interval:
    """macro(a) - macro(b) for two methods measured on the same units (same resamples for both)."""
    return bootstrap({"a": a, "b": b}, groups, lambda m: (m["a"] - m["b"]).mean(1), **options)


def pair_mean_interval(values: Tensor, masks: dict[str, Tensor], groups, differences=(),
                       resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> dict[str, Interval]:
    """For each (N, N) boolean mask, the mean of values[i, j] over its pairs with i != j, resampling
    the N units (stratified by `groups`), not the pairs; and "<a> - <b>" for each (a, b) in
    `differences`, on the same resamples. A resample weighs unit i by how often it was drawn (w):
    a mask's mean is w^T (M * V) w / w^T M w with M's diagonal cleared, so a unit is never paired
    with a copy of itself. n is the number of pairs in the mask(s)."""
    values = torch.as_tensor(values, dtype=torch.float64)
    n = values.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)
    masks = {k: (torch.as_tensor(m).bool() & off).double() for k, m in masks.items()}
    groups = list(groups)
    single = min(len(m) for m in _groups(groups, n)[1]) < 2
    draws = torch.cat(stratified_indices(groups, resamples, seed), dim=1)
    weights = torch.zeros(resamples, n, dtype=torch.float64)
    weights.scatter_add_(1, draws, torch.ones(draws.shape, dtype=torch.float64))

    def means(w: Tensor) -> dict[str, Tensor]:
        out = {}
        for k, m in masks.items():
            total = ((w @ m) * w).sum(1)
            mean = ((w @ (m * values)) * w).sum(1) / total.clamp_min(1e-300)
            out[k] = torch.where(total > 0, mean, torch.full_like(mean, float("nan")))
        return out

    point, resampled = means(torch.ones(1, n, dtype=torch.float64)), means(weights)
    quantiles = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)

    def interval(estimate: Tensor, samples: Tensor, count: int) -> Interval:
        samples = samples[~samples.isnan()]
        low, high = (torch.quantile(samples, quantiles).tolist() if samples.numel() and not single
                     else [float("nan")] * 2)
        return Interval(float(estimate[0]), low, high, count)

    result = {k: interval(point[k], resampled[k], int(masks[k].sum())) for k in masks}
    for a, b in differences:
        result[f"{a} - {b}"] = interval(point[a] - point[b], resampled[a] - resampled[b],
                                        int(masks[a].sum() + masks[b].sum()))
    return result
