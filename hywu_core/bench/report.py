"""The README's benchmark tables, rendered from a `./hywu bench` JSON (so no figure is typed by hand).

    python -m hywu_core.bench.report docs/bench/cpu.json          # prints the Markdown
    python -m hywu_core.bench.report docs/bench/cpu.json --readme README.md   # rewrites its block

The block sits in the README between BEGIN and END; a test checks that it equals the rendering of
the committed JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hywu_core.bench.end_to_end import PARTS as E2E_PARTS
from hywu_core.bench.generator_parts import PARTS as GENERATOR_PARTS

BEGIN, END = "<!-- bench tables: python -m hywu_core.bench.report -->", "<!-- end of bench tables -->"


def render(report: dict, source: str) -> str:
    """Markdown tables of one bench report (its device, date and command first)."""
    lines = [f"Measured by `{report['command']}` on {report['device']}, torch {report['torch']}, "
             f"{report['date'][:10]}; medians of {report['repeats']} interleaved runs; JSON: `{source}`.", ""]
    lines += ["Per-row LoRA on one Linear (a distinct LoRA per row), time over the plain Linear:", "",
              "| rows x tokens | Linear | rank | plain (ms) | merged | per row | per row, in place | FLOP limit |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["real_width"]["linear"]:
        over = row["over_none"]
        lines.append(f"| {row['rows']} x {row['tokens']} | {row['d_in']} -> {row['d_out']} | {row['rank']} | "
                     f"{row['ms']['none']:.1f} | {over['merged']:.3f}x | {over['per_row']:.3f}x | "
                     f"{over['per_row_add_']:.3f}x | {row['limit']:.4f}x |")
    stack = report["real_width"]["stack"]
    ms = stack["ms_per_step"]
    lines += ["", f"Per sampling step, {stack['blocks']} MMDiT joint blocks of width {stack['width']} "
              f"({stack['image_tokens']} image tokens, batch {stack['batch']} with a distinct rank-{stack['rank']} "
              f"LoRA each, CFG {stack['cfg']:g}, {stack['dtype']}, one thread, subnormals flushed):", "",
              "| base (ms/step) | merge | dynamic | FLOP limit | fixed per run: base / merge / dynamic (ms) |",
              "| --- | --- | --- | --- | --- |",
              f"| {ms['base']:.0f} | {stack['merge_over_base']:.3f}x | {stack['dynamic_over_base']:.3f}x | "
              f"{stack['limit']:.4f}x | {' / '.join(f'{v:.0f}' for v in stack['ms_fixed_per_run'].values())} |"]
    sub = report["subnormals"]
    lines += ["", f"Demo backbone (random weights, strong random LoRA), {sub['steps']}-step run, over the base run:", "",
              "| subnormal floats | base (ms) | merge | same weights, no patches | merge / same weights |",
              "| --- | --- | --- | --- | --- |"]
    for key, label in (("flush_off", "kept (CPU default)"), ("flush_on", "flushed to zero")):
        v = sub[key]
        lines.append(f"| {label} | {v['ms']['base']:.0f} | {v['merge_over_base']:.2f}x | {v['baked_over_base']:.2f}x | "
                     f"{v['merge_over_baked']:.2f}x |")
    e2e = report["end_to_end"]
    lines += ["", f"One demo edit in merge mode ({e2e['steps']} steps), part by part (ms); base run "
              f"{e2e['base_ms']:.0f} ms:", "",
              "| generated-LoRA cache | " + " | ".join(E2E_PARTS) + " | overhead |",
              "| --- |" + " --- |" * (len(E2E_PARTS) + 1)]
    for name in ("cache_off", "cache_on"):
        v = e2e[name]
        lines.append(f"| {name.removeprefix('cache_')} | " + " | ".join(f"{v['ms'][p]:.1f}" for p in E2E_PARTS)
                     + f" | {v['overhead'] * 100:+.1f}% |")
    lines += ["", "Generator time by part (depth 2, share of the total), factorized and full attention:", "",
              "| token shape (l, s, r, d) | width | variant | total (ms) | " + " | ".join(GENERATOR_PARTS) + " | full / factorized: time, FLOPs, "
              "self-attention FLOPs |",
              "| --- | --- | --- | --- |" + " --- |" * (len(GENERATOR_PARTS) + 1)]
    for row in report["generator_parts"]:
        ratio = row["full_over_factorized"]
        for name, v in row["variants"].items():
            shares = " | ".join(f"{v['share'][p] * 100:.0f}%" if p in v["share"] else "" for p in GENERATOR_PARTS)
            tail = (f"{ratio['time']:.1f}x, {ratio['flops']:.1f}x, {ratio['self_attention_flops']:.1f}x"
                    if name == "full" else "")
            lines.append(f"| ({row['l']}, {row['s']}, {row['r']}, {row['d']}) | {row['width']} | {name} | {v['ms_total']:.0f} | {shares} | {tail} |")
    return "\n".join(lines) + "\n"


def readme_block(readme: str) -> str:
    """The text between BEGIN and END in a README (ValueError when the markers are missing)."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"the README has no bench block: add the lines {BEGIN!r} and {END!r}")
    return readme.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--readme", type=Path, help="rewrite the bench block of this README")
    args = parser.parse_args(argv)
    text = render(json.loads(args.json.read_text()), args.json.as_posix())
    if args.readme is None:
        print(text, end="")
        return 0
    readme = args.readme.read_text()
    readme_block(readme)
    head, rest = readme.split(BEGIN, 1)
    args.readme.write_text(head + BEGIN + "\n" + text + END + rest.split(END, 1)[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
