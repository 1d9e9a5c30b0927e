"""`./hywu bench --gpu`: the GPU check, one command, one JSON (paper §3.5, §3.7).

    kernels    the Triton per-row kernels vs the torch reference vs merged weights at real widths,
               bf16: ms, GB/s and the share of the device's peak memory bandwidth (bench.kernels)
    linear     the per-row LoRA on one real-width Linear, bf16, against the FLOP limit (bench.real_width)
    stack      merge vs dynamic per sampling step on a real-width MMDiT stack, bf16, CFG on
    generator  the official release's generator shape (d_model 4096, 24 layers, dim_accumulation 4,
               rank 16, token_dim 1024, over HunyuanImage-3's targets with 64 grouped experts per
               layer; random weights, bf16): seconds per generated LoRA and peak memory
    hunyuan3_hywu  that generator on a condition of ~3000 tokens x 4096 against one real-width HunyuanImage-3
               decoder layer (64 experts top-8, random weights, bf16) over a cached step of a 1024x1024 edit
               (4096 image tokens, CFG batch 2), scaled to 32 layers: generator / step, the per-step cost of
               the injected LoRA, the projected end-to-end overhead at 50 steps, and the generator's peak
               memory (bench.hunyuan3_hywu)
    tests      the suite's CUDA-only tests (pytest -m cuda)

Each part runs on its own: an error is written into its JSON entry and the next part still runs.
Sized to finish in well under 8 minutes on one data-centre GPU. `python -m hywu_core.bench.gpu`
runs it without `./hywu` (a GPU machine with torch, triton and this checkout; the stack part also
needs ComfyUI importable, COMFYUI_PATH).

--dry-run runs the same code on the CPU at tiny sizes, so that CI keeps it working without a GPU:
Triton and the CUDA tests are reported as skipped there, and no figure of a dry run means anything.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from hywu_core.bench import hunyuan3_hywu, real_width
from hywu_core.bench.kernels import DEFAULT_SHAPES, KernelShape, run_kernel_benchmarks
from hywu_core.bench.timing import interleaved
from hywu_core.condition import Condition
from hywu_core.generator import Generator
from hywu_core.generator_files import RELEASE_CONFIG
from hywu_core.nnt import NNTConfig
from hywu_core.targets import TargetSpec
from hywu_core.tokenizer import make_layout

REPO = Path(__file__).resolve().parents[2]
PARTS = ("kernels", "linear", "stack", "generator", "hunyuan3_hywu", "tests")

OFFICIAL_GENERATOR = RELEASE_CONFIG    # the release's generator sizes, HunyuanImage-3.0's target shapes
CONDITION_TOKENS = 2048      # a prompt with one input image: the HunyuanImage-3 prefill the generator reads
HYWU_CONDITION_TOKENS = 3000  # an edit's img_ratio prefill (system prompt, input images, prompt, CoT)
DRY_GENERATOR = {
    "token_dim": 16, "rank": 4, "alpha": 8, "input_dim": 32, "dim_accumulation": 2, "d_model": 32,
    "head_dim": 8, "num_base_model_layers": 2, "output_dim": 16, "num_pg_layers": 2, "prefix": "model.layers.",
    "pg_mapping": {
        "self_attn.qkv_proj": {"lora_A_dim": 32, "lora_B_dim": 48},
        "mlp.experts": {"type": "grouped", "num_experts": 2,
                        "sub_weights": {"w1": {"lora_A_dim": 32, "lora_B_dim": 16},
                                        "w2": {"lora_A_dim": 16, "lora_B_dim": 32}}},
    },
}
GPU_LINEAR = tuple(real_width.LinearCase(rows, 4096, 3072, 3072, 16) for rows in (2, 4, 8))
GPU_STACK = real_width.StackCase(depth=48, blocks=4, patch=2, size=128, batch=4, rank=16, cfg=2.0, steps=5)
DRY_KERNELS = (KernelShape("dry_run", rows=2, tokens=16, d_in=32, d_out=24, rank=4),)
DRY_LINEAR = (real_width.LinearCase(2, 16, 32, 32, 4),)
DRY_STACK = real_width.StackCase(depth=1, blocks=1, patch=4, size=16, batch=2, rank=4, cfg=2.0, steps=2)


def official_shape_generator(config: dict, device, dtype: torch.dtype) -> Generator:
    """A Generator of the release's variant at `config`'s sizes with random weights (built on the
    meta device, then allocated and drawn on `device`)."""
    spec = TargetSpec.from_pg_config(config)
    layout = make_layout(spec, config["rank"], kind="official_flat", token_dim=config["token_dim"])
    nnt_config = NNTConfig(cond_dim=config["input_dim"], width=config["d_model"], depth=config["num_pg_layers"],
                           heads=config["d_model"] // config["head_dim"], ffn_dim=4 * config["d_model"],
                           rank_group=config["dim_accumulation"], positions="official")
    with torch.device("meta"):
        generator = Generator(nnt_config, layout, float(config["alpha"]))
    g = torch.Generator(device=device).manual_seed(0)
    weights = {}
    for name, parameter in generator.named_parameters():
        tensor = torch.empty(parameter.shape, device=device, dtype=dtype)
        if name.endswith(".bias"):
            tensor.zero_()
        elif "norm" in name:
            tensor.fill_(1.0)
        else:
            tensor.normal_(0.0, parameter.shape[-1] ** -0.5, generator=g)
        weights[name] = tensor
    generator.load_state_dict(weights, assign=True)
    return generator.to(device).eval()


def bench_generator(config: dict, cond_len: int, repeats: int, device, dtype: torch.dtype) -> dict:
    """Seconds per generated LoRA (condition -> LoRA bundle) at `config`'s sizes, and peak memory."""
    generator = official_shape_generator(config, device, dtype)
    nnt = generator.nnt
    condition = Condition.from_tensors(torch.randn(1, cond_len, config["input_dim"], device=device, dtype=dtype))
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        seconds = interleaved({"generate": lambda: generator(condition)}, repeats)["generate"]
        bundle = generator(condition)
    result = {"layers": nnt.l, "tokens_per_layer": nnt.s, "rank": nnt.r, "token_dim": nnt.d,
              "latent_positions": nnt.l * nnt.S, "width": nnt.config.width, "depth": nnt.config.depth,
              "condition_tokens": cond_len, "dtype": str(dtype).removeprefix("torch."),
              "parameters": sum(p.numel() for p in generator.parameters()), "seconds_per_lora": seconds}
    result["lora_finite"] = all(bool(torch.isfinite(t).all()) for t in (*bundle.A.values(), *bundle.B.values()))
    if on_cuda:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def stack_with_comfy(case: real_width.StackCase, repeats: int, dtype: torch.dtype) -> dict:
    """The stack bench, ComfyUI imported first (the only part that needs it: the others run on a
    machine that has torch and this checkout alone)."""
    from hywu_core.comfyui.library import import_comfy

    import_comfy()
    return real_width.bench_stack(case, repeats=repeats, dtype=dtype)


