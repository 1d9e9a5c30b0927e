"""`./hywu bench`: what per-instance weights cost on top of the base model (paper §3.7, §7.6).

Every figure is a ratio of timings taken in the same run, interleaved (base, merge, dynamic, base,
...) and reduced to medians, because shared machines are noisy:

    sampling      time per sampling step of the demo backbone with no LoRA, one merged LoRA, and a
                  distinct LoRA per row (dynamic), at batch 1, 4 and 8, CFG on
    subnormals    why merged weights can cost more per step than the base on a CPU: the same
                  weights without any patcher cost the same, and flushing subnormal floats to zero
                  removes the difference (so the sampling rows are taken with flushing on)
    real_width    the per-row LoRA on one real-width Linear and on a stack of real-width MMDiT
                  blocks, against the FLOP limit (bench.real_width)
    end_to_end    one demo edit in merge mode part by part (encode, generate, apply, patch, sample,
                  restore) over the base run, cache off and on; the paper reports 6.7 % (bench.end_to_end)
    hunyuan3_prefix_cache  a HunyuanImage-3 step after the first (prefix K/V reused) over the first step,
                  on a random transformer of the tiny checkpoint's shape (bench.hunyuan3_cache)
    hunyuan3_hywu  HY-WU's generation cost on the tiny HunyuanImage-3 checkpoint with the real edit request:
                  condition and generator over a step, the per-step cost of the LoRA (dynamic, merged), end to
                  end at the checkpoint's step count and projected at 50 (bench.hunyuan3_hywu)
    generator     NNT generation, factorized vs full attention, across growing (l, s, r); and where
                  the time goes at Table 2's shape, at width 64 and at a width where FLOPs dominate
                  (bench.generator_parts)
    compile       NNT generation eager vs torch.compile, with the compile time (not in --quick)
    kernels       Triton vs the torch reference vs merged weights (CUDA only)

`./hywu bench --gpu` is the GPU check instead (bench.gpu). Results are printed with the device
named and written to a JSON file for comparing runs.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import tempfile
from pathlib import Path

import torch

from hywu_core.bench import end_to_end, generator_parts, hunyuan3_cache, hunyuan3_hywu, real_width
from hywu_core.bench.attention import QUICK_SHAPES, SHAPES, TABLE2, bench_attention, print_rows, table2_layout
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
    """Per-step cost: (time at `steps` - time at 2 steps) / (steps - 2), each run with its model
    already loaded (ComfyUI patches merged weights when it loads a clone; that is timed in
    bench.end_to_end), so fixed costs per run (text encoding, VAE) drop out; they are reported apart
    (real_width.per_step_costs)."""
    rows = []
    for batch in batches:
        images = torch.rand(batch, 64, 64, 3, generator=torch.Generator().manual_seed(batch))
        lines = "\n".join(f"edit {i}" for i in range(batch)) if batch > 1 else "edit"
        bundle = family.generate(images, lines)
        models = {"base": family.model, "merge": family.apply_merge(family.model, bundle.item(0)),
                  "dynamic": family.apply_dynamic(family.model, bundle)}
        costs = real_width.per_step_costs(models, lambda m, n: family.sampler(m, images, n)(), 2, steps, repeats)
        rows.append({"batch": batch, "steps": steps} | costs)
    return rows


@contextlib.contextmanager
def flushing_subnormals(on: bool = True):
    """Inside the block (on=True) the CPU flushes subnormal floats to zero and torch runs on one
    thread; both come back after. On x86 a multiply-add on a subnormal takes about a hundred times
    longer than on a normal float, so timings then depend on the values a network produces.
    torch.set_flush_denormal sets the flag of the calling thread only, not of torch's intra-op
    worker threads (measured: with 2 threads flushing removed only part of the difference), hence
    one thread. Yields whether flushing is on (False where the CPU cannot flush)."""
    threads = torch.get_num_threads()
    flushing = on and torch.set_flush_denormal(True)
    if flushing:
        torch.set_num_threads(1)
    try:
        yield flushing
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def bench_subnormals(family: DemoFamily, steps: int, repeats: int) -> dict:
    """Per run of `steps` steps: base, merge (ComfyUI weight patches) and the same merged weights
    loaded into a second model without any patch ("baked"), with subnormal flushing off and on."""
    import copy

    import comfy.model_management as mm
    import comfy.model_patcher

    images = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    merged = family.apply_merge(family.model, family.generate(images, "edit the image"))
    mm.load_models_gpu([merged])
    merged_weights = {k: v.detach().clone() for k, v in merged.model.diffusion_model.state_dict().items()}
    mm.load_models_gpu([family.model])                     # the base weights back in the shared module
    baked_model = copy.deepcopy(family.model.model)
    baked_model.diffusion_model.load_state_dict(merged_weights)
    baked = comfy.model_patcher.ModelPatcher(baked_model, load_device=family.model.load_device,
                                             offload_device=family.model.offload_device)
    models = {"base": family.model, "merge": merged, "baked": baked}
    calls = {name: family.sampler(model, images, steps, cfg=1.0) for name, model in models.items()}
    loads = {name: (lambda m=model: mm.load_models_gpu([m])) for name, model in models.items()}
    rows = {}
    for flush in (False, True):
        with flushing_subnormals(flush) as flushing:
            seconds = interleaved(calls, repeats, setup=loads)
        rows["flush_on" if flush else "flush_off"] = {
            "flushing": flushing, "ms": {k: v * 1000 for k, v in seconds.items()},
            "merge_over_base": seconds["merge"] / seconds["base"], "baked_over_base": seconds["baked"] / seconds["base"],
            "merge_over_baked": seconds["merge"] / seconds["baked"]}
    del baked, baked_model
    return {"steps": steps} | rows


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


def stack_flushed(case: real_width.StackCase, repeats: int) -> dict:
    """The real-width stack, subnormals flushed (one thread): random weights make subnormal activations
    whose cost differs between base and LoRA'd weights (measured: merge 1.12x unflushed, 1.00x flushed)."""
    with flushing_subnormals() as flushing:
        return real_width.bench_stack(case, repeats) | {"subnormals_flushed": flushing, "threads": 1}


