"""routing (paper §5.3, Table 7): the gain comes from input-aligned LoRAs, not from capacity.

On the held-out edits of all 8 directions: (a) the base backbone, (b) a Shared LoRA and (c) SFT,
both trained on all directions with the PG generator's budget (same steps and batch), (d) Average
PG (the mean generated LoRA, one for every input), (e) Shuffle PG (each input gets another input's
generated LoRA, a derangement) and (f) full PG (the family's generator). `win vs base` is the
share of edits whose output is closer to the target (PSNR) than the base backbone's: the
automatic stand-in for the paper's GSB win rate against the base model.
"""
from __future__ import annotations

from hywu_core.demo.edits import DIRECTIONS
from hywu_core.experiments import figures
from hywu_core.experiments.context import ExperimentContext, per_direction, score_outputs
from hywu_core.lora_tools import average, shuffle


def run(ctx: ExperimentContext) -> tuple[str, dict]:
    held, tasks, steps = ctx.heldout, tuple(DIRECTIONS), ctx.budget.routing_steps
    n = len(held)
    generated = ctx.generate(held)
    shuffled, _ = shuffle(generated, seed=0)
    variants = {
        "(a) Base": ctx.sample(held),
        "(b) Shared LoRA": ctx.sample(held, ctx.static_lora(tasks, steps).bundle(n)),
        "(c) SFT": ctx.sample(held, backbone=ctx.sft_backbone(tasks, steps)),
        "(d) Average PG": ctx.sample(held, average(generated).repeat(n)),
        "(e) Shuffle PG": ctx.sample(held, shuffled),
        "(f) Full PG": ctx.sample(held, generated),
    }
    scores = {name: score_outputs(held, out) for name, out in variants.items()}
    base = scores["(a) Base"]
    results = {}
    lines = ["| variant | PSNR | SSIM | right way | progress | win vs base |", "|---|---|---|---|---|---|"]
    for name, s in scores.items():
        summary = s.summary()
        summary["win_vs_base"] = float((s.psnr > base.psnr).float().mean()) if name != "(a) Base" else None
        summary["per_direction"] = per_direction(held, s, list(tasks))
        results[name] = summary
        win = "-" if summary["win_vs_base"] is None else f"{summary['win_vs_base']:.0%}"
        lines.append(f"| {name} | {summary['psnr']:.2f} | {summary['ssim']:.3f} | {summary['right_direction']:.0%} | "
                     f"{summary['progress']:+.2f} | {win} |")
    progress_by_task = {name: [results[name]["per_direction"][t]["progress"] for t in tasks] for name in results}
    figures.grouped_bars(ctx.out / "routing_progress.png", "held-out directional progress per direction",
                         list(tasks), progress_by_task, "progress (1 = target)")
    figures.grouped_bars(ctx.out / "routing_psnr.png", "held-out PSNR to target", ["all directions"],
                         {name: [results[name]["psnr"]] for name in results}, "PSNR dB")
    rows = [[held.source[held.tasks.index(t)], held.target[held.tasks.index(t)]]
            + [out[held.tasks.index(t)] for out in variants.values()] for t in tasks]
    figures.image_rows(ctx.out / "routing_examples.png", rows, ["source", "target", "base", "shared", "SFT",
                                                                  "avg PG", "shuffle PG", "PG"])
    text = "\n".join(["## routing (§5.3, Table 7)", "", __doc__.split("\n\n", 1)[1].strip(), "",
                      f"{n} held-out edits; Shared LoRA and SFT trained {steps} steps x batch {ctx.recipe.batch_size} "
                      f"(the family generator: {ctx.recipe.generator_steps} steps).", "", *lines, "",
                      "Figures: `routing_progress.png`, `routing_psnr.png`, `routing_examples.png`."])
    return text, results
