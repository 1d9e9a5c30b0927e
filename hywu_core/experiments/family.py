"""family: what the shipped family does on every direction, base backbone vs HY-WU (no training).

On the evaluation edits of all directions, the base backbone and the family's generator (full PG),
every metric per direction with its bootstrap 95% interval, and the artefacts of every output
against its own source (grain: noise_sigma(output) - noise_sigma(source); patch artefact:
patch_artefact(output) - patch_artefact(source); patch lattice: patch_lattice(output, source)): the
base backbone should add none. Run on the val split it is where the demo's shown edits are chosen
from (hywu_core.demo.run.DEMO_EDITS): directions whose HY-WU output moves the right way on every val
edit, adds less than SHOWABLE_GRAIN of grain to its source beyond what the base backbone adds to the
same sources (the generator's own grain, net of the backbone's, which is reported beside it), draws
steps on the patch grid at most SHOWABLE_PATCH beyond the base's, and leaves an error that repeats in
every patch below SHOWABLE_LATTICE. And free text: the base backbone on clean
crops of the split under prompts no edit of the suite uses (FREE_PROMPTS: what people type, the empty
prompt included), where it should keep its input: PSNR to the source per prompt, and the share of
broken outputs (below BROKEN_PSNR; a brittle backbone draws 4x4 patch noise there). Cheap: nothing is
trained.
"""
from __future__ import annotations

import torch

from hywu_core.demo.edits import DIRECTIONS, noise_sigma, patch_artefact, patch_lattice, psnr
from hywu_core.demo.images import crop_pool
from hywu_core.experiments import stats
from hywu_core.experiments.context import ExperimentContext, cell, direction_table, macro_table, summarize

BASE, HYWU = "Base", "HY-WU (PG)"
# None of these is a phrasing of the suite (hywu_core.demo.edits.DIRECTIONS); the first two are the
# example workflows' own instructions.
FREE_PROMPTS = ("make the image brighter", "make the image darker", "a photo", "edit the image",
                "turn it into a watercolour painting", "remove the cat", "")
BROKEN_PSNR = 20.0   # dB to the source
SHOWABLE_GRAIN = 0.005   # noise_sigma; a clean crop has 0.011 on average (median 0.003)
SHOWABLE_PROGRESS = 0.1  # an edit shown must get at least a tenth of the way to its target
SHOWABLE_PATCH = 0.1     # patch_artefact beyond the base's on the same edits (the base: 0 to +0.1 to the target)
SHOWABLE_LATTICE = 0.003  # patch_lattice to the target, luma (0.77 of an 8-bit level; the base: about 0.0015)
ARTEFACTS_VS_SOURCE = ("grain", "patch_artefact", "patch_lattice")


