"""`./hywu bench`: ratios measured in one run, printed with the device and written to JSON; and the
GPU check `./hywu bench --gpu`, run here in its CPU dry mode so that it cannot rot."""
import json

import pytest
import torch

from hywu_core.bench import end_to_end, generator_parts, real_width
from hywu_core.bench.attention import token_layout
from hywu_core.bench.suite import flushing_subnormals
from hywu_core.nnt import NNT, NNTConfig
from hywu_core.targets import TargetBlock, TargetModule, TargetSpec


def test_bench_quick_prints_ratios_and_writes_json(hywu, tmp_path):
    out = tmp_path / "bench.json"
    result = hywu("bench", "--quick", "--json", out, timeout=900)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert result.stdout.startswith(f"device: {report['device']}")
    assert report["command"] == "./hywu bench --quick" and report["date"].startswith("20")
    assert [row["batch"] for row in report["sampling"]] == [1, 4]
    for row in report["sampling"]:
        assert set(row["ms_per_step"]) == {"base", "merge", "dynamic"}
        assert row["dynamic_over_base"] == row["ms_per_step"]["dynamic"] / row["ms_per_step"]["base"]
    for key in ("flush_off", "flush_on"):
        row = report["subnormals"][key]
        assert set(row["ms"]) == {"base", "merge", "baked"} and all(v > 0 for v in row["ms"].values())
        assert row["merge_over_baked"] == pytest.approx(row["ms"]["merge"] / row["ms"]["baked"])
    assert report["subnormals"]["flush_off"]["flushing"] is False

    linear = report["real_width"]["linear"]
    case = real_width.QUICK_LINEAR_CASES[0]
    assert [(r["rows"], r["d_in"], r["rank"]) for r in linear] == [(case.rows, case.d_in, case.rank)]
    assert linear[0]["limit"] == 1 + case.rank * (case.d_in + case.d_out) / (case.d_in * case.d_out)
    assert set(linear[0]["over_none"]) == {"merged", "per_row", "per_row_add_"}
    stack = report["real_width"]["stack"]
    assert stack["width"] == 64 * real_width.QUICK_STACK_CASE.depth and stack["image_tokens"] == 256
    assert stack["merge_over_base"] == stack["ms_per_step"]["merge"] / stack["ms_per_step"]["base"]
    assert stack["threads"] == 1
    assert "per sampling step on a stack of real-width MMDiT joint blocks" in result.stdout

    e2e = report["end_to_end"]
    assert e2e["paper_overhead"] == 0.067 and e2e["steps"] == 4
    for name in ("cache_off", "cache_on"):
        parts = e2e[name]["ms"]
        assert set(parts) == set(end_to_end.PARTS) and all(v > 0 for v in parts.values())
        assert e2e[name]["overhead"] == pytest.approx(sum(parts.values()) / e2e["base_ms"] - 1)
    # a cache hit skips the generator: a lookup against a forward pass
    assert e2e["cache_on"]["ms"]["generate"] < e2e["cache_off"]["ms"]["generate"] / 5
    assert "paper: 6.7%" in result.stdout

    cache = report["hunyuan3_prefix_cache"]
    assert cache["tokens"] == 300 + 1 + 64 + 1 and cache["max_abs_diff_vs_full"] < 1e-5
    assert "HunyuanImage-3 prefix cache" in result.stdout

    assert [(row["l"], row["r"]) for row in report["generator"]] == [(4, 4), (8, 8)]
    parts = report["generator_parts"][0]["variants"]
    assert set(parts["factorized"]["ms"]) >= {"inter_attn", "intra_attn", "cross_attn", "ffn", "heads", "other"}
    assert "self_attn" in parts["full"]["ms"] and "inter_attn" not in parts["full"]["ms"]
    assert report["kernels"] and ("needs CUDA" in json.dumps(report["kernels"])) == (report["device"].startswith("CPU"))


