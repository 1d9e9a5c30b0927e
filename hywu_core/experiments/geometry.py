"""geometry (paper §5.4, Fig. 11): generated LoRAs are organised by what the input asks for.

Each evaluation edit's generated LoRA is taken as its full weight update dW = scale * B A over every
adapted module (an expert group: each expert's own update); similarity is the cosine of those
updates (from r x r Gram products, never forming dW). For each LoRA (a query) its K nearest
neighbours: the share that are of the query's direction, of the opposite direction of its pair,
or from its source image, against the same share over all other edits (random pairs); and the
mean cosine of the mean-pooled condition U (the input side, as the paper's image / text
similarity) over the neighbours against all other edits. Intervals resample queries (stratified
by direction; the neighbours stay those of the full set). The claim: kNN same-direction rate
minus random > 0 (and, as Fig. 11, kNN condition cosine minus random > 0). The map is a 2-D
classical MDS of the update cosines.
"""
from __future__ import annotations

import torch

from hywu_core.demo.edits import DIRECTIONS, PAIRS, direction
from hywu_core.experiments import figures, stats
from hywu_core.experiments.context import ExperimentContext
from hywu_core.experiments.verdicts import claim
from hywu_core.lora import LoRABundle

K = 5
SAME, OPPOSITE, SOURCE = "same direction", "opposite direction (same pair)", "same source image"
CLAIM = "LoRAs near each other in generated parameter space come from similar inputs, more than random pairs"


def update_cosines(bundle: LoRABundle) -> torch.Tensor:
    """(N, N) cosine between the weight updates B_i A_i of all rows, over every module (and expert)."""
    n = bundle.batch_size
    inner = torch.zeros(n, n, dtype=torch.float64)
    for path in bundle.spec.module_paths():
        a, b = bundle.A[path].double(), bundle.B[path].double()
        if a.dim() == 3:                       # (N, r, d_in), (N, d_out, r): one expert
            a, b = a[:, None], b[:, None]
        gram_b = torch.einsum("neor,meos->nmers", b, b)    # (N, N, E, r, r)
        gram_a = torch.einsum("nerd,mesd->nmers", a, a)
        inner += (gram_b * gram_a).sum((-1, -2, -3))
    norms = inner.diagonal().clamp_min(1e-300).sqrt()
    return (inner / norms[:, None] / norms[None, :]).float()


def nearest(similarity: torch.Tensor, k: int = K) -> torch.Tensor:
    """(N, k) indices of each item's k most similar other items."""
    n = similarity.shape[0]
    masked = similarity.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    return masked.topk(min(k, n - 1), dim=1).indices


def neighbour_rates(similarity: torch.Tensor, relations: dict[str, torch.Tensor], k: int = K):
    """Per query and relation: the share of its k nearest neighbours in the relation ("knn") and
    the share of all other items ("random"), each (N,); and the neighbour indices."""
    n = similarity.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)
    knn = nearest(similarity, k)
    rates = {name: {"knn": relation.gather(1, knn).double().mean(1),
                    "random": (relation & off).double().sum(1) / (n - 1)} for name, relation in relations.items()}
    return rates, knn


def mds(similarity: torch.Tensor) -> torch.Tensor:
    distance2 = (2 - 2 * similarity).clamp_min(0).double()
    n = distance2.shape[0]
    centre = torch.eye(n, dtype=torch.float64) - 1.0 / n
    gram = -0.5 * centre @ distance2 @ centre
    values, vectors = torch.linalg.eigh(gram)
    return (vectors[:, -2:] * values[-2:].clamp_min(0).sqrt()).flip(1).float()


def run(ctx: ExperimentContext) -> tuple[str, dict]:
    edits, resamples = ctx.edits, ctx.budget.resamples
    bundle = ctx.generate(edits)
    similarity = update_cosines(bundle.to("cpu"))
    tasks = edits.tasks
    opposite = {t: next(m for m in PAIRS[direction(t).pair].members if m != t) for t in tasks}
    relations = {SAME: torch.tensor([[a == b for b in tasks] for a in tasks]),
                 OPPOSITE: torch.tensor([[opposite[a] == b for b in tasks] for a in tasks]),
                 SOURCE: torch.tensor([[a == b for b in edits.images] for a in edits.images])}
    rates, knn = neighbour_rates(similarity, relations)
    cond, mask = ctx.encoder.encode(edits.source, edits.instructions)
    pooled = (cond.float() * mask[..., None].float()).sum(1) / mask.float().sum(1, keepdim=True)
    pooled = torch.nn.functional.normalize(pooled.cpu().double(), dim=1)
    condition = pooled @ pooled.T
    n = len(edits)
    off = ~torch.eye(n, dtype=torch.bool)
    rates["condition cosine"] = {"knn": condition.gather(1, knn).mean(1),
                                 "random": (condition * off).sum(1) / (n - 1)}
    table, claims = {}, []
    for name, r in rates.items():
        entry = {side: stats.macro_interval(r[side], tasks, resamples=resamples) for side in ("knn", "random")}
        entry["knn - random"] = stats.paired_difference(r["knn"], r["random"], tasks, resamples=resamples)
        table[name] = {k: v.as_dict() for k, v in entry.items()}
        if name in (SAME, "condition cosine"):
            claims.append(claim("§5.4", CLAIM, f"kNN (k={K}) minus random, {name}", entry["knn - random"], +1))
    results = {"k": K, "edits": n, "split": ctx.split, "neighbours": table, "claims": claims,
               "update_cosine": {g: float(similarity[m & off].mean()) if (m & off).any() else None
                                 for g, m in (("same direction", relations[SAME]),
                                              ("opposite direction", relations[OPPOSITE]),
                                              ("other directions", ~relations[SAME] & ~relations[OPPOSITE]))}}
    figures.scatter(ctx.out / "geometry_map.png", "generated LoRA updates (MDS of cosines), by direction",
                    mds(similarity), tasks)
    order = [i for t in DIRECTIONS for i in range(n) if tasks[i] == t]
    figures.matrix(ctx.out / "geometry_update_cosine.png", "update cosine, edits sorted by direction",
                   [tasks[i] if k % max(1, n // len(DIRECTIONS)) == 0 else "" for k, i in enumerate(order)],
                   similarity[order][:, order])
    lines = [f"| relation to the query edit | among its {K} nearest LoRAs | among all other edits | kNN - random |",
             "|---|---|---|---|"]
    for name, entry in table.items():
        lines.append(f"| {name} | " + " | ".join(stats.Interval(**entry[s]).text(".3f" if s != "knn - random"
                                                                                  else "+.3f")
                                                 for s in ("knn", "random", "knn - random")) + " |")
    u = results["update_cosine"]
    text = "\n".join(["## geometry (§5.4)", "", ctx.heading(), "", __doc__.split("\n\n", 1)[1].strip(), "",
                      f"{n} edits, k = {K}; each row: mean over queries (macro over directions) [95% CI].", "",
                      *lines, "",
                      "Mean update cosine (point estimates): " + ", ".join(
                          f"{g} {v:+.3f}" if v is not None else f"{g} -" for g, v in u.items()) + ".", "",
                      "Figures: `geometry_map.png`, `geometry_update_cosine.png`."])
    return text, results
