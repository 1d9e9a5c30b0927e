"""`./hywu bench`: ratios measured in one run, printed with the device and written to JSON."""
import json


def test_bench_quick_prints_ratios_and_writes_json(hywu, tmp_path):
    out = tmp_path / "bench.json"
    result = hywu("bench", "--quick", "--json", out, timeout=900)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert result.stdout.startswith(f"device: {report['device']}")
    assert [row["batch"] for row in report["sampling"]] == [1, 4]
    for row in report["sampling"]:
        assert set(row["ms_per_step"]) == {"base", "merge", "dynamic"}
        assert all(value > 0 for value in row["ms_per_step"].values())
        assert row["dynamic_over_base"] == row["ms_per_step"]["dynamic"] / row["ms_per_step"]["base"]
    overhead = report["overhead"]
    assert overhead["steps"] == 20 and overhead["paper_overhead"] == 0.067
    assert overhead["overhead"] == overhead["seconds"]["hywu_merge"] / overhead["seconds"]["base"] - 1
    assert f"paper: 6.7%" in result.stdout
    assert [(row["l"], row["r"]) for row in report["generator"]] == [(4, 4), (8, 8)]
    assert report["kernels"] and ("needs CUDA" in json.dumps(report["kernels"])) == (report["device"].startswith("CPU"))
