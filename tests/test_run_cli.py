"""`./hywu run`: headless API-format workflows, their outputs, and ComfyUI's own error text."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

WORKFLOW = Path(__file__).resolve().parent / "workflows" / "invert_api.json"


def assert_inverted(image, pixels):
    """ImageInvert through ComfyUI: float 1-x, saved with truncation, so within one grey level."""
    image = np.asarray(image.convert("RGB")).astype(int)
    assert image.shape == pixels.shape
    assert np.abs(image - (255 - pixels.astype(int))).max() <= 1


@pytest.fixture
def source_png(tmp_path):
    pixels = np.random.default_rng(7).integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    path = tmp_path / "source.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


def test_run_starts_comfyui_and_saves_the_output(hywu, tmp_path, source_png):
    path, pixels = source_png
    out = tmp_path / "out"
    result = hywu("run", WORKFLOW, "--input", f"1.image={path}", "--out", out)
    assert result.returncode == 0, result.stderr
    saved = [Path(line) for line in result.stdout.splitlines()]
    assert len(saved) == 1 and saved[0].parent == out and saved[0].is_file()
    assert_inverted(Image.open(saved[0]), pixels)
    assert "Invert Image #2" in result.stderr, "progress display should name the running node"


def test_run_against_a_running_server_with_input_by_title(hywu, comfy_server, tmp_path, source_png):
    path, pixels = source_png
    out = tmp_path / "out"
    result = hywu("run", WORKFLOW, "--server", comfy_server.url, "--input", f"Source.image={path}",
                  "--input", "3.filename_prefix=titled", "--out", out)
    assert result.returncode == 0, result.stderr
    saved = [Path(line) for line in result.stdout.splitlines()]
    assert [p.name.startswith("titled") for p in saved] == [True]
    assert_inverted(Image.open(saved[0]), pixels)


def test_validation_failure_exits_nonzero_with_comfyui_text(hywu, comfy_server, tmp_path):
    result = hywu("run", WORKFLOW, "--server", comfy_server.url, "--out", tmp_path / "out")
    assert result.returncode == 1
    assert "ComfyUI rejected the prompt" in result.stderr
    assert "Prompt outputs failed validation" in result.stderr
    assert "Invalid image file: example.png" in result.stderr
    assert "node 1 (LoadImage)" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unknown_node_type_exits_nonzero_with_comfyui_text(hywu, comfy_server, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"1": {"class_type": "NoSuchNode", "inputs": {}}}))
    result = hywu("run", broken, "--server", comfy_server.url, "--out", tmp_path / "out")
    assert result.returncode == 1
    assert "NoSuchNode" in result.stderr and "does not exist" in result.stderr


def test_execution_failure_exits_nonzero_with_comfyui_text(hywu, comfy_server, tmp_path, source_png):
    path, _ = source_png
    result = hywu("run", WORKFLOW, "--server", comfy_server.url, "--input", f"1.image={path}",
                  "--input", "3.filename_prefix=../../escape", "--out", tmp_path / "out")
    assert result.returncode == 1
    assert "the prompt failed in ComfyUI" in result.stderr
    assert "node 3 (SaveImage)" in result.stderr
    assert "Saving image outside the output folder is not allowed" in result.stderr


@pytest.mark.parametrize("override, message", [
    ("9.image=x.png", "no node '9' in the workflow"),
    ("2.strength=1", "has no input 'strength'"),
    ("2.image=x.png", "is a link from node 1"),
    ("seed=3", "expected NODE.FIELD=VALUE"),
])
def test_bad_input_override_is_explained(hywu, comfy_server, tmp_path, override, message):
    result = hywu("run", WORKFLOW, "--server", comfy_server.url, "--input", override, "--out", tmp_path)
    assert result.returncode == 2
    assert message in result.stderr


def test_ui_format_workflow_is_refused_with_a_hint(hywu, tmp_path):
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    result = hywu("run", ui)
    assert result.returncode == 2
    assert "UI-format workflow" in result.stderr and "API format" in result.stderr
