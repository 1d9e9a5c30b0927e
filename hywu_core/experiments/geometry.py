"""geometry (paper §5.4): generated LoRAs are organised by what the input asks for.

Each held-out edit's generated LoRA is taken as its full weight update dW = scale * B A over every
adapted module; similarity is the cosine of those updates (computed from r x r Gram products,
never forming dW). For each LoRA, its k nearest neighbours in that space: how often they share
the edit's direction, its conflicting opposite, or its source image, against the same rates
over all pairs (random pairs). The input side: cosine of the mean-pooled condition U, for the
kNN pairs vs random pairs. The map is a 2-D classical MDS of the update cosines.
"""
from __future__ import annotations

import torch

from hywu_core.demo.edits import DIRECTIONS, direction
from hywu_core.experiments import figures
from hywu_core.experiments.context import ExperimentContext
from hywu_core.lora import LoRABundle

K = 5


def update_cosines(bundle: LoRABundle) -> torch.Tensor:
    """(N, N) cosine between the weight updates B_i A_i of all rows, over every module."""
    n = bundle.batch_size
    inner = torch.zeros(n, n, dtype=torch.float64)
    for path in bundle.spec.module_paths():
        a = bundle.A[path].double().reshape(n, -1, bundle.A[path].shape[-1])   # (N, [E*]r, d_in)
        b = bundle.B[path].double()
        b = b.reshape(n, -1, b.shape[-2], b.shape[-1]).transpose(1, 2).reshape(n, b.shape[-2], -1)  # (N, d_out, [E*]r)
        inner += (torch.einsum("nor,mos->nmrs", b, b) * torch.einsum("nrd,msd->nmrs", a, a)).sum((-1, -2))
    norms = inner.diagonal().clamp_min(1e-300).sqrt()
    return (inner / norms[:, None] / norms[None, :]).float()


def neighbour_rates(similarity: torch.Tensor, relations: dict[str, torch.Tensor], k: int = K) -> dict:
    n = similarity.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)
    masked = similarity.masked_fill(~off, float("-inf"))
    knn = masked.topk(min(k, n - 1), dim=1).indices
    rates = {}
    for name, relation in relations.items():
        rates[name] = {"knn": float(relation.gather(1, knn).float().mean()), "random": float(relation[off].float().mean())}
    return rates, knn


def mds(similarity: torch.Tensor) -> torch.Tensor:
    distance2 = (2 - 2 * similarity).clamp_min(0).double()
    n = distance2.shape[0]
    centre = torch.eye(n, dtype=torch.float64) - 1.0 / n
    gram = -0.5 * centre @ distance2 @ centre
    values, vectors = torch.linalg.eigh(gram)
    return (vectors[:, -2:] * values[-2:].clamp_min(0).sqrt()).flip(1).float()


def run(ctx: ExperimentContext) -> tuple[str, dict]:
    held = ctx.heldout
    bundle = ctx.generate(held)
    similarity = update_cosines(bundle.to("cpu"))
    tasks = held.tasks
    pair_of = [direction(t).pair for t in tasks]
    relations = {
        "same direction": torch.tensor([[a == b for b in tasks] for a in tasks]),
        "conflicting direction (same pair)": torch.tensor([[pa == pb and a != b for b, pb in zip(tasks, pair_of)]
                                                           for a, pa in zip(tasks, pair_of)]),
        "same source image": torch.tensor([[a == b for b in held.images] for a in held.images]),
    }
    rates, knn = neighbour_rates(similarity, relations)
    cond, mask = ctx.encoder.encode(held.source, held.instructions)
    pooled = (cond.float() * mask[..., None].float()).sum(1) / mask.float().sum(1, keepdim=True)
    pooled = torch.nn.functional.normalize(pooled.cpu(), dim=1)
    condition = pooled @ pooled.T
    n = len(held)
    off = ~torch.eye(n, dtype=torch.bool)
    within = [float(similarity[relations["same direction"] & off].mean()),
              float(similarity[relations["conflicting direction (same pair)"]].mean()),
              float(similarity[~relations["same direction"] & ~relations["conflicting direction (same pair)"]].mean())]
    results = {"k": K, "edits": n, "neighbour_rates": rates,
               "condition_cosine": {"knn": float(condition.gather(1, knn).mean()), "random": float(condition[off].mean())},
               "update_cosine": {"same direction": within[0], "conflicting direction": within[1],
                                 "other directions": within[2]}}
    figures.scatter(ctx.out / "geometry_map.png", "generated LoRA updates (MDS of cosines), by direction",
                    mds(similarity), tasks)
    order = [i for t in DIRECTIONS for i in range(n) if tasks[i] == t]
    figures.matrix(ctx.out / "geometry_update_cosine.png", "update cosine, edits sorted by direction",
                   [tasks[i] if k % max(1, n // len(DIRECTIONS)) == 0 else "" for k, i in enumerate(order)],
                   similarity[order][:, order])
    lines = [f"| relation to the query edit | share among its {K} nearest LoRAs | share among all pairs |",
             "|---|---|---|"]
    lines += [f"| {name} | {v['knn']:.2f} | {v['random']:.2f} |" for name, v in rates.items()]
    c = results["condition_cosine"]
    u = results["update_cosine"]
    text = "\n".join(["## geometry (§5.4)", "", __doc__.split("\n\n", 1)[1].strip(), "", f"{n} held-out edits.", "",
                      *lines, "",
                      f"Condition cosine (mean-pooled U): kNN pairs {c['knn']:.3f}, random pairs {c['random']:.3f}.",
                      f"Mean update cosine: same direction {u['same direction']:+.3f}, conflicting direction "
                      f"{u['conflicting direction']:+.3f}, other directions {u['other directions']:+.3f}.", "",
                      "Figures: `geometry_map.png`, `geometry_update_cosine.png`."])
    return text, results
