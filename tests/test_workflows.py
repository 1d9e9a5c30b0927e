"""workflows/: each UI workflow is the up-to-date twin of workflows/api/, named by its title, served as a template."""
import json
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from hywu_core.tools.workflow_ui import (
    api_to_ui,
    canvas_path,
    canvas_title,
    check_against_object_info,
    same_graph,
    ui_to_api,
)

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
API_TWINS = sorted((WORKFLOWS / "api").glob("*.json"))
REAL_BACKBONE = {"hywu_qwen_image_edit",  # weights not here: checked against /object_info only
                 "hunyuan3_edit",         # runs on the tiny HunyuanImage-3 checkpoint: tests/hunyuan3/test_server.py
                 "hywu_hunyuan3_edit", "hywu_hunyuan3_diagnostics"}   # tests/hunyuan3/test_hywu_server.py


def test_every_api_workflow_has_a_note_and_a_ui_twin_named_by_its_title():
    assert API_TWINS, "no example workflows"
    assert all((WORKFLOWS / "notes" / f"{p.stem}.md").is_file() for p in API_TWINS)
    assert {canvas_path(p.stem) for p in API_TWINS} == set(WORKFLOWS.glob("*.json"))
    assert {canvas_path(p.stem).with_suffix(".jpg") for p in API_TWINS} == set(WORKFLOWS.glob("*.jpg"))
    titles = [canvas_title(p.stem) for p in API_TWINS]
    assert len(set(titles)) == len(titles) and all(" " in t and "_" not in t and t[0].isupper() for t in titles)


def test_a_title_that_cannot_be_a_file_name_is_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("# HY-WU: colon\n")
    (tmp_path / "notes" / "b.md").write_text("no heading\n")
    with pytest.raises(ValueError, match="leave out :"):
        canvas_title("a", tmp_path)
    with pytest.raises(ValueError, match="must start with '# TITLE'"):
        canvas_title("b", tmp_path)


@pytest.mark.parametrize("api_path", API_TWINS, ids=lambda p: p.stem)
def test_ui_twin_describes_the_same_graph_and_is_up_to_date(client, api_path):
    info = client.object_info()
    api = json.loads(api_path.read_text())
    ui = json.loads(canvas_path(api_path.stem).read_text())
    missing = sorted({node["type"] for node in ui["nodes"]} - set(info) - {"MarkdownNote"})
    assert not missing, f"node types the server does not know: {missing}"
    assert same_graph(api, ui_to_api(ui, info)) == []
    note = (WORKFLOWS / "notes" / f"{api_path.stem}.md").read_text()
    assert ui == api_to_ui(api, info, note), "stale UI twin: run `python -m hywu_core.tools.workflow_ui` (see README)"


def test_ui_workflows_are_served_as_templates(client):
    templates = client.get_json("/workflow_templates")
    assert sorted(templates.get("ComfyUI-HY-WU", [])) == sorted(canvas_title(p.stem) for p in API_TWINS)
    for path in API_TWINS:
        served = client.get_json(f"/api/workflow_templates/ComfyUI-HY-WU/{quote(canvas_title(path.stem))}.json")
        assert served == json.loads(canvas_path(path.stem).read_text())


def test_same_graph_names_a_changed_widget():
    api = {"1": {"class_type": "A", "inputs": {"x": 1}}, "2": {"class_type": "B", "inputs": {"y": ["1", 0]}}}
    changed = {"1": {"class_type": "A", "inputs": {"x": 2}}, "2": {"class_type": "B", "inputs": {"y": ["1", 0]}}}
    assert same_graph(api, changed) == ["node 1 input x: 1 vs 2"]


@pytest.mark.parametrize("api_path", API_TWINS, ids=lambda p: p.stem)
def test_api_twin_fits_the_node_definitions(client, api_path):
    assert check_against_object_info(json.loads(api_path.read_text()), client.object_info()) == []


def test_the_check_names_a_wrong_link_type_and_an_unknown_input(client):
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
              "2": {"class_type": "VAEDecode", "inputs": {"samples": ["1", 0], "vae": ["1", 1], "frames": 2}}}
    assert check_against_object_info(prompt, client.object_info()) == [
        "node 2 input samples: expects LATENT, node 1 gives IMAGE",
        "node 2 input vae: expects VAE, node 1 gives MASK",
        "node 2 (VAEDecode): no input named frames"]


@pytest.mark.parametrize("api_path", [p for p in API_TWINS if p.stem not in REAL_BACKBONE], ids=lambda p: p.stem)
def test_demo_family_api_twin_runs(client, server_family, tmp_path, api_path):
    for i, name in enumerate(("hywu_demo_source.png", "hywu_demo_source_2.png", "hywu_demo_source_3.png")):
        pixels = np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / name)
        client.upload_image(tmp_path / name)
    prompt = json.loads(api_path.read_text())
    for node in prompt.values():
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 3
    entry = client.run(prompt)
    saved = client.output_images(entry)
    save_nodes = [i for i, n in prompt.items() if n["class_type"] == "SaveImage"]
    assert sorted({ref.node for ref in saved}) == sorted(save_nodes)
