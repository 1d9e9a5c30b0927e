"""conflict (paper §5.1, Fig. 8): a static adapter compromises between opposite directions, PG does not.

For each pair of opposite directions (both kinds of hywu_core.demo.edits.PAIRS: image-dependent,
where one instruction needs opposite edits on two source states, and same-source conflicts,
where two instructions ask opposite edits of one clean image), every method gets the same
training budget (Budget.conflict_steps at the recipe's batch size on the pair's training edits):
a Single LoRA per direction, a Shared LoRA on both, SFT of the backbone on both, and a generator
(PG) on both; all are evaluated on both directions' evaluation edits. "Single LoRA (own)" is each
edit's output from the Single LoRA of its own direction.

The claims, per pair, on directional progress: the Shared LoRA falls short of the Single LoRA on
at least one direction (Single (own) - Shared on the pair's weaker direction, the larger of the two
per-direction gaps, taken inside every resample) and PG keeps both directions where the Shared
LoRA does not (PG's weaker direction minus the Shared LoRA's weaker direction).
"""
from __future__ import annotations

import torch

from hywu_core.demo.edits import PAIRS
from hywu_core.experiments import figures, stats
from hywu_core.experiments.context import ExperimentContext, direction_table, macro_table, summarize
from hywu_core.experiments.verdicts import claim

BASE, SHARED, SFT, PG, OWN = "Base", "Shared LoRA", "SFT", "HY-WU (PG)", "Single LoRA (own)"
SHARED_CLAIM = "a Shared LoRA trained on both directions compromises: it falls short of the Single LoRA on one"
PG_CLAIM = "PG keeps clear behaviour on both directions where the Shared LoRA compromises"


def single(task: str) -> str:
    return f"Single LoRA ({task})"


def run(ctx: ExperimentContext) -> tuple[str, dict]:
    steps, b = ctx.budget.conflict_steps, ctx.budget
    results, claims, lines, examples = {"steps": steps, "split": ctx.split, "pairs": {}}, [], [], []
    for name in b.conflict_pairs:
        pair = PAIRS[name]
        tasks = pair.members
        edits = ctx.edits.subset([i for i, t in enumerate(ctx.edits.tasks) if t in tasks])
        n = len(edits)
        outputs = {BASE: ctx.sample(edits)}
        for task in tasks:
            outputs[single(task)] = ctx.sample(edits, ctx.static_lora((task,), steps).bundle(n))
        outputs[SHARED] = ctx.sample(edits, ctx.static_lora(tasks, steps).bundle(n))
        outputs[SFT] = ctx.sample(edits, backbone=ctx.sft_backbone(tasks, steps))
        outputs[PG] = ctx.sample(edits, ctx.generate(edits, ctx.pg_generator(tasks, steps)))
        metrics, summaries = ctx.measure(edits, outputs, BASE)
        first = torch.tensor([t == tasks[0] for t in edits.tasks])
        metrics[OWN] = {m: torch.where(first, metrics[single(tasks[0])][m], metrics[single(tasks[1])][m])
                        for m in metrics[single(tasks[0])]}
        summaries[OWN] = summarize(edits, metrics[OWN], b.resamples)
        progress = {k: metrics[k]["progress"] for k in (OWN, SHARED, PG)}
        gap = stats.bootstrap(progress, edits.tasks, lambda m: (m[OWN] - m[SHARED]).max(1).values,
                              resamples=b.resamples)
        keeps = stats.bootstrap(progress, edits.tasks, lambda m: m[PG].min(1).values - m[SHARED].min(1).values,
                                resamples=b.resamples)
        per_task = {t: summaries[OWN]["per_direction"][t]["progress"]["estimate"]
                    - summaries[SHARED]["per_direction"][t]["progress"]["estimate"] for t in tasks}
        weaker = max(per_task, key=per_task.get)
        pair_claims = [claim(f"§5.1 {name} ({pair.kind})", SHARED_CLAIM,
                             "Single (own) - Shared progress on the weaker direction", gap, +1),
                       claim(f"§5.1 {name} ({pair.kind})", PG_CLAIM,
                             "PG - Shared progress, each on its weaker direction", keeps, +1)]
        claims += pair_claims
        results["pairs"][name] = {"kind": pair.kind, "directions": list(tasks), "edits": n, "methods": summaries,
                                  "weaker_direction": weaker, "single_minus_shared_weaker": gap.as_dict(),
                                  "pg_minus_shared_weaker": keeps.as_dict()}
        order = [BASE, single(tasks[0]), single(tasks[1]), OWN, SHARED, SFT, PG]
        ordered = {k: summaries[k] for k in order}
        lines += [f"### {name} ({pair.kind}: {' vs '.join(tasks)}; {n} edits)", "",
                  "Macro average of the two directions [95% CI]:", "", *macro_table(ordered), "",
                  "Directional progress per direction [95% CI]:", "", *direction_table(ordered, "progress"), "",
                  f"Weaker direction of the Shared LoRA (largest gap to the Single LoRA): {weaker}. "
                  f"Single (own) - Shared there: {gap.text()}; PG - Shared, each on its weaker direction: "
                  f"{keeps.text()}.", ""]
        entries = {k: [summaries[k]["per_direction"][t]["progress"] for t in tasks] for k in order}
        figures.grouped_bars(ctx.out / f"conflict_{name}_progress.png",
                             f"{name}: directional progress ({ctx.split} split, 95% CI)", list(tasks),
                             {k: [e["estimate"] for e in row] for k, row in entries.items()}, "progress (1 = target)",
                             {k: [(e["low"], e["high"]) for e in row] for k, row in entries.items()})
        for task in tasks:
            i = edits.tasks.index(task)
            examples.append([edits.source[i], edits.target[i]] + [outputs[k][i] for k in
                                                                  (BASE, single(tasks[0]), single(tasks[1]), SHARED,
                                                                   SFT, PG)])
    results["claims"] = claims
    figures.image_rows(ctx.out / "conflict_examples.png", examples,
                       ["source", "target", "base", "single 1st", "single 2nd", "shared", "SFT", "PG"])
    figures.intervals(ctx.out / "conflict_verdicts.png", "§5.1 claims per pair (directional progress, 95% CI)", {
        label: [(c["section"][5:], c["interval"]["estimate"], c["interval"]["low"], c["interval"]["high"])
                for c in claims if c["paper"] == paper]
        for label, paper in (("Single (own) - Shared, weaker direction", SHARED_CLAIM),
                             ("PG - Shared, each on its weaker direction", PG_CLAIM))})
    text = "\n".join(["## conflict (§5.1)", "", ctx.heading(), "", __doc__.split("\n\n", 1)[1].strip(), "",
                      f"Every trained method: {steps} steps x batch {ctx.recipe.batch_size} per pair.", "", *lines,
                      "Figures: " + ", ".join(f"`conflict_{p}_progress.png`" for p in b.conflict_pairs)
                      + ", `conflict_verdicts.png`, `conflict_examples.png` (one edit per direction: source, target, "
                      "base, the Single LoRAs of the pair's first and second direction, Shared LoRA, SFT, PG)."])
    return text, results
