"""`./hywu experiment NAME`: the paper reproduction on the demo family (paper §5).

    conflict   §5.1  Single / Shared LoRA / SFT / PG under directional conflict
    gradients  §5.2  per-sample LoRA gradient cosines within and across tasks
    routing    §5.3  base, Shared LoRA, SFT, Average PG, Shuffle PG, full PG (Table 7)
    geometry   §5.4  kNN structure of generated LoRAs vs the inputs' semantics

Each writes <out>/report.md, <out>/<name>.json and its figures (.png); every figure is measured on
the held-out split (images no model saw in training), except the gradients', which are training
gradients by definition. --quick runs the same code on a tiny budget (a pipeline check: its
numbers are not the reported ones).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from hywu_core.demo.run import DEMO_MODELS
from hywu_core.experiments.context import FULL, QUICK, ExperimentContext

NAMES = ("conflict", "gradients", "routing", "geometry")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hywu experiment", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=NAMES + ("all",))
    parser.add_argument("--quick", action="store_true", help="tiny budget: checks the pipeline in minutes")
    parser.add_argument("--out", type=Path, help="output folder (default: hywu_output/experiments/NAME)")
    parser.add_argument("--models", type=Path, default=DEMO_MODELS, help="the demo family (default: demo_models/)")
    args = parser.parse_args(argv)
    names = NAMES if args.name == "all" else (args.name,)
    out = (args.out or Path("hywu_output") / "experiments" / args.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    ctx = ExperimentContext(args.models.resolve(), out, QUICK if args.quick else FULL, log)
    sections = []
    for name in names:
        started = time.monotonic()
        log(f"[experiment] {name} ...")
        text, results = importlib.import_module(f"{__name__}.{name}").run(ctx)
        seconds = time.monotonic() - started
        ctx.write_json(name, {"results": results, "seconds": round(seconds, 1), "quick": args.quick})
        sections.append(text + f"\n\n({name}: {seconds:.0f} s{', --quick budget' if args.quick else ''})\n")
        log(f"[experiment] {name} done in {seconds:.0f} s")
    report = out / "report.md"
    report.write_text("# HY-WU paper reproduction on the demo family\n\n" + "\n".join(sections))
    print(report)
    return 0