def print_sampling(rows: list[dict]) -> None:
    for row in rows:
        ms, fixed = row["ms_per_step"], row["ms_fixed_per_run"]
        print(f"  batch {row['batch']}: per step base {ms['base']:.2f} ms, merge {ms['merge']:.2f} ms "
              f"({row['merge_over_base']:.2f}x), dynamic {ms['dynamic']:.2f} ms ({row['dynamic_over_base']:.2f}x); "
              f"fixed per run base {fixed['base']:.1f} ms, merge {fixed['merge']:.1f} ms, dynamic {fixed['dynamic']:.1f} ms")


def print_subnormals(row: dict) -> None:
    for key in ("flush_off", "flush_on"):
        v = row[key]
        print(f"  subnormals {'flushed' if v['flushing'] else 'kept'}: base {v['ms']['base']:.0f} ms, merge "
              f"{v['merge_over_base']:.2f}x, same weights without patches {v['baked_over_base']:.2f}x "
              f"(merge / those {v['merge_over_baked']:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    if argv and "--gpu" in argv:
        from hywu_core.bench import gpu

        return gpu.main(argv)
    parser = argparse.ArgumentParser(prog="hywu bench", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("hywu_output") / "bench.json",
                        help="where to write the results (default hywu_output/bench.json)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (median)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 repeats (a smoke run)")
    parser.add_argument("--gpu", action="store_true", help="the GPU check instead (see ./hywu bench --gpu --help)")
    args = parser.parse_args(argv)

    import_comfy()
    quick, repeats = args.quick, 2 if args.quick else args.repeats
    report = {"command": "./hywu bench" + (" --quick" if quick else ""),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": device_name(), "torch": torch.__version__, "repeats": repeats}
    print(f"device: {report['device']}, torch {torch.__version__}; medians of {repeats} interleaved runs")
    with tempfile.TemporaryDirectory(prefix="hywu-bench-") as folder:
        family = DemoFamily(Path(folder))
        with flushing_subnormals():
            report["sampling"] = bench_sampling(family, [1, 4] if quick else [1, 4, 8], 4 if quick else 10, repeats)
        print("sampling, demo backbone 64x64, CFG 2 (dynamic: a distinct LoRA per row), subnormals flushed (1 thread)")
        print_sampling(report["sampling"])
        report["subnormals"] = bench_subnormals(family, 4 if quick else 20, repeats)
        print(f"merged weights per run ({report['subnormals']['steps']} steps, CFG 1): where an excess comes from")
        print_subnormals(report["subnormals"])
        del family
    report["real_width"] = {
        "linear": real_width.bench_linear(real_width.QUICK_LINEAR_CASES if quick else real_width.LINEAR_CASES,
                                          repeats),
        "stack": stack_flushed(real_width.QUICK_STACK_CASE if quick else real_width.STACK_CASE, 2 if quick else 3)}
    print("per-row LoRA at real widths, one Linear (distinct LoRA per row):")
    real_width.print_linear(report["real_width"]["linear"])
    print("per sampling step on a stack of real-width MMDiT joint blocks (1 thread, subnormals flushed):")
    real_width.print_stack(report["real_width"]["stack"])
    report["end_to_end"] = end_to_end.bench_end_to_end(repeats, steps=4 if quick else 20)
    print("end to end, one demo edit in merge mode (shipped family), part by part:")
    end_to_end.print_end_to_end(report["end_to_end"])
    report["hunyuan3_prefix_cache"] = row = hunyuan3_cache.bench_prefix_cache(
        repeats, *((300, 8) if quick else (2100, 16)))
    print(f"HunyuanImage-3 prefix cache ({row['tokens']} tokens): a later step costs {row['later_over_first']:.3f}x "
          f"the first ({row['ms']['later step']:.1f} vs {row['ms']['first step']:.1f} ms), max |diff| vs a full "
          f"recompute {row['max_abs_diff_vs_full']:.1e}")
    report["hunyuan3_hywu"] = hunyuan3_hywu.bench_hywu(1 if quick else repeats)
    hunyuan3_hywu.print_hywu(report["hunyuan3_hywu"])
    report["generator"] = bench_attention(QUICK_SHAPES if quick else SHAPES, repeats)
    print("generator, factorized vs full attention (width 64, depth 2)")
    print_rows(report["generator"])
    shape = QUICK_SHAPES[0] if quick else TABLE2
    report["generator_parts"] = [generator_parts.breakdown(*shape, width=width, heads=heads, repeats=repeats)
                                 for width, heads in ((64, 4),) + (() if quick else ((512, 8),))]
    print("generator, where the time goes (depth 2, condition of 32 tokens):")
    for row in report["generator_parts"]:
        generator_parts.print_breakdown(row)
    if not quick:
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
        print("kernels: skipped, they need CUDA (this device has none; ./hywu bench --gpu on a GPU machine)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
