"""family: what the shipped family does on every direction, base backbone vs HY-WU (no training).

On the evaluation edits of all directions, the base backbone and the family's generator (full PG),
every metric per direction with its bootstrap 95% interval. Run on the val split it is where the
demo's shown edits are chosen from (hywu_core.demo.run.DEMO_EDITS): directions whose HY-WU output
moves the right way on every val edit, with no more grain than its target. Also the grain of every
output against its own source (noise_sigma(output) - noise_sigma(source)): the base backbone should
add none. Cheap: nothing is trained.
"""
from __future__ import annotations

from hywu_core.demo.edits import DIRECTIONS, noise_sigma
from hywu_core.experiments.context import ExperimentContext, cell, direction_table, macro_table, summarize

BASE, HYWU = "Base", "HY-WU (PG)"


def run(ctx: ExperimentContext) -> tuple[str, dict]:
    edits = ctx.edits
    outputs = {BASE: ctx.sample(edits), HYWU: ctx.sample(edits, ctx.generate(edits))}
    metrics, summaries = ctx.measure(edits, outputs, BASE)
    showable = [t for t in DIRECTIONS if t in edits.tasks
                and bool(metrics[HYWU]["right_way"][[i for i, x in enumerate(edits.tasks) if x == t]].min() == 1)
                and summaries[HYWU]["per_direction"][t]["grain"]["estimate"] < 0.01]
    against_source = {name: summarize(edits, {"grain": (noise_sigma(out) - noise_sigma(edits.source)).double()},
                                      ctx.budget.resamples) for name, out in outputs.items()}
    results = {"edits": len(edits), "split": ctx.split, "variants": summaries, "showable": showable,
               "grain_vs_source": against_source}
    text = "\n".join([
        "## family (the shipped family per direction)", "", ctx.heading(), "", __doc__.split("\n\n", 1)[1].strip(), "",
        "Macro average of per-direction means [95% CI]:", "", *macro_table(summaries), "",
        *(line for metric in ("progress", "right_way", "grain", "patch_artefact", "psnr")
          for line in (f"{metric} per direction [95% CI]:", "", *direction_table(summaries, metric), "")),
        "grain against the source (noise_sigma(output) - noise_sigma(source)) per direction [95% CI]:", "",
        *direction_table(against_source, "grain"), "",
        "Macro average: " + ", ".join(f"{name} {cell(s['macro']['grain'], 'grain')}"
                                      for name, s in against_source.items()) + ".", "",
        f"Right way on every edit with grain below 0.01: {', '.join(showable) or 'none'}."])
    return text, results
