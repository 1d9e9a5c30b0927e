"""Per-row LoRA kernel timings (paper §3.7, §7.6): Triton vs the torch reference vs merged weights.

For each shape (R batch rows of T tokens through one d_in -> d_out Linear, every row with its own
rank-r LoRA) this times, on a CUDA device:

    triton            hywu_core.kernels.triton_lora, returning the delta
    triton_add_       the same with the add into the Linear's output fused (out += delta)
    torch_reference   hywu_core.kernels.reference (gathered factors, two bmm in fp32)
    merged_matmul     the Linear itself with one LoRA merged into its weight (what merge mode costs
                      per call; dynamic mode adds the per-row delta on top of the base Linear)

Each figure is the median of CUDA-event timings, variants interleaved, L2 flushed before each run.
GB/s counts the bytes each operation must move at least (inputs read once, outputs written once;
the fp32 rank-r intermediate of the kernels is not counted), so it is comparable across variants.
Peak bandwidth comes from torch.cuda.get_device_properties: 2 x memory_clock_rate x
memory_bus_width / 8, the double-data-rate formula of NVIDIA's bandwidthTest sample (an assumption:
it gives 3.35 TB/s for an H100 SXM's HBM3, and is not exact for every memory type).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from hywu_core.bench.timing import interleaved
from hywu_core.kernels import triton_available
from hywu_core.kernels.reference import per_row_lora_reference
from hywu_core.kernels.triton_lora import per_row_lora_triton

VARIANTS = ("triton", "triton_add_", "torch_reference", "merged_matmul")
NEEDS_CUDA = "needs CUDA: the kernels are timed on a GPU only (no CUDA device here)"
SCALE = 2.0


@dataclass(frozen=True)
class KernelShape:
    """R rows x T tokens through a d_in -> d_out Linear, row i using LoRA i of a stack of R, rank r."""
    name: str
    rows: int
    tokens: int
    d_in: int
    d_out: int
    rank: int

    def __post_init__(self):
        if min(self.rows, self.tokens, self.d_in, self.d_out, self.rank) < 1:
            raise ValueError(f"kernel benchmark shape {self}: every size must be >= 1")

    def label(self) -> str:
        return f"R={self.rows} T={self.tokens} {self.d_in}->{self.d_out} r={self.rank}"


DEFAULT_SHAPES = (
    KernelShape("dit_attention_proj", rows=2, tokens=4096, d_in=3072, d_out=3072, rank=16),
    KernelShape("dit_mlp_up", rows=4, tokens=1024, d_in=3072, d_out=12288, rank=32),
    KernelShape("dit_rank128", rows=4, tokens=4096, d_in=1536, d_out=1536, rank=128),
    KernelShape("modulation_one_token", rows=16, tokens=1, d_in=4096, d_out=4096, rank=64),
)


def peak_bandwidth_gbs(props) -> float | None:
    """Peak DRAM bandwidth in GB/s from CUDA device properties (memory_clock_rate in kHz,
    memory_bus_width in bits), or None where torch does not report them (e.g. ROCm builds)."""
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9


def bytes_moved(shape: KernelShape, variant: str, element_size: int) -> int:
    """The least traffic of one call: reads of x and of the weights used, the write of the result,
    and for triton_add_ the read of the output it adds into."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown kernel benchmark variant {variant!r}; known: {', '.join(VARIANTS)}")
    activations = shape.rows * shape.tokens * (shape.d_in + shape.d_out)
    if variant == "merged_matmul":
        weights = shape.d_in * shape.d_out
    else:
        weights = shape.rows * shape.rank * (shape.d_in + shape.d_out)
    read_out = shape.rows * shape.tokens * shape.d_out if variant == "triton_add_" else 0
    return (activations + weights + read_out) * element_size


def records(shape: KernelShape, dtype: torch.dtype, ms: dict[str, float], peak_gbs: float | None) -> list[dict]:
    """One dict per timed variant: name, shape, dtype, ms, GB/s, ratio (achieved GB/s over the peak;
    None without a peak) and vs_merged (time over the merged-weight matmul's)."""
    size = torch.empty((), dtype=dtype).element_size()
    rows = []
    for name, value in ms.items():
        gbs = bytes_moved(shape, name, size) / (value * 1e-3) / 1e9
        rows.append({"name": name, "shape": shape.label(), "dtype": str(dtype).removeprefix("torch."),
                     "ms": value, "GB/s": gbs, "ratio": gbs / peak_gbs if peak_gbs else None,
                     "vs_merged": value / ms["merged_matmul"] if "merged_matmul" in ms else None})
    return rows


