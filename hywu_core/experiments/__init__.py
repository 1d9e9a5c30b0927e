"""`./hywu experiment NAME`: the paper reproduction on the demo family (paper §5).

    conflict   §5.1  Single / Shared LoRA / SFT / PG on every pair of opposite directions
    gradients  §5.2  per-sample LoRA gradient cosines within a task and across a conflicting pair
    routing    §5.3  base, Shared LoRA, SFT, Average PG (two spaces), Shuffle PG, full PG (Table 7)
    geometry   §5.4  kNN structure of generated LoRAs vs the inputs
    family           the shipped family per direction, base vs HY-WU (what the demo's edits are chosen from)

Each writes <out>/<name>.json and its figures (.png); report.md holds every section run and ends
with the Verdicts: one line per paper claim with its figure, bootstrap 95% interval and verdict
(verdicts). --split picks the evaluation edits: "val" for choices, "test" (default) for the
reported figures; models train on "train" only. --quick runs the same code on a tiny budget (a
pipeline check: its numbers are not the reported ones).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import torch

from hywu_core.demo.run import DEMO_MODELS
from hywu_core.experiments.context import FULL, QUICK, SPLIT_SEEDS, SPLITS, ExperimentContext
from hywu_core.experiments.verdicts import section

NAMES = ("conflict", "gradients", "routing", "geometry", "family")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hywu experiment", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=NAMES + ("all",))
    parser.add_argument("--quick", action="store_true", help="tiny budget: checks the pipeline in minutes")
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="evaluation edits: val (for choices) or test (the reported figures; default)")
    parser.add_argument("--out", type=Path, help="output folder (default: hywu_output/experiments/NAME)")
    parser.add_argument("--models", type=Path, default=DEMO_MODELS, help="the demo family (default: demo_models/)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the demo family's ops are too small to gain from more, "
                             "and on a shared machine extra threads only contend; results do not depend on it "
                             "beyond float rounding)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    names = NAMES if args.name == "all" else (args.name,)
    out = (args.out or Path("hywu_output") / "experiments" / args.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    ctx = ExperimentContext(args.models.resolve(), out, QUICK if args.quick else FULL, args.split, log)
    sections, claims, total = [], [], time.monotonic()
    for name in names:
        started = time.monotonic()
        log(f"[experiment] {name} on the {args.split} split ...")
        text, results = importlib.import_module(f"{__name__}.{name}").run(ctx)
        seconds = time.monotonic() - started
        ctx.write_json(name, {"results": results, "seconds": round(seconds, 1), "quick": args.quick})
        claims += results.get("claims", [])
        sections.append(text + f"\n\n({name}: {seconds:.0f} s{', --quick budget' if args.quick else ''})\n")
        log(f"[experiment] {name} done in {seconds:.0f} s")
    budget = "--quick budget (a pipeline check, not the reported numbers)" if args.quick else "full budget"
    report = out / "report.md"
    report.write_text("\n".join([
        f"# HY-WU paper reproduction on the demo family: `{args.split}` split", "",
        f"Evaluation split `{args.split}` (make_edits seed {SPLIT_SEEDS[args.split]}); models trained on `train` "
        f"only; {budget}; {time.monotonic() - total:.0f} s in all.", "", *sections,
        *([section(claims)] if claims else []), ""]))
    print(report)
    return 0