def cuda_tests(dry_run: bool) -> dict:
    """The suite's tests marked `cuda`, run with pytest; in a dry run only collected (they need CUDA)."""
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"]
    if dry_run:
        command.append("--collect-only")
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
    return {"command": " ".join(command[1:]), "returncode": result.returncode, "seconds": time.perf_counter() - started,
            "summary": tail[-1] if tail else "", "tail": tail, "collected_only": dry_run}


def run_part(name: str, fn) -> dict:
    """fn() with its wall time; an exception becomes {"error": ..., "traceback": ...}."""
    print(f"[{name}] ...", flush=True)
    started = time.perf_counter()
    try:
        result = fn()
    except Exception as error:  # report, do not hide: one failing part must not cost the others
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=5)}
    seconds = time.perf_counter() - started
    print(f"[{name}] {'failed: ' + result['error'] if isinstance(result, dict) and 'error' in result else 'done'} "
          f"in {seconds:.1f} s", flush=True)
    return {"seconds": seconds, "result": result}


def main(argv: list[str] | None = None) -> int:
    from hywu_core.bench.suite import device_name

    parser = argparse.ArgumentParser(prog="hywu bench --gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU at tiny sizes (for CI)")
    parser.add_argument("--json", type=Path, default=Path("hywu_output") / "bench-gpu.json")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    if not args.dry_run and not torch.cuda.is_available():
        print("hywu bench --gpu: no CUDA device here; run it on a machine with a GPU, or add --dry-run to check "
              "the script on the CPU", file=sys.stderr)
        return 2

    device = "cpu" if args.dry_run else f"cuda:{torch.cuda.current_device()}"
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    generator_config = DRY_GENERATOR if args.dry_run else OFFICIAL_GENERATOR
    report = {"command": "./hywu bench --gpu" + (" --dry-run" if args.dry_run else ""),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": device_name(), "torch": torch.__version__, "dry_run": args.dry_run}
    if not args.dry_run:
        props = torch.cuda.get_device_properties(device)
        report["device_memory_gib"] = props.total_memory / 2**30
    print(f"device: {report['device']}, torch {torch.__version__}" + (" (dry run: tiny sizes)" if args.dry_run else ""))
    jobs = {
        "kernels": lambda: run_kernel_benchmarks(DRY_KERNELS if args.dry_run else DEFAULT_SHAPES, dtype,
                                                 repeats=2 if args.dry_run else 20, device=device),
        "linear": lambda: real_width.bench_linear(DRY_LINEAR if args.dry_run else GPU_LINEAR,
                                                  repeats=2 if args.dry_run else 10, dtype=dtype, device=device),
        "stack": lambda: stack_with_comfy(DRY_STACK if args.dry_run else GPU_STACK, 2 if args.dry_run else 5, dtype),
        "generator": lambda: bench_generator(generator_config, 16 if args.dry_run else CONDITION_TOKENS,
                                             repeats=2 if args.dry_run else 3, device=device, dtype=dtype),
        "hunyuan3_hywu": lambda: hunyuan3_hywu.bench_real_width(
            official_shape_generator(generator_config, device, dtype), generator_config["num_base_model_layers"],
            hunyuan3_hywu.DRY_LAYER if args.dry_run else hunyuan3_hywu.REAL_WIDTH_LAYER,
            16 if args.dry_run else HYWU_CONDITION_TOKENS, 4 if args.dry_run else 64,
            repeats=2 if args.dry_run else 5, device=device, dtype=dtype),
        "tests": lambda: cuda_tests(args.dry_run),
    }
    started = time.perf_counter()
    for name in parts:
        report[name] = run_part(name, jobs[name])
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    report["seconds"] = time.perf_counter() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    failed = [name for name in parts if "error" in report[name]["result"]
              or (name == "tests" and report[name]["result"].get("returncode") not in (0, None))]
    print(f"results written to {args.json} in {report['seconds']:.0f} s; "
          + (f"failed parts: {', '.join(failed)}" if failed else "every part ran"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] + ["--gpu"]))
