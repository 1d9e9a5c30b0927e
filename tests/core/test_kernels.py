"""Per-row LoRA kernels (paper §3.7, §7.6): Triton under the CPU interpreter against the torch
reference, the dispatcher's choices and errors, and the CPU side of the kernel benchmark."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hywu_core.bench import kernels as bench_kernels
from hywu_core.kernels import KernelInputError, backend_for, choose_backend, per_row_lora, per_row_lora_add_
from hywu_core.kernels.reference import per_row_lora_reference

from .kernels_interpreted import CASES, MUTATIONS, TOLERANCE

REPO = Path(__file__).resolve().parents[2]


def _python(code_or_file: list[str], **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | env
    environment["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, *code_or_file], cwd=REPO, env=environment, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def interpreted() -> dict:
    """The report of tests/core/kernels_interpreted.py, run once with TRITON_INTERPRET=1."""
    result = _python([str(Path(__file__).with_name("kernels_interpreted.py"))], TRITON_INTERPRET="1")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_interpreter_executed_both_kernels_once_per_call(interpreted):
    assert interpreted["interpreted"] == {"_shrink_kernel": True, "_expand_kernel": True}
    for case in CASES:
        assert interpreted["cases"][case["id"]]["launches"] == {"_shrink_kernel": 1, "_expand_kernel": 1}, case["id"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_triton_kernels_match_the_reference(interpreted, case):
    """max |kernel - fp64 truth| / max |truth| within the dtype's tolerance (fp32 1e-5, fp16 2e-3,
    bf16 1e-2); for 16-bit outputs also no worse than 1.25x the torch reference's own error."""
    result = interpreted["cases"][case["id"]]
    assert result["dtype"] == f"torch.{case['dtype']}"
    assert result["shape"] == [len(case["rows"]), *case["tokens"], case["d_out"]]
    assert result["error"] <= TOLERANCE[case["dtype"]], result
    if case["dtype"] != "float32":
        assert result["error"] <= 1.25 * result["reference_error"], result


def test_deliberately_broken_kernels_fail(interpreted):
    """Copies of the kernel source with one bug (every row routed to LoRA rows[0]; scale dropped)."""
    assert set(interpreted["mutants"]) == set(MUTATIONS)
    for label, error in interpreted["mutants"].items():
        assert error > 0.1, (label, error)


def test_backend_rules():
    facts = dict(on_cuda=True, dtype=torch.bfloat16, rank=16, needs_grad=False, triton_ok=True)
    assert choose_backend(**facts) == "triton"
    assert choose_backend(**facts | {"dtype": torch.float16}) == "triton"
    assert choose_backend(**facts | {"dtype": torch.float32, "rank": 128}) == "triton"
    assert choose_backend(**facts | {"on_cuda": False}) == "torch"
    assert choose_backend(**facts | {"needs_grad": True}) == "torch"
    assert choose_backend(**facts | {"triton_ok": False}) == "torch"
    assert choose_backend(**facts | {"dtype": torch.float64}) == "torch"
    assert choose_backend(**facts | {"rank": 129}) == "torch"


def _stack(R=3, N=2, T=4, d_in=12, d_out=10, r=4, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(R, T, d_in, generator=g, dtype=dtype), torch.randn(N, r, d_in, generator=g, dtype=dtype),
            torch.randn(N, d_out, r, generator=g, dtype=dtype), torch.tensor([1, 0, 1][:R]))


def test_cpu_calls_use_the_reference_with_gradients():
    x, A, B, rows = _stack()
    A.requires_grad_(True)
    B.requires_grad_(True)
    assert backend_for(x, A, B) == "torch"
    delta = per_row_lora(x, A, B, rows, 0.5)
    torch.testing.assert_close(delta, per_row_lora_reference(x, A, B, rows, 0.5))
    expected = torch.einsum("rtk,rqk,roq->rto", x, A[rows], B[rows]) * 0.5
    torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-5)
    delta.square().sum().backward()
    assert A.grad.abs().sum() > 0 and B.grad.abs().sum() > 0


def test_add_variant_adds_in_place_on_cpu():
    x, A, B, rows = _stack(T=1)
    x = x[:, 0]                                          # (R, d_in): one token per row
    out = torch.randn(3, 10)
    before = out.clone()
    returned = per_row_lora_add_(out, x, A, B, rows, 2.0)
    assert returned is out
    torch.testing.assert_close(out, before + per_row_lora_reference(x, A, B, rows, 2.0))


def test_empty_batch_gives_an_empty_delta():
    x, A, B, _ = _stack()
    delta = per_row_lora(x[:0], A, B, torch.zeros(0, dtype=torch.long), 1.0)
    assert delta.shape == (0, 4, 10)


