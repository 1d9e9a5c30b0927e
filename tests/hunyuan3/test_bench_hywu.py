"""The HY-WU generation-cost bench measures what it says: on the tiny checkpoint its dynamic-LoRA step equals the
step with the LoRA merged into the weights, the LoRA moves that step, and every ratio is a finite positive number;
merge mode's patch restores the base weights exactly; the GPU check's part runs in its CPU dry mode."""
import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from hywu_core.bench import hunyuan3_hywu
from hywu_core.condition import Condition
from hywu_core.generated_lora import generate_lora
from hywu_core.generator_files import load_generator
from hywu_core.hunyuan3.moe import EXPERT_LORA_SLOTS
from tests.hunyuan3.helpers import DATA

TIMED = {"condition", "generator", "first step", "step", "first step, dynamic", "step, dynamic", "patch",
         "first step, merged", "step, merged", "base run", "HY-WU run, dynamic", "HY-WU run, merged"}


@pytest.fixture(scope="module")
def row():
    return hunyuan3_hywu.bench_hywu(repeats=1)


def test_bench_reports_every_part_and_finite_positive_ratios(row):
    assert row["device"].startswith("CPU") and row["steps"] == 4 and row["batch"] == 2
    assert row["condition_tokens"] == load_file(str(DATA / "hywu_reference.safetensors"))["hywu.condition"].shape[1]
    assert row["image_tokens"] == 16 * 16 and row["sequence_tokens"] > row["image_tokens"]
    assert set(row["ms"]) == TIMED and all(v > 0 for v in row["ms"].values())
    e2e = row["end_to_end"]
    assert e2e["measured"]["steps"] == 4 and set(e2e["projected"]) == {"4", "50"}
    ratios = [*row["ratios"].values(), e2e["measured"]["dynamic"], e2e["measured"]["merged"],
              *(v for at in e2e["projected"].values() for v in at.values())]
    assert len(ratios) == 7 + 2 + 4 and all(math.isfinite(v) and v > 0 for v in ratios), ratios
    ms = row["ms"]
    assert row["ratios"]["generator_over_step"] == ms["generator"] / ms["step"]
    expected = (ms["condition"] + ms["generator"] + ms["patch"] + ms["first step, merged"] + 49 * ms["step, merged"]) \
        / (ms["first step"] + 49 * ms["step"])
    assert e2e["projected"]["50"]["merged"] == pytest.approx(expected)


def test_dynamic_lora_step_equals_the_merged_weights_step(row):
    assert row["check"]["dynamic_vs_merged"] < 1e-5
    assert row["check"]["lora_change"] > 0.1, "the LoRA must move the step for the equality to mean anything"


def test_merge_patch_is_the_merged_copy_and_restores_the_base_weights(transformer):
    model = copy.deepcopy(transformer)
    condition = Condition.from_tensors(load_file(str(DATA / "hywu_reference.safetensors"))["hywu.condition"])
    lora = generate_lora(load_generator(DATA / "tiny_generator"), condition).bundle.bound(EXPERT_LORA_SLOTS)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    merged = hunyuan3_hywu.merged_copy(model, lora).state_dict()
    with hunyuan3_hywu.merged_into(model, lora):
        patched = {k: v.clone() for k, v in model.state_dict().items()}
    changed = [k for k in base if not torch.equal(patched[k], base[k])]
    assert any(".mlp.experts.0.gate_and_up_proj" in k for k in changed) and any("qkv_proj" in k for k in changed)
    assert all(torch.equal(patched[k], merged[k]) for k in base)
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())


def test_gpu_check_part_runs_in_its_dry_mode(hywu, tmp_path):
    out = tmp_path / "gpu.json"
    result = hywu("bench", "--gpu", "--dry-run", "--parts", "hunyuan3_hywu", "--json", out, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert set(report) & {"kernels", "generator", "tests"} == set()
    part = report["hunyuan3_hywu"]["result"]
    assert "error" not in part, part
    assert part["layers"] == 2 and part["lora_finite"] is True and part["generator_peak_gib"] is None
    assert set(part["ms_per_model"]) == {"generator", "condition", "first step", "step", "first step, dynamic",
                                         "step, dynamic"}
    ratios = [part[k] for k in ("generator_over_step", "condition_over_step", "step_dynamic_over_base",
                                "end_to_end_at_50")]
    assert all(math.isfinite(v) and v > 0 for v in ratios), ratios