def free_text(ctx: ExperimentContext) -> dict:
    """The base backbone on 2 x Budget.per_direction clean crops of the split (evenly spaced over its
    pool) under each of FREE_PROMPTS: PSNR to the source and the broken share (< BROKEN_PSNR), per
    prompt and macro-averaged over the prompts, each with its bootstrap 95% interval."""
    pool = crop_pool(ctx.split)
    count = 2 * ctx.budget.per_direction
    source = torch.stack([crop.image for crop in pool[::max(1, len(pool) // count)][:count]])
    prompts = [p for p in FREE_PROMPTS for _ in range(len(source))]
    outputs = ctx.sample_prompts(source.repeat(len(FREE_PROMPTS), 1, 1, 1), prompts)
    values = psnr(outputs, source.repeat(len(FREE_PROMPTS), 1, 1, 1)).double()
    columns = {"psnr": values, "broken": (values < BROKEN_PSNR).double()}
    options = {"resamples": ctx.budget.resamples}
    return {"crops": len(source), "broken_below_db": BROKEN_PSNR,
            "macro": {k: stats.macro_interval(v, prompts, **options).as_dict() for k, v in columns.items()},
            "per_prompt": {p: {k: stats.mean_interval(v.view(len(FREE_PROMPTS), -1)[i], **options).as_dict()
                               for k, v in columns.items()} for i, p in enumerate(FREE_PROMPTS)}}


def showable(tasks: list[str], right_way, against_source: dict, summaries: dict) -> list[str]:
    """The directions HY-WU moves the right way on every edit (`right_way`: HY-WU's per-edit 0/1, in
    the order of `tasks`) and at least SHOWABLE_PROGRESS of the way on average, while adding less than
    SHOWABLE_GRAIN of grain to the source beyond what the base adds (`against_source`: summaries of the
    artefacts against the source, by BASE and HYWU), at most SHOWABLE_PATCH of patch artefact beyond
    the base's and a patch lattice under SHOWABLE_LATTICE (`summaries`: the metrics' summaries, by
    BASE and HYWU)."""
    def beyond_base(table: dict, task: str, metric: str) -> float:
        return (table[HYWU]["per_direction"][task][metric]["estimate"]
                - table[BASE]["per_direction"][task][metric]["estimate"])

    def hywu(task: str, metric: str) -> float:
        return summaries[HYWU]["per_direction"][task][metric]["estimate"]

    return [t for t in DIRECTIONS if t in tasks and beyond_base(against_source, t, "grain") < SHOWABLE_GRAIN
            and beyond_base(summaries, t, "patch_artefact") <= SHOWABLE_PATCH
            and hywu(t, "patch_lattice") < SHOWABLE_LATTICE and hywu(t, "progress") >= SHOWABLE_PROGRESS
            and bool(right_way[[i for i, x in enumerate(tasks) if x == t]].min() == 1)]


def run(ctx: ExperimentContext) -> tuple[str, dict]:
    edits = ctx.edits
    outputs = {BASE: ctx.sample(edits), HYWU: ctx.sample(edits, ctx.generate(edits))}
    metrics, summaries = ctx.measure(edits, outputs, BASE)
    against_source = {name: summarize(edits, {
        "grain": (noise_sigma(out) - noise_sigma(edits.source)).double(),
        "patch_artefact": (patch_artefact(out) - patch_artefact(edits.source)).double(),
        "patch_lattice": patch_lattice(out, edits.source).double()}, ctx.budget.resamples)
        for name, out in outputs.items()}
    free = free_text(ctx)
    shown = showable(edits.tasks, metrics[HYWU]["right_way"], against_source, summaries)
    results = {"edits": len(edits), "split": ctx.split, "variants": summaries, "showable": shown,
               "artefacts_vs_source": against_source, "free_text": free}
    free_rows = [f'| "{p}" | {cell(r["psnr"], "psnr")} | {cell(r["broken"], "right_way")} |'
                 for p, r in free["per_prompt"].items()]
    text = "\n".join([
        "## family (the shipped family per direction)", "", ctx.heading(), "", __doc__.split("\n\n", 1)[1].strip(), "",
        "Macro average of per-direction means [95% CI]:", "", *macro_table(summaries), "",
        *(line for metric in ("progress", "right_way", "grain", "patch_artefact", "patch_lattice", "psnr")
          for line in (f"{metric} per direction [95% CI]:", "", *direction_table(summaries, metric), "")),
        *(line for metric in ARTEFACTS_VS_SOURCE
          for line in (f"{metric} against the source per direction [95% CI]:", "",
                       *direction_table(against_source, metric), "",
                       "Macro average: " + ", ".join(f"{name} {cell(s['macro'][metric], metric)}"
                                                     for name, s in against_source.items()) + ".", "")),
        f"Right way on every edit, progress at least {SHOWABLE_PROGRESS}, adding less than {SHOWABLE_GRAIN} of "
        f"grain to the source and at most {SHOWABLE_PATCH} of patch artefact beyond the base's, and a patch "
        f"lattice under {SHOWABLE_LATTICE}: {', '.join(shown) or 'none'}.", "",
        f"Free text: the base backbone on {free['crops']} clean crops under prompts no edit uses [95% CI]:", "",
        f"| prompt | PSNR to the source dB | broken (< {BROKEN_PSNR:.0f} dB) |", "|---|---|---|", *free_rows,
        f"| macro | {cell(free['macro']['psnr'], 'psnr')} | {cell(free['macro']['broken'], 'right_way')} |"])
    return text, results
