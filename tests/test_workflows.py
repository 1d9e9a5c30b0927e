"""workflows/: each UI workflow is the up-to-date twin of workflows/api/, served as a template."""
import json
from pathlib import Path

import pytest

from hywu_core.workflow_ui import api_to_ui, same_graph, ui_to_api

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
API_TWINS = sorted((WORKFLOWS / "api").glob("*.json"))


def test_every_api_workflow_has_a_ui_twin_and_a_note():
    assert API_TWINS, "no example workflows"
    assert {p.stem for p in API_TWINS} == {p.stem for p in WORKFLOWS.glob("*.json")}
    assert all((WORKFLOWS / "notes" / f"{p.stem}.md").is_file() for p in API_TWINS)


@pytest.mark.parametrize("api_path", API_TWINS, ids=lambda p: p.stem)
def test_ui_twin_describes_the_same_graph_and_is_up_to_date(client, api_path):
    info = client.object_info()
    api = json.loads(api_path.read_text())
    ui = json.loads((WORKFLOWS / api_path.name).read_text())
    missing = sorted({node["type"] for node in ui["nodes"]} - set(info) - {"MarkdownNote"})
    assert not missing, f"node types the server does not know: {missing}"
    assert same_graph(api, ui_to_api(ui, info)) == []
    note = (WORKFLOWS / "notes" / f"{api_path.stem}.md").read_text()
    assert ui == api_to_ui(api, info, note), "stale UI twin: run `python -m hywu_core.workflow_ui` (see README)"


def test_ui_workflows_are_served_as_templates(client):
    templates = client.get_json("/workflow_templates")
    assert sorted(templates.get("ComfyUI-HY-WU", [])) == sorted(p.stem for p in API_TWINS)
    for path in API_TWINS:
        served = client.get_json(f"/api/workflow_templates/ComfyUI-HY-WU/{path.name}")
        assert served == json.loads((WORKFLOWS / path.name).read_text())


def test_same_graph_names_a_changed_widget():
    api = {"1": {"class_type": "A", "inputs": {"x": 1}}, "2": {"class_type": "B", "inputs": {"y": ["1", 0]}}}
    changed = {"1": {"class_type": "A", "inputs": {"x": 2}}, "2": {"class_type": "B", "inputs": {"y": ["1", 0]}}}
    assert same_graph(api, changed) == ["node 1 input x: 1 vs 2"]
