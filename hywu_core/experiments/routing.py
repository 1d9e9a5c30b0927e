"""routing (paper §5.3, Table 7): the gain comes from input-aligned LoRAs, not from capacity.

On the evaluation edits of all directions: (a) the base backbone; (b) a Shared LoRA and (c) SFT,
both trained on all directions with the family generator's budget (same steps and batch); (d)
Average PG, the mean of the edits' generated LoRAs given to every edit, in two spaces: parameters
(mean A and mean B separately, rank r: the paper's "mean LoRA parameter") and update (the exact
mean update (1/N) sum_i B_i A_i, written as one LoRA of rank N r: lora_tools.average(..., "update"));
(e) Shuffle PG (each edit gets another edit's generated LoRA, a seeded derangement); (f) full PG.
`win vs base` stands in for the paper's GSB win rate against the base model. The claims: full PG
minus each other variant, on the macro-averaged progress and PSNR (paired, same edits).
"""
from __future__ import annotations

from hywu_core.demo.edits import DIRECTIONS
from hywu_core.experiments import figures, stats
from hywu_core.experiments.context import LABELS, ExperimentContext, direction_table, macro_table
from hywu_core.experiments.verdicts import claim
from hywu_core.lora_tools import average, shuffle

BASE, SHARED, SFT = "(a) Base", "(b) Shared LoRA", "(c) SFT"
AVERAGE_PARAMETERS, AVERAGE_UPDATE = "(d) Average PG (parameters)", "(d) Average PG (update)"
SHUFFLE, FULL_PG = "(e) Shuffle PG", "(f) Full PG"
VARIANTS = (BASE, SHARED, SFT, AVERAGE_PARAMETERS, AVERAGE_UPDATE, SHUFFLE, FULL_PG)
CLAIM = "full PG beats every other Table 7 variant (best win rate and WU-Eval score)"


def run(ctx: ExperimentContext) -> tuple[str, dict]:
    edits, tasks, steps = ctx.edits, tuple(DIRECTIONS), ctx.routing_steps
    n = len(edits)
    generated = ctx.generate(edits)
    shuffled, _ = shuffle(generated, seed=0)
    outputs = {
        BASE: ctx.sample(edits),
        SHARED: ctx.sample(edits, ctx.static_lora(tasks, steps).bundle(n)),
        SFT: ctx.sample(edits, backbone=ctx.sft_backbone(tasks, steps)),
        AVERAGE_PARAMETERS: ctx.sample(edits, average(generated, "parameters").repeat(n)),
        AVERAGE_UPDATE: ctx.sample(edits, average(generated, "update").repeat(n)),
        SHUFFLE: ctx.sample(edits, shuffled),
        FULL_PG: ctx.sample(edits, generated),
    }
    metrics, summaries = ctx.measure(edits, outputs, BASE)
    claims, comparisons, forest = [], {}, {LABELS["progress"]: [], LABELS["psnr"]: []}
    for other in VARIANTS[:-1]:
        comparisons[other] = {}
        for metric, spec in (("progress", "+.3f"), ("psnr", "+.2f")):
            label = LABELS[metric]
            interval = stats.paired_difference(metrics[FULL_PG][metric], metrics[other][metric], edits.tasks,
                                               resamples=ctx.budget.resamples)
            comparisons[other][metric] = interval.as_dict()
            claims.append(claim("§5.3 Table 7", CLAIM, f"full PG - {other[4:]}, macro {label}", interval, +1, spec))
            forest[label].append((f"full PG - {other[4:]}", interval.estimate, interval.low, interval.high))
    results = {"edits": n, "split": ctx.split, "steps": steps, "variants": summaries,
               "full_pg_minus": comparisons, "claims": claims}

    for metric, label in (("progress", "progress (1 = target)"), ("psnr", "PSNR dB")):
        entries = {v: [summaries[v]["per_direction"][t][metric] for t in tasks] for v in VARIANTS}
        figures.grouped_bars(ctx.out / f"routing_{metric}.png", f"{label} per direction ({ctx.split} split)",
                             list(tasks), {v: [e["estimate"] for e in row] for v, row in entries.items()}, label,
                             {v: [(e["low"], e["high"]) for e in row] for v, row in entries.items()})
    figures.intervals(ctx.out / "routing_verdicts.png", "full PG minus each variant (macro, 95% CI)", forest)
    rows = [[edits.source[edits.tasks.index(t)], edits.target[edits.tasks.index(t)]]
            + [out[edits.tasks.index(t)] for out in outputs.values()] for t in tasks]
    figures.image_rows(ctx.out / "routing_examples.png", rows, ["source", "target", "base", "shared", "SFT",
                                                                  "avg PG (par)", "avg PG (upd)", "shuffle PG", "PG"])
    lines = ["| full PG minus | progress (macro) | PSNR dB (macro) |", "|---|---|---|"]
    lines += [f"| {v} | {stats.Interval(**c['progress']).text('+.3f')} | {stats.Interval(**c['psnr']).text('+.2f')} |"
              for v, c in comparisons.items()]
    text = "\n".join([
        "## routing (§5.3, Table 7)", "", ctx.heading(), "", __doc__.split("\n\n", 1)[1].strip(), "",
        f"{n} edits ({ctx.budget.per_direction} per direction x {len(tasks)}); Shared LoRA and SFT trained {steps} "
        f"steps x batch {ctx.recipe.batch_size} (the family generator: {ctx.recipe.generator_steps} steps); Average "
        f"PG (update) is a LoRA of rank {n} x {generated.rank}.", "",
        "Macro average of per-direction means [95% CI]:", "", *macro_table(summaries), "",
        "Paired differences, full PG minus each variant [95% CI]:", "", *lines, "",
        "Directional progress per direction [95% CI]:", "", *direction_table(summaries, "progress"), "",
        "PSNR to the target per direction [95% CI]:", "", *direction_table(summaries, "psnr"), "",
        "Figures: `routing_progress.png`, `routing_psnr.png`, `routing_verdicts.png`, `routing_examples.png` (one "
        "edit per direction: source, target, then the variants in table order)."])
    return text, results