def test_gpu_check_runs_every_part_in_its_dry_mode(hywu, tmp_path):
    out = tmp_path / "gpu.json"
    result = hywu("bench", "--gpu", "--dry-run", "--json", out, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["command"] == "./hywu bench --gpu --dry-run"
    for part in ("kernels", "linear", "stack", "generator", "tests"):
        assert not (isinstance(report[part]["result"], dict) and "error" in report[part]["result"]), report[part]
    kernels = report["kernels"]["result"]
    assert {row["name"] for row in kernels} == {"torch_reference", "merged_matmul"}
    assert all(row["max_rel_error"] < 1e-5 and "dry run" in row["note"] for row in kernels)
    generator = report["generator"]["result"]
    assert generator["lora_finite"] is True and generator["layers"] == 2 and generator["seconds_per_lora"] > 0
    tests = report["tests"]["result"]
    assert tests["returncode"] == 0 and tests["collected_only"] is True
    # the CUDA-only tests of the suite exist and carry the marker the GPU machine selects by
    assert "deselected" in tests["summary"] and int(tests["summary"].split("/")[0]) >= 4, tests["summary"]


def test_gpu_check_without_a_gpu_says_how_to_run_it(hywu):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = hywu("bench", "--gpu", "--json", "unused.json", timeout=300)
    assert result.returncode == 2
    assert "no CUDA device here" in result.stderr and "--dry-run" in result.stderr


def test_flushing_subnormals_is_scoped():
    tiny = torch.tensor([1e-39], dtype=torch.float32)       # a subnormal float32
    with flushing_subnormals() as flushing:
        inside = (tiny * 1.0).item()
    after = (tiny * 1.0).item()
    if not flushing:
        pytest.skip("this CPU cannot flush subnormals")
    assert inside == 0.0 and after == pytest.approx(1e-39, rel=1e-3)


def test_generator_part_flops_count_each_attention():
    """The FLOP model against a hand count: l=2, s=2, r=2 (S=4, P=8), width 12, one block, 3 condition tokens."""
    layout = token_layout(2, 2, 2, 4)
    model = NNT(NNTConfig(cond_dim=8, width=12, depth=1, heads=2, ffn_dim=32), layout)
    flops = generator_parts.part_flops(model, cond_len=3)
    P, C = 8, 12
    assert flops["inter_attn"] == 2 * (4 * P * C * C + 2 * P * 2 * C)
    assert flops["intra_attn"] == 2 * (4 * P * C * C + 2 * P * 4 * C)
    assert flops["cross_attn"] == 2 * (2 * P * C * C + 2 * 3 * C * C + 2 * P * 3 * C)
    assert flops["condition"] == 2 * 3 * 8 * C
    assert flops["ffn"] == 2 * 2 * P * C * 32 and flops["heads"] == 2 * P * C * 4
    full = NNT(NNTConfig(cond_dim=8, width=12, depth=1, heads=2, ffn_dim=32, attention="full"), layout)
    assert generator_parts.part_flops(full, 3)["self_attn"] == 2 * (4 * P * C * C + 2 * P * P * C)
    assert generator_parts.part_of("blocks.0.inter_attn") == "inter_attn"
    assert generator_parts.part_of("blocks.0.inter_attn.to_q") is None      # inside a timed part
    assert generator_parts.part_of("blocks.1.norm_ffn") == "norms" and generator_parts.part_of("embed_norm") is None


def test_lora_flop_limit_counts_experts():
    spec = TargetSpec((TargetBlock("b.0", (TargetModule("q", 100, 100), TargetModule("e", 100, 50, experts=4))),))
    assert real_width.lora_flop_limit(spec, 10) == pytest.approx(1 + (10 * 200 + 4 * 10 * 150) / (100 * 100 + 4 * 5000))
    assert real_width.LinearCase(2, 8, 3072, 3072, 16).limit() == pytest.approx(1 + 32 / 3072)


def test_the_readme_bench_tables_are_rendered_from_the_committed_json():
    """The README's figures come from docs/bench/cpu.json, not from a hand: same text as the renderer's."""
    from pathlib import Path

    from hywu_core.bench import report as bench_report

    repo = Path(__file__).resolve().parents[1]
    committed = json.loads((repo / "docs" / "bench" / "cpu.json").read_text())
    assert committed["command"] == "./hywu bench" and committed["device"].startswith("CPU")
    readme = (repo / "README.md").read_text()
    assert bench_report.readme_block(readme) == bench_report.render(committed, "docs/bench/cpu.json")
    with pytest.raises(ValueError, match="no bench block"):
        bench_report.readme_block("# a README without the markers\n")
