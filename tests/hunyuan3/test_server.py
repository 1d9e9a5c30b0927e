"""HunyuanImage-3 in a real ComfyUI server: the canvas workflow's API twin on the tiny checkpoint reproduces the
reference pipeline's image for the same seed, the headless command writes the same image, and bad input gets a
clear node error while the server keeps serving."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hywu_core.tools.comfy_client import PromptFailed
from tests.hunyuan3.helpers import DATA

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "hunyuan3_edit.json"
MANIFEST = json.loads((DATA / "reference.json").read_text())["inputs"]


@pytest.fixture(scope="module")
def tiny_folder(comfy_server):
    """The tiny checkpoint linked into the server's models/hunyuan3, plus a broken copy and a wrong folder."""
    root = comfy_server.models_dir / "hunyuan3"
    root.mkdir(parents=True, exist_ok=True)
    link = root / "tiny_model"
    if not link.exists():
        link.symlink_to(DATA / "tiny_model", target_is_directory=True)
    truncated = root / "tiny_truncated"
    if not truncated.exists():
        shutil.copytree(DATA / "tiny_model", truncated)
        shard = truncated / "model-00002-of-00002.safetensors"
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    wrong = root / "not_hunyuan"
    wrong.mkdir(exist_ok=True)
    (wrong / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 8}))
    return "tiny_model"


def edit_prompt(client, folder, **overrides):
    prompt = json.loads(WORKFLOW.read_text())
    names = [client.upload_image(DATA / name) for name in MANIFEST["images"]]
    prompt["1"]["inputs"]["image"], prompt["2"]["inputs"]["image"] = names
    prompt["3"]["inputs"]["model_folder"] = folder
    prompt["4"]["inputs"].update(prompt=MANIFEST["edit_prompt"], cot_text=MANIFEST["edit_cot_text"],
                                 image_size=MANIFEST["image_size"], seed=MANIFEST["seed"])
    prompt["4"]["inputs"].update(overrides)
    return prompt


def pixels(data):
    return np.asarray(Image.open(data).convert("RGB")).astype(int)


def test_api_twin_reproduces_the_reference_image(client, tiny_folder):
    entry = client.run(edit_prompt(client, tiny_folder))
    (ref,) = client.output_images(entry)
    ours = pixels(__import__("io").BytesIO(client.fetch_image(ref)))
    expected = pixels(DATA / "reference_edit.png")
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1


@pytest.mark.parametrize("folder, override, message", [
    ("not_hunyuan", {}, "is not a HunyuanImage-3 config"),
    ("tiny_truncated", {}, "truncated or corrupt"),
    ("tiny_model", {"prompt": "  "}, "prompt is empty"),
    ("tiny_model", {"image_size": "huge"}, "image size 'huge' is not understood"),
])
def test_bad_input_is_a_clear_node_error_and_the_server_keeps_serving(client, tiny_folder, folder, override,
                                                                      message):
    with pytest.raises(PromptFailed, match=message):
        client.run(edit_prompt(client, folder, **override))
    assert client.get_json("/system_stats")["system"]


def test_an_image_too_small_is_a_clear_node_error(client, tiny_folder, tmp_path):
    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "speck.png")
    prompt = edit_prompt(client, tiny_folder)
    prompt["1"]["inputs"]["image"] = client.upload_image(tmp_path / "speck.png")
    with pytest.raises(PromptFailed, match="8x8 pixels, too small"):
        client.run(prompt)
    assert client.get_json("/system_stats")["system"]


def test_headless_command_writes_the_reference_image(hywu, tmp_path, tiny_folder):
    images = [arg for name in MANIFEST["images"] for arg in ("--image", DATA / name)]
    done = hywu("hunyuan3-edit", "--model", DATA / "tiny_model", "--prompt", MANIFEST["edit_prompt"], *images,
                "--cot-text", MANIFEST["edit_cot_text"], "--seed", MANIFEST["seed"], "--image-size",
                MANIFEST["image_size"], "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.abs(pixels(tmp_path / "out" / "base.png") - pixels(DATA / "reference_edit.png")).max() <= 1


def test_headless_command_refuses_bad_arguments(hywu, tmp_path):
    done = hywu("hunyuan3-edit", "--model", tmp_path, "--prompt", "x", "--seed", 1, "--image-size", "256x256",
                "--out", tmp_path / "out", "--cot-text", "")
    assert done.returncode == 2 and "no config.json" in done.stderr


def test_cot_node_decodes_the_reference_greedy_cot(client, tiny_folder):
    """The CoT node on the reference's CoT request (its 16 greedy tokens; the images' posterior noise seeded as the
    reference's CoT stage drew it) gives the reference's CoT text."""
    manifest = json.loads((DATA / "reference.json").read_text())
    cot = manifest["cot"]
    prompt = json.loads(WORKFLOW.read_text())
    names = [client.upload_image(DATA / name) for name in MANIFEST["images"]]
    prompt["1"]["inputs"]["image"], prompt["2"]["inputs"]["image"] = names
    prompt["3"]["inputs"]["model_folder"] = tiny_folder
    prompt["12"]["inputs"]["value"] = cot["prompt"]
    prompt["13"]["inputs"].update(max_new_tokens=cot["max_new_tokens"], seed=419610)
    graph = {k: prompt[k] for k in ("1", "2", "3", "12", "13")}
    graph["20"] = {"class_type": "PreviewAny", "inputs": {"source": ["13", 0]}}
    entry = client.run(graph)
    (text,) = entry["outputs"]["20"]["text"]
    assert text == cot["cot_text"]


def test_headless_command_writes_its_own_cot_without_cot_text(hywu, tmp_path, tiny_folder):
    done = hywu("hunyuan3-edit", "--model", DATA / "tiny_model", "--prompt", MANIFEST["t2i_prompt"], "--seed", 3,
                "--image-size", "256x256", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    assert Image.open(tmp_path / "out" / "base.png").size == (256, 256)
