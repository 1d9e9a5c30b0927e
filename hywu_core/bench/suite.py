"""`./hywu bench`: what per-instance weights cost on top of the base model (paper §3.7, §7.6).

Every figure is a ratio of timings taken in the same run, interleaved (base, merge, dynamic, base,
...) and reduced to medians, because shared machines are noisy:

    sampling   time per sampling step of the demo backbone with no LoRA, one merged LoRA, and a
               distinct LoRA per row (dynamic), at batch 1, 4 and 8, CFG on
    overhead   HY-WU end to end in merge mode (encode + generate + patch + sample, 20 steps) over
               the base model sampling alone; the paper reports 6.7 %
    generator  NNT generation time, factorized vs full attention, across growing (l, s, r)
    compile    NNT generation eager vs torch.compile, with the compile time (not in --quick)
    kernels    Triton vs the torch reference vs merged weights (CUDA only)

Results are printed with the device named and written to a JSON file for comparing runs.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from hywu_core.bench.attention import QUICK_SHAPES, SHAPES, bench_attention, print_rows, table2_layout
from hywu_core.bench.kernels import run_kernel_benchmarks
from hywu_core.bench.timing import interleaved, timed
from hywu_core.comfyui.library import import_comfy
from hywu_core.comfyui.lora_patch import apply_dynamic, apply_merge
from hywu_core.condition import encode_condition
from hywu_core.encoders import load_condition_encoder
from hywu_core.generated_lora import generate_lora
from hywu_core.generator_files import load_generator
from hywu_core.nnt import NNT, NNTConfig
from hywu_core.tiny_editor.backbone import load_demo_checkpoint, sample
from hywu_core.tiny_editor.family import build_family_files

PAPER_OVERHEAD = 0.067


class DemoFamily:
    """The demo family built fresh in a temporary folder (weights random, LoRAs non-zero)."""

    def __init__(self, folder: Path):
        files = build_family_files(folder, lora_std=0.05)
        self.model, self.clip, self.vae = load_demo_checkpoint(files.backbone)
        self.encoder = load_condition_encoder(files.encoder)
        self.generator = load_generator(files.generator)
        self.apply_merge, self.apply_dynamic = apply_merge, apply_dynamic

    def sampler(self, model, images: torch.Tensor, steps: int, cfg: float = 2.0):
        """A closure running the stock edit graph (CLIPTextEncode, InstructPixToPix, KSampler, VAEDecode)."""
        return lambda: sample(model, self.clip, self.vae, images, "edit the image", seed=0, steps=steps, cfg=cfg)

    def generate(self, images: torch.Tensor, instruction: str):
        return generate_lora(self.generator, encode_condition(self.encoder, images, instruction)).bundle


def bench_sampling(family: DemoFamily, batches: list[int], steps: int, repeats: int) -> list[dict]:
    """Per-step cost: (time at `steps` - time at 2 steps) / (steps - 2), so fixed costs per run (text
    encoding, VAE, patching and restoring merged weights) drop out; they are reported apart."""
    rows = []
    for batch in batches:
        images = torch.rand(batch, 64, 64, 3, generator=torch.Generator().manual_seed(batch))
        lines = "\n".join(f"edit {i}" for i in range(batch)) if batch > 1 else "edit"
        bundle = family.generate(images, lines)
        models = {"base": family.model, "merge": family.apply_merge(family.model, bundle.item(0)),
                  "dynamic": family.apply_dynamic(family.model, bundle)}
        variants = {f"{name}@{n}": family.sampler(model, images, n) for name, model in models.items()
                    for n in (2, steps)}
        seconds = interleaved(variants, repeats)
        per_step = {name: (seconds[f"{name}@{steps}"] - seconds[f"{name}@2"]) / (steps - 2) for name in models}
        fixed = {name: seconds[f"{name}@2"] - 2 * per_step[name] for name in models}
        rows.append({"batch": batch, "steps": steps, "ms_per_step": {k: v * 1000 for k, v in per_step.items()},
                     "ms_fixed_per_run": {k: v * 1000 for k, v in fixed.items()},
                     "merge_over_base": per_step["merge"] / per_step["base"],
                     "dynamic_over_base": per_step["dynamic"] / per_step["base"]})
    return rows


def bench_overhead(family: DemoFamily, steps: int, repeats: int) -> dict:
    images = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))

    def hywu():
        bundle = family.generate(images, "make the image brighter")
        family.sampler(family.apply_merge(family.model, bundle), images, steps)()

    seconds = interleaved({"base": family.sampler(family.model, images, steps), "hywu_merge": hywu}, repeats)
    overhead = seconds["hywu_merge"] / seconds["base"] - 1
    return {"steps": steps, "seconds": seconds, "overhead": overhead, "paper_overhead": PAPER_OVERHEAD}


def bench_compile(repeats: int, width: int = 64) -> dict:
    """NNT generation, eager vs torch.compile (inductor), at the Table 2 token shape: compile time,
    the speed-up after compiling, and whether the outputs agree."""
    model = NNT(NNTConfig(cond_dim=width, width=width, depth=2, heads=4), table2_layout()).eval()
    cond = torch.randn(1, 32, width)
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            compile_seconds = timed(lambda: compiled(cond))
            seconds = interleaved({"eager": lambda: model(cond), "compiled": lambda: compiled(cond)}, repeats)
            max_diff = float((model(cond) - compiled(cond)).abs().max())
    except Exception as error:  # report, do not hide: the bench says whether compile is usable here
        return {"error": f"{type(error).__name__}: {error}"}
    return {"compile_seconds": compile_seconds, "ms": {k: v * 1000 for k, v in seconds.items()},
            "speedup": seconds["eager"] / seconds["compiled"], "max_abs_diff": max_diff}


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hywu bench", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("hywu_output") / "bench.json",
                        help="where to write the results (default hywu_output/bench.json)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (median)")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a smoke run)")
    args = parser.parse_args(argv)

    import_comfy()
    repeats = 2 if args.quick else args.repeats
    report = {"device": device_name(), "torch": torch.__version__, "repeats": repeats}
    print(f"device: {report['device']}, torch {torch.__version__}; medians of {repeats} interleaved runs")
    with tempfile.TemporaryDirectory(prefix="hywu-bench-") as folder:
        family = DemoFamily(Path(folder))
        report["sampling"] = bench_sampling(family, [1, 4] if args.quick else [1, 4, 8], 4 if args.quick else 10,
                                            repeats)
        print("sampling, demo backbone 64x64, CFG 2 (dynamic: a distinct LoRA per row)")
        for row in report["sampling"]:
            ms = row["ms_per_step"]
            fixed = row["ms_fixed_per_run"]
            print(f"  batch {row['batch']}: per step base {ms['base']:.2f} ms, merge {ms['merge']:.2f} ms "
                  f"({row['merge_over_base']:.2f}x), dynamic {ms['dynamic']:.2f} ms ({row['dynamic_over_base']:.2f}x); "
                  f"fixed per run base {fixed['base']:.1f} ms, merge {fixed['merge']:.1f} ms, "
                  f"dynamic {fixed['dynamic']:.1f} ms")
        report["overhead"] = bench_overhead(family, 20, repeats)
        overhead = report["overhead"]
        print(f"end to end, merge mode, 20 steps: HY-WU {overhead['seconds']['hywu_merge'] * 1000:.1f} ms vs base "
              f"{overhead['seconds']['base'] * 1000:.1f} ms: overhead {overhead['overhead'] * 100:+.1f}% "
              f"(paper: {PAPER_OVERHEAD * 100:.1f}%)")
    report["generator"] = bench_attention(QUICK_SHAPES if args.quick else SHAPES, repeats)
    print("generator, factorized vs full attention (width 64, depth 2)")
    print_rows(report["generator"])
    if not args.quick:
        report["compile"] = compiled = bench_compile(repeats)
        if "error" in compiled:
            print(f"generator torch.compile: failed here ({compiled['error']})")
        else:
            print(f"generator torch.compile (Table 2 shape): compile {compiled['compile_seconds']:.1f} s, then eager "
                  f"{compiled['ms']['eager']:.1f} ms vs compiled {compiled['ms']['compiled']:.1f} ms "
                  f"({compiled['speedup']:.2f}x), max |diff| {compiled['max_abs_diff']:.1e}")

    report["kernels"] = run_kernel_benchmarks()
    if torch.cuda.is_available():
        print("kernels (Triton vs torch reference vs merged weights)")
        for row in report["kernels"]:
            print(f"  {row}")
    else:
        print("kernels: skipped, they need CUDA (this device has none)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
