"""`./hywu demo`: edits bundled inputs through a headless ComfyUI and writes the side-by-side PNG."""
import re
from pathlib import Path

import numpy as np
from PIL import Image

from hywu_core.tiny_editor.family import build_family_files


def test_demo_runs_the_workflow_and_writes_the_side_by_side(hywu, comfy_lib, tmp_path):
    models = tmp_path / "models"
    build_family_files(models, name="hywu_demo", lora_std=0.05)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for seed in range(2):
        pixels = np.random.default_rng(seed).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(inputs / f"photo{seed}.png")
    out = tmp_path / "out"
    result = hywu("demo", "--models", models, "--inputs", inputs, "--out", out, "--steps", "3",
                  "--instruction", "make the image brighter", "--instruction", "blur the image")
    assert result.returncode == 0, result.stderr
    grid = Path(result.stdout.strip().splitlines()[-1])
    assert grid == out.resolve() / "side_by_side.png" and grid.is_file()
    assert Image.open(grid).size == (3 * 128 + 4 * 8, 40 + 4 * (18 + 128 + 8))
    assert '"blur the image" on photo1.png' in result.stderr
    assert re.search(r"ComfyUI is up at http://127\.0\.0\.1:\d+\n", result.stderr), result.stderr
    pairs = sorted(out.glob("*__hywu.png"))
    assert len(pairs) == 4
    for edited in pairs:
        base = edited.with_name(edited.name.replace("__hywu", "__base"))
        assert not np.array_equal(np.asarray(Image.open(edited)), np.asarray(Image.open(base)))


def test_demo_without_the_family_says_what_is_missing(hywu, tmp_path):
    result = hywu("demo", "--models", tmp_path)
    assert result.returncode != 0
    assert "the demo family is incomplete" in result.stderr and "hywu/hywu_demo.safetensors" in result.stderr


def test_bundled_demo_inputs_are_the_test_crop_in_each_state_the_demo_edits_use(tmp_path):
    from hywu_core.demo.images import TEST_SOURCES
    from hywu_core.demo.run import DEMO_EDITS, DEMO_INPUTS, DEMO_SOURCE, write_demo_inputs

    assert DEMO_SOURCE[0] == "test" and DEMO_SOURCE[1] in TEST_SOURCES
    written = write_demo_inputs(tmp_path)
    assert {p.name for p in written} == {edit.input_name for edit in DEMO_EDITS}
    for path in written:
        assert path.read_bytes() == (DEMO_INPUTS / path.name).read_bytes(), path.name
    from hywu_core.demo.edits import DIRECTIONS

    # the picture that explains HY-WU: one instruction on two states of the crop, opposite edits
    assert {e.state for e in DEMO_EDITS if e.instruction == "fix the exposure"} == {"dark", "bright"}
    assert all(DIRECTIONS[e.task].source_state == e.state for e in DEMO_EDITS)
