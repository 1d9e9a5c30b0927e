"""conflict (paper §5.1, Fig. 8): static adaptation compromises under directional conflict, PG does not.

For each conflicting pair (e.g. blur vs deblur), with an equal training budget per method:
Single LoRA (one per direction), Shared LoRA (one on both), SFT (the whole backbone on both) and
HY-WU PG (a generator on both), evaluated on the held-out edits of both directions: PSNR / SSIM
to the target, the pair's directional score, and `progress` = the achieved signed change of that
score over the change the target makes (1 = as far as the target, 0 = no change, < 0 = the wrong way).
"""
from __future__ import annotations

from hywu_core.demo.edits import PAIRS
from hywu_core.experiments import figures
from hywu_core.experiments.context import ExperimentContext, per_direction, score_outputs


def run(ctx: ExperimentContext) -> tuple[str, dict]:
    steps = ctx.budget.conflict_steps
    results, lines, rows = {}, [], []
    for pair in ctx.budget.conflict_pairs:
        tasks = PAIRS[pair]
        held = ctx.heldout.subset([i for i, t in enumerate(ctx.heldout.tasks) if t in tasks])
        outputs = {"Base": ctx.sample(held)}
        for task in tasks:
            lora = ctx.static_lora((task,), steps)
            outputs[f"Single LoRA ({task})"] = ctx.sample(held, lora.bundle(len(held)))
        outputs["Shared LoRA"] = ctx.sample(held, ctx.static_lora(tasks, steps).bundle(len(held)))
        outputs["SFT"] = ctx.sample(held, backbone=ctx.sft_backbone(tasks, steps))
        outputs["HY-WU (PG)"] = ctx.sample(held, ctx.generate(held, ctx.pg_generator(tasks, steps)))
        table = {name: per_direction(held, score_outputs(held, out), list(tasks)) for name, out in outputs.items()}
        results[pair] = table
        lines += [f"### {pair} ({steps} steps x batch {ctx.recipe.batch_size} per method)", "",
                  "| method | " + " | ".join(f"{t} PSNR | {t} SSIM | {t} progress | {t} right way"
                                            for t in tasks) + " |",
                  "|---|" + "---|" * (4 * len(tasks))]
        for name, per_task in table.items():
            cells = [f"{per_task[t]['psnr']:.2f} | {per_task[t]['ssim']:.3f} | {per_task[t]['progress']:+.2f} | "
                     f"{per_task[t]['right_direction']:.0%}" for t in tasks]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        figures.grouped_bars(ctx.out / f"conflict_{pair}_progress.png", f"{pair}: directional progress (held-out)",
                             list(table), {t: [table[m][t]["progress"] for m in table] for t in tasks},
                             "progress (1 = target)")
        for task in tasks:
            i = held.tasks.index(task)
            rows.append([held.source[i], held.target[i]] + [out[i] for out in outputs.values()])
        results[pair + "_methods"] = list(outputs)
    header = ["source", "target", "base", "single A", "single B", "shared", "SFT", "PG"]
    figures.image_rows(ctx.out / "conflict_examples.png", rows, header)
    text = "\n".join(["## conflict (§5.1)", "", __doc__.split("\n\n", 1)[1].strip(), "", *lines,
                      "Figures: " + ", ".join(f"`conflict_{p}_progress.png`" for p in ctx.budget.conflict_pairs)
                      + ", `conflict_examples.png` (one held-out edit per direction: source, target, base, "
                      "single LoRA of the first / second direction, shared LoRA, SFT, PG)."])
    return text, results
