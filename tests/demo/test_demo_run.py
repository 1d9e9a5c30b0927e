"""`./hywu demo`: edits bundled inputs through a headless ComfyUI and writes the side-by-side PNG."""
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
    assert Image.open(grid).size == (3 * 128 + 220, 24 + 4 * 128)
    pairs = sorted(out.glob("*__hywu.png"))
    assert len(pairs) == 4
    for edited in pairs:
        base = edited.with_name(edited.name.replace("__hywu", "__base"))
        assert not np.array_equal(np.asarray(Image.open(edited)), np.asarray(Image.open(base)))


def test_demo_without_the_family_says_what_is_missing(hywu, tmp_path):
    result = hywu("demo", "--models", tmp_path)
    assert result.returncode != 0
    assert "the demo family is incomplete" in result.stderr and "hywu/hywu_demo.safetensors" in result.stderr