def make_inputs(shape: KernelShape, dtype: torch.dtype, device: torch.device | str, seed: int = 0) -> dict:
    """x, a LoRA stack with one item per row (rows in reverse order), the base weight W and W with
    LoRA 0 merged (W + scale B_0 A_0), and the output buffer the fused add writes into."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*size, std=1.0):
        return (torch.randn(*size, generator=g) * std).to(device=device, dtype=dtype)

    A = randn(shape.rows, shape.rank, shape.d_in, std=shape.d_in ** -0.5)
    B = randn(shape.rows, shape.d_out, shape.rank, std=0.02)
    W = randn(shape.d_out, shape.d_in, std=shape.d_in ** -0.5)
    merged = (W.float() + SCALE * B[0].float() @ A[0].float()).to(dtype)
    return {"x": randn(shape.rows, shape.tokens, shape.d_in), "A": A, "B": B, "W": W, "merged": merged,
            "rows": torch.arange(shape.rows - 1, -1, -1, device=device),
            "out": randn(shape.rows, shape.tokens, shape.d_out)}


def variant_calls(inputs: dict, with_triton: bool) -> dict:
    """The callables timed for one shape; the Triton ones only when with_triton."""
    x, A, B, rows = inputs["x"], inputs["A"], inputs["B"], inputs["rows"]
    calls = {"torch_reference": lambda: per_row_lora_reference(x, A, B, rows, SCALE),
             "merged_matmul": lambda: torch.nn.functional.linear(x, inputs["merged"])}
    if with_triton:
        calls = {"triton": lambda: per_row_lora_triton(x, A, B, rows, SCALE),
                 "triton_add_": lambda: per_row_lora_triton(x, A, B, rows, SCALE, out=inputs["out"])} | calls
    return calls


def time_cuda(calls: dict, repeats: int, warmup: int = 3, flush_bytes: int = 256 << 20) -> dict[str, float]:
    """Median milliseconds per callable: CUDA events around each call, callables interleaved, the
    L2 cache flushed (a buffer larger than it zeroed) before every timed call."""
    flush = torch.empty(flush_bytes, dtype=torch.uint8, device="cuda")
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end))
    return {name: statistics.median(values) for name, values in times.items()}


def run_kernel_benchmarks(shapes: tuple[KernelShape, ...] = DEFAULT_SHAPES, dtype: torch.dtype = torch.bfloat16,
                          repeats: int = 20, device: str | None = None) -> list[dict]:
    """Timings of every variant for every shape: records() keys plus case (the shape's name) and
    max_rel_error (variant_errors, checked before timing). On CUDA (the default where there is one):
    CUDA events, Triton included where it imports (each record says when it is not). device="cpu"
    is the dry run of `./hywu bench --gpu --dry-run`: the torch variants timed by the wall clock, no
    peak bandwidth. Without CUDA and no device given: a single record {"name": "kernels", "skipped":
    NEEDS_CUDA}, no numbers."""
    if device is None:
        if not torch.cuda.is_available():
            return [{"name": "kernels", "skipped": NEEDS_CUDA}]
        device = f"cuda:{torch.cuda.current_device()}"
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    peak = peak_bandwidth_gbs(torch.cuda.get_device_properties(device)) if on_cuda else None
    with_triton = on_cuda and triton_available()
    results = []
    with torch.no_grad():
        for shape in shapes:
            inputs = make_inputs(shape, dtype, device)
            errors = variant_errors(inputs, with_triton)
            calls = variant_calls(inputs, with_triton)
            ms = time_cuda(calls, repeats) if on_cuda else {k: v * 1000 for k, v in interleaved(calls, repeats).items()}
            for row in records(shape, dtype, ms, peak):
                row["case"] = shape.name
                row["max_rel_error"] = errors[row["name"]]
                if not with_triton:
                    row["note"] = ("triton is not installed: Triton variants not timed" if on_cuda
                                   else "dry run on the CPU: Triton variants need CUDA")
                results.append(row)
            del inputs
            if on_cuda:
                torch.cuda.empty_cache()
    return results


def variant_errors(inputs: dict, with_triton: bool) -> dict[str, float]:
    """Max |result - expected| / max |expected| per variant, expected from the fp32 reference: the
    delta (triton, torch_reference), out + delta (triton_add_, on a copy of out), base(x) + delta on
    the rows that use LoRA 0 (merged_matmul). Shows the timed variants compute the same thing."""
    x, A, B, rows = inputs["x"], inputs["A"], inputs["B"], inputs["rows"]
    out = inputs["out"].clone()
    delta = per_row_lora_reference(x.float(), A.float(), B.float(), rows, SCALE)
    lora0 = (rows == 0).nonzero().flatten()
    expected = {"triton": delta, "triton_add_": out.float() + delta, "torch_reference": delta,
                "merged_matmul": (torch.nn.functional.linear(x.float(), inputs["W"].float()) + delta)[lora0]}
    errors = {}
    for name, fn in variant_calls(inputs | {"out": out}, with_triton).items():
        got = fn().float()
        if name == "merged_matmul":
            got = got[lora0]
        errors[name] = ((got - expected[name]).abs().max() / expected[name].abs().max()).item()
    return errors
