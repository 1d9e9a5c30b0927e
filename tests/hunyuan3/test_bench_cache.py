"""The prefix-cache bench measures what it says: its later step equals a full recompute."""
from hywu_core.bench.hunyuan3_cache import bench_prefix_cache


def test_prefix_cache_bench_row():
    row = bench_prefix_cache(repeats=1, prefix=120, grid=4)
    assert row["tokens"] == 120 + 1 + 16 + 1 and row["image_tokens"] == 16
    assert row["max_abs_diff_vs_full"] < 1e-5
    assert row["ms"]["first step"] > 0 and row["later_over_first"] > 0
