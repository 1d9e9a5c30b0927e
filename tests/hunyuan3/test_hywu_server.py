"""HY-WU on HunyuanImage-3 in a real ComfyUI server: the canvas workflow's API twin, with the tiny checkpoint and
the tiny official-layout generator, gives the reference pipeline's base and HY-WU images for the same seed; the
diagnostics workflow runs; the headless command writes edit.png, the condition and the LoRA in the official names."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from tests.hunyuan3.helpers import DATA

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows" / "api"
MANIFEST = json.loads((DATA / "hywu_reference.json").read_text())["inputs"]


@pytest.fixture(scope="module")
def folders(comfy_server):
    """The tiny checkpoint in the server's models/hunyuan3 and the tiny generator in its models/hywu."""
    for sub, name in (("hunyuan3", "tiny_model"), ("hywu", "tiny_generator")):
        root = comfy_server.models_dir / sub
        root.mkdir(parents=True, exist_ok=True)
        if not (root / name).exists():
            (root / name).symlink_to(DATA / name, target_is_directory=True)
    return "tiny_model", "tiny_generator"


def pixels(data):
    return np.asarray(Image.open(data).convert("RGB")).astype(int)


def fill(client, prompt, folders, conditioning=("4",)):
    """The reference request in every Conditioning node, the tiny folders in the loaders, the CoT given as text."""
    names = [client.upload_image(DATA / name) for name in MANIFEST["images"]]
    for node, name in zip(("1", "2"), names):
        prompt[node]["inputs"]["image"] = name
    prompt["3"]["inputs"]["model_folder"], prompt["14"]["inputs"]["generator"] = folders
    for node in conditioning:
        prompt[node]["inputs"].update(cot_text=MANIFEST["edit_cot_text"], image_size=MANIFEST["image_size"],
                                      seed=MANIFEST["seed"])
    prompt["12"]["inputs"]["value"] = MANIFEST["edit_prompt"]
    return prompt


def saved(client, entry, title_prefix):
    images = {ref.filename.rsplit("_", 2)[0]: ref for ref in client.output_images(entry)}
    return {name: pixels(io.BytesIO(client.fetch_image(ref))) for name, ref in images.items()
            if name.startswith(title_prefix)}


def test_hywu_workflow_reproduces_the_reference_base_and_hywu_images(client, folders):
    prompt = fill(client, json.loads((WORKFLOWS / "hywu_hunyuan3_edit.json").read_text()), folders)
    entry = client.run(prompt)
    images = saved(client, entry, "")
    assert np.abs(images["base"] - pixels(DATA / "reference_edit.png")).max() <= 1
    assert np.abs(images["hywu"] - pixels(DATA / "reference_hywu_edit.png")).max() <= 1
    assert np.abs(images["hywu"] - images["base"]).mean() > 5
    assert set(entry["outputs"]["22"]["hywu_files"][0]) == {"filename", "subfolder", "type"}


def test_diagnostics_workflow_runs_base_hywu_average_and_shuffle(client, folders):
    prompt = fill(client, json.loads((WORKFLOWS / "hywu_hunyuan3_diagnostics.json").read_text()), folders,
                  conditioning=("4", "27"))
    prompt["27"]["inputs"]["cot_text"] = "<recaption>Another edit.</recaption>"
    prompt["25"]["inputs"]["value"] = "Something else entirely."
    images = saved(client, client.run(prompt), "")
    assert set(images) == {"base", "hywu", "average", "shuffle"}
    assert np.abs(images["base"] - pixels(DATA / "reference_edit.png")).max() <= 1
    assert np.abs(images["hywu"] - pixels(DATA / "reference_hywu_edit.png")).max() <= 1
    for other in ("average", "shuffle"):
        assert np.abs(images[other] - images["hywu"]).mean() > 1, other


def test_headless_command_with_a_generator_writes_edit_condition_and_lora(hywu, tmp_path, folders):
    images = [arg for name in MANIFEST["images"] for arg in ("--image", DATA / name)]
    out = tmp_path / "out"
    done = hywu("hunyuan3-edit", "--model", DATA / "tiny_model", "--generator", DATA / "tiny_generator",
                "--prompt", MANIFEST["edit_prompt"], *images, "--cot-text", MANIFEST["edit_cot_text"],
                "--seed", MANIFEST["seed"], "--image-size", MANIFEST["image_size"], "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.abs(pixels(out / "base.png") - pixels(DATA / "reference_edit.png")).max() <= 1
    assert np.abs(pixels(out / "edit.png") - pixels(DATA / "reference_hywu_edit.png")).max() <= 1
    reference = load_file(str(DATA / "hywu_reference.safetensors"))
    condition = load_file(str(out / "condition.safetensors"))["condition"]
    assert condition.shape == reference["hywu.condition"].shape
    assert (condition - reference["hywu.condition"]).abs().max() <= 1e-5 * reference["hywu.condition"].abs().max()
    lora = load_file(str(out / "lora.safetensors"))
    expected = {k.removeprefix("hywu.lora."): v for k, v in reference.items() if k.startswith("hywu.lora.")}
    assert set(lora) == set(expected)
    for key, value in expected.items():
        assert lora[key].shape == value.shape
        assert (lora[key] - value).abs().max() <= 1e-5 * max(value.abs().max(), 1e-12), key


def test_headless_command_refuses_a_generator_folder_without_config(hywu, tmp_path):
    done = hywu("hunyuan3-edit", "--model", DATA / "tiny_model", "--generator", tmp_path, "--prompt", "x",
                "--seed", 1, "--image-size", "256x256", "--out", tmp_path / "out")
    assert done.returncode == 2 and "no config.json there; give the official HY-WU generator folder" in done.stderr