@pytest.mark.parametrize("change, message", [
    (lambda x, A, B, rows: (x[0, 0], A, B, rows), "batch axis"),
    (lambda x, A, B, rows: (x, A[0], B, rows), "A must be (N, r, d_in)"),
    (lambda x, A, B, rows: (x, A[:, :3], B, rows), "same item count N and rank r"),
    (lambda x, A, B, rows: (x[..., :8], A, B, rows), "d_in=8 but A expects d_in=12"),
    (lambda x, A, B, rows: (x, A, B, rows[:2]), "one LoRA index per batch row"),
    (lambda x, A, B, rows: (x, A, B, rows.float()), "int64 or int32"),
    (lambda x, A, B, rows: (x, A, B, torch.tensor([1, 2, 0])), "indices must lie in [0, 2)"),
    (lambda x, A, B, rows: (x, A, B, torch.tensor([1, -1, 0])), "indices must lie in [0, 2)"),
    (lambda x, A, B, rows: (x, A.to("meta"), B, rows), "move the factors"),
])
def test_bad_inputs_are_refused_with_the_fix(change, message):
    with pytest.raises(KernelInputError, match=re.escape(message)):
        per_row_lora(*change(*_stack()), 1.0)


def test_add_variant_refuses_a_wrong_output_shape():
    x, A, B, rows = _stack()
    with pytest.raises(KernelInputError, match=r"out has shape \(3, 4, 9\)"):
        per_row_lora_add_(torch.zeros(3, 4, 9), x, A, B, rows, 1.0)


def test_kernels_import_and_run_without_triton():
    """CPU calls never import triton; with triton unimportable (as on macOS) everything still imports,
    the Triton backend is never chosen, and the launchers say what to use instead."""
    code = (
        "import sys, torch\n"
        "from hywu_core.kernels import per_row_lora, choose_backend, triton_available\n"
        "x, A, B = torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 5, 4)\n"
        "assert per_row_lora(x, A, B, torch.tensor([1, 0]), 1.0).shape == (2, 3, 5)\n"
        "assert 'triton' not in sys.modules, 'a CPU call imported triton'\n"
        "sys.modules['triton'] = None\n"
        "from hywu_core.kernels import triton_lora\n"
        "assert not triton_lora.AVAILABLE and not triton_available()\n"
        "assert choose_backend(on_cuda=True, dtype=torch.bfloat16, rank=16, needs_grad=False) == 'torch'\n"
        "try:\n"
        "    triton_lora.shrink(x, A, torch.tensor([1, 0]))\n"
        "except RuntimeError as e:\n"
        "    assert 'falls back to the torch reference' in str(e)\n"
        "else:\n"
        "    raise AssertionError('shrink ran without triton')\n"
        "import hywu_core.bench.kernels\n"
        "print('ok')\n"
    )
    result = _python(["-c", code])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def test_launch_configuration():
    from hywu_core.kernels.triton_lora import block_rank, expand_config, shrink_config

    assert [block_rank(r) for r in (1, 4, 16, 17, 64, 128)] == [16, 16, 16, 32, 64, 128]
    many = shrink_config(rows=4, tokens=4096, d_in=3072, rank=16, num_sms=132)
    assert many == {"BLOCK_M": 64, "BLOCK_K": 128, "SPLIT_K": 1}
    one_token = shrink_config(rows=16, tokens=1, d_in=4096, rank=64, num_sms=132)
    assert one_token["BLOCK_M"] == 16 and one_token["BLOCK_K"] == 64 and one_token["SPLIT_K"] == 16
    assert shrink_config(rows=1, tokens=1, d_in=100, rank=4, num_sms=132)["SPLIT_K"] == 1   # one K block only
    assert expand_config(tokens=37, rank=128) == {"BLOCK_M": 64, "BLOCK_N": 64}
    assert expand_config(tokens=1, rank=16) == {"BLOCK_M": 16, "BLOCK_N": 128}


def test_kernel_benchmarks_report_needs_cuda_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_kernels.run_kernel_benchmarks() == [{"name": "kernels", "skipped": bench_kernels.NEEDS_CUDA}]


def test_peak_bandwidth_from_device_properties():
    h100 = SimpleNamespace(memory_clock_rate=2_619_000, memory_bus_width=5120)   # kHz, bits
    assert bench_kernels.peak_bandwidth_gbs(h100) == pytest.approx(3352.32)
    assert bench_kernels.peak_bandwidth_gbs(SimpleNamespace(memory_clock_rate=0, memory_bus_width=0)) is None


def test_benchmark_records_bandwidth_and_ratios():
    shape = bench_kernels.KernelShape("s", rows=2, tokens=100, d_in=64, d_out=32, rank=8)
    assert bench_kernels.bytes_moved(shape, "triton", 2) == 2 * (2 * 100 * 96 + 2 * 8 * 96)
    assert bench_kernels.bytes_moved(shape, "triton_add_", 2) == 2 * (2 * 100 * 96 + 2 * 8 * 96 + 2 * 100 * 32)
    assert bench_kernels.bytes_moved(shape, "merged_matmul", 4) == 4 * (2 * 100 * 96 + 64 * 32)
    rows = bench_kernels.records(shape, torch.bfloat16, {"triton": 0.01, "merged_matmul": 0.02}, peak_gbs=100.0)
    triton = next(r for r in rows if r["name"] == "triton")
    assert triton["shape"] == "R=2 T=100 64->32 r=8" and triton["dtype"] == "bfloat16" and triton["ms"] == 0.01
    assert triton["GB/s"] == pytest.approx(bench_kernels.bytes_moved(shape, "triton", 2) / 1e-5 / 1e9)
    assert triton["ratio"] == pytest.approx(triton["GB/s"] / 100.0)
    assert triton["vs_merged"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown kernel benchmark variant 'fused'"):
        bench_kernels.bytes_moved(shape, "fused", 2)
    with pytest.raises(ValueError, match="every size must be >= 1"):
        bench_kernels.KernelShape("bad", rows=0, tokens=1, d_in=1, d_out=1, rank=1)


def test_benchmark_variants_compute_the_same_thing_on_cpu():
    """The merged weight carries LoRA 0 and the reference routes rows to their own LoRA, so the
    timings compare the same operation (Triton variants need CUDA and are left out here)."""
    shape = bench_kernels.KernelShape("s", rows=3, tokens=5, d_in=24, d_out=20, rank=4)
    inputs = bench_kernels.make_inputs(shape, torch.float32, "cpu")
    assert inputs["rows"].tolist() == [2, 1, 0]
    errors = bench_kernels.variant_errors(inputs, with_triton=False)
    assert set(errors) == {"torch_reference", "merged_matmul"}
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled Triton kernels need a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_compiled_triton_kernels_match_the_reference_on_the_gpu(dtype):
    """On a real GPU (not the interpreter): the dispatcher picks Triton, and the delta and the fused
    add agree with the float32 torch reference at the benchmark's real-width shapes and odd ones."""
    from hywu_core.kernels import triton_available

    if not triton_available():
        pytest.fail("triton does not import on this CUDA machine: install the triton that matches torch")
    shapes = [bench_kernels.KernelShape("odd", rows=3, tokens=37, d_in=300, d_out=40, rank=5), *bench_kernels.DEFAULT_SHAPES]
    for shape in shapes:
        inputs = bench_kernels.make_inputs(shape, dtype, "cuda")
        x, A, B, rows = inputs["x"], inputs["A"], inputs["B"], inputs["rows"]
        assert backend_for(x, A, B) == "triton", shape
        expected = per_row_lora_reference(x.float(), A.float(), B.float(), rows, 2.0)
        expected_sum = inputs["out"].float() + expected
        delta = per_row_lora(x, A, B, rows, 2.0).float()
        added = per_row_lora_add_(inputs["out"].clone(), x, A, B, rows, 2.0).float()
        tolerance = TOLERANCE[str(dtype).removeprefix("torch.")]
        assert ((delta - expected).abs().max() / expected.abs().max()).item() < tolerance, shape
        assert ((added - expected_sum).abs().max() / expected_sum.abs().max()).item() < tolerance, shape


def test_the_torch_path_fuses_the_add_into_the_output_when_no_graph_is_needed(monkeypatch):
    """On the CPU a float32 output takes the delta through out.baddbmm_ (no d_out-wide temporary, the
    scale on the rank-r intermediate); with a graph to keep, or another dtype, it adds the reference's delta."""
    import hywu_core.kernels as kernels

    g = torch.Generator().manual_seed(0)
    x, A, B = torch.randn(3, 5, 24, generator=g), torch.randn(4, 6, 24, generator=g), torch.randn(4, 20, 6, generator=g)
    rows, out = torch.tensor([3, 0, 3]), torch.randn(3, 5, 20, generator=g)
    expected = out + per_row_lora_reference(x, A, B, rows, 0.7)
    delta_calls = []
    reference = kernels.per_row_lora_reference
    monkeypatch.setattr(kernels, "per_row_lora_reference", lambda *a: delta_calls.append(1) or reference(*a))
    with torch.no_grad():
        fused = per_row_lora_add_(out.clone(), x, A, B, rows, 0.7)
    assert delta_calls == [] and torch.allclose(fused, expected, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        per_row_lora_add_(out.clone().to(torch.bfloat16), x.bfloat16(), A, B, rows, 0.7)   # bf16 out: not fusable
    assert delta_calls == [1]
    A.requires_grad_(True)
    tracked = per_row_lora_add_(out.clone(), x, A, B, rows, 0.7)
    assert delta_calls == [1, 1] and tracked.requires_grad
    torch.testing.assert_close(tracked.detach(), expected, rtol=1e-6, atol=1e-6)
