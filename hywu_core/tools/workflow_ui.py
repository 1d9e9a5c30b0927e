"""API-format workflows <-> the canvas (UI) format, from the node definitions a server reports.

The examples are written once, in API format (workflows/api/NAME.json, what /prompt and
`./hywu run` take), with a note per workflow (workflows/notes/NAME.md, its first line the
workflow's title). `python -m hywu_core.tools.workflow_ui` starts ComfyUI, reads /object_info and
writes each UI twin (workflows/TITLE.json, what the canvas and ComfyUI's template browser load),
laid out left to right by graph depth with the note on the left. `ui_to_api` reads a UI workflow back, so a test
can check that both files describe the same graph.

Frontend facts (1.32.9 and 1.58.1): the Templates browser titles a pack's template with its file
name as it is (no other field, no locale key, no index.json is read for custom nodes) and loads
its thumbnail from the same name + ".jpg"; so the UI twin's file name is the title, written only
with characters Windows and a URL path both keep.

Canvas facts (ComfyUI frontend 1.32): widgets_values lists the node's widget inputs in
definition order (required, then optional), including widgets whose value comes through a link
(their stored value is a placeholder); an INT with control_after_generate is followed by its
control mode ("fixed"), and an image_upload combo by the upload widget's value ("image").
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from hywu_core.tools.comfy_client import ComfyClient
from hywu_core.tools.comfy_server import ComfyServer

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NOTE_TYPE = "MarkdownNote"
REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
NOT_IN_A_TITLE = set('<>:"/\\|?*#%')


def input_specs(definition: dict) -> list[tuple[str, object, dict]]:
    """(name, type, options) of a node's inputs in definition order: required, then optional."""
    specs = []
    for group in ("required", "optional"):
        entries = definition["input"].get(group, {})
        for name in definition.get("input_order", {}).get(group, list(entries)):
            spec = entries[name]
            specs.append((name, spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}))
    return specs


def is_widget(kind) -> bool:
    return isinstance(kind, list) or kind in WIDGET_TYPES


def type_name(kind) -> str:
    return "COMBO" if isinstance(kind, list) else kind


def default_value(kind, options: dict):
    if "default" in options:
        return options["default"]
    choices = kind if isinstance(kind, list) else options.get("options", [])
    if choices:
        return choices[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(type_name(kind), None)


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def depths(prompt: dict) -> dict[str, int]:
    """Each node's longest distance from a node without linked inputs."""
    memo: dict[str, int] = {}

    def depth(node_id: str) -> int:
        if node_id not in memo:
            sources = [v[0] for v in prompt[node_id]["inputs"].values() if is_link(v)]
            memo[node_id] = 1 + max((depth(s) for s in sources), default=-1)
        return memo[node_id]

    for node_id in prompt:
        depth(node_id)
    return memo


def api_to_ui(prompt: dict, object_info: dict, note: str | None = None) -> dict:
    """The canvas workflow of an API-format prompt whose node ids are integers (as strings)."""
    unknown = sorted({n["class_type"] for n in prompt.values()} - set(object_info))
    if unknown:
        raise ValueError(f"node types not served by this ComfyUI: {unknown}")
    level = depths(prompt)
    order = sorted(prompt, key=lambda i: (level[i], int(i)))
    rows: dict[int, int] = {}
    nodes, links, outgoing = [], [], {}
    for node_id in order:
        node = prompt[node_id]
        for name, value in node["inputs"].items():
            if is_link(value):
                source = prompt[value[0]]["class_type"]
                kind = object_info[source]["output"][value[1]]
                links.append([len(links) + 1, int(value[0]), value[1], int(node_id), None, kind, name])
                outgoing.setdefault((value[0], value[1]), []).append(len(links))
    link_of = {(str(link[3]), link[6]): link for link in links}
    note_width = 420 if note else 0
    for position, node_id in enumerate(order):
        node = prompt[node_id]
        definition = object_info[node["class_type"]]
        inputs, values = [], []
        for name, kind, options in input_specs(definition):
            link = link_of.get((node_id, name))
            if is_widget(kind):
                value = node["inputs"].get(name, default_value(kind, options))
                values.append(default_value(kind, options) if is_link(value) else value)
                if options.get("control_after_generate"):
                    values.append("fixed")
                if options.get("image_upload"):
                    values.append("image")
                if link is not None:
                    inputs.append({"name": name, "type": type_name(kind), "widget": {"name": name}, "link": link[0]})
            else:
                inputs.append({"name": name, "type": type_name(kind), "link": None if link is None else link[0]})
            if link is not None:
                link[4] = len(inputs) - 1
        outputs = [{"name": out_name, "type": kind, "slot_index": slot,
                    "links": outgoing.get((node_id, slot), [])}
                   for slot, (kind, out_name) in enumerate(zip(definition["output"], definition["output_name"]))]
        row = rows.get(level[node_id], 0)
        rows[level[node_id]] = row + 1
        nodes.append({"id": int(node_id), "type": node["class_type"],
                      "pos": [40 + note_width + 340 * level[node_id], 40 + 260 * row], "size": [300, 130],
                      "flags": {}, "order": position, "mode": 0, "inputs": inputs, "outputs": outputs,
                      "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": values,
                      **({"title": node["_meta"]["title"]} if node.get("_meta", {}).get("title") else {})})
    last_id = max(int(i) for i in prompt)
    if note:
        last_id += 1
        nodes.append({"id": last_id, "type": NOTE_TYPE, "pos": [20, 40], "size": [400, 560], "flags": {},
                      "order": len(nodes), "mode": 0, "inputs": [], "outputs": [],
                      "properties": {}, "widgets_values": [note], "title": "Read me"})
    return {"last_node_id": last_id, "last_link_id": len(links), "nodes": nodes,
            "links": [link[:6] for link in links], "groups": [], "config": {}, "extra": {}, "version": 0.4}


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API-format prompt a canvas workflow describes (notes dropped)."""
    origin = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in (NOTE_TYPE, "Note"):
            continue
        if node["type"] not in object_info:
            raise ValueError(f"node {node['id']} has type {node['type']!r}, which this ComfyUI does not serve")
        linked = {slot["name"]: origin[slot["link"]] for slot in node.get("inputs", []) if slot.get("link") is not None}
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name, kind, options in input_specs(object_info[node["type"]]):
            if is_widget(kind):
                value = values.pop(0) if values else default_value(kind, options)
                if options.get("control_after_generate") and values:
                    values.pop(0)
                if options.get("image_upload") and values:
                    values.pop(0)
                if name not in linked:
                    inputs[name] = value
            if name in linked:
                link = linked[name]
                inputs[name] = [str(link[1]), link[2]]
        entry = {"class_type": node["type"], "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        prompt[str(node["id"])] = entry
    return prompt


def same_graph(api: dict, from_ui: dict) -> list[str]:
    """Differences between an API prompt and the one read back from its UI twin (empty when equal)."""
    problems = []
    for node_id in sorted(set(api) | set(from_ui), key=int):
        a, b = api.get(node_id), from_ui.get(node_id)
        if a is None or b is None:
            problems.append(f"node {node_id} only in the {'UI' if a is None else 'API'} workflow")
            continue
        if a["class_type"] != b["class_type"]:
            problems.append(f"node {node_id}: {a['class_type']} vs {b['class_type']}")
        for name in sorted(set(a["inputs"]) | set(b["inputs"])):
            if a["inputs"].get(name) != b["inputs"].get(name):
                problems.append(f"node {node_id} input {name}: {a['inputs'].get(name)!r} vs {b['inputs'].get(name)!r}")
    return problems


def check_against_object_info(prompt: dict, object_info: dict) -> list[str]:
    """What in an API prompt the server's node definitions do not allow: unknown node types or
    inputs, missing required inputs, links to missing nodes or slots, link types that do not fit.
    Widget values are not checked (a workflow may name model files this server does not have)."""
    problems = []
    for node_id, node in prompt.items():
        definition = object_info.get(node["class_type"])
        if definition is None:
            problems.append(f"node {node_id}: unknown node type {node['class_type']}")
            continue
        specs = {name: kind for name, kind, _ in input_specs(definition)}
        required = definition["input"].get("required", {})
        problems += [f"node {node_id} ({node['class_type']}): missing required input {name}"
                     for name in required if name not in node["inputs"]]
        for name, value in node["inputs"].items():
            if name not in specs:
                problems.append(f"node {node_id} ({node['class_type']}): no input named {name}")
                continue
            if not is_link(value):
                continue
            source = prompt.get(value[0])
            if source is None:
                problems.append(f"node {node_id} input {name}: links to missing node {value[0]}")
                continue
            outputs = object_info.get(source["class_type"], {}).get("output", [])
            if value[1] >= len(outputs):
                problems.append(f"node {node_id} input {name}: node {value[0]} has no output {value[1]}")
                continue
            wanted, given = type_name(specs[name]), outputs[value[1]]
            if wanted != "*" and given not in wanted.split(","):
                problems.append(f"node {node_id} input {name}: expects {wanted}, node {value[0]} gives {given}")
    return problems


def canvas_title(name: str, folder: Path = WORKFLOWS) -> str:
    """The title of workflow NAME: the heading on the first line of folder/notes/NAME.md."""
    note = folder / "notes" / f"{name}.md"
    first = note.read_text().splitlines()[0] if note.is_file() else ""
    title = first[2:].strip() if first.startswith("# ") else ""
    if not title:
        raise ValueError(f"{note}: the note must start with '# TITLE', the workflow's title in the Templates browser")
    bad = sorted(set(title) & NOT_IN_A_TITLE)
    if bad or title.endswith("."):
        raise ValueError(f"{note}: the title {title!r} is also the template's file name; leave out "
                         f"{' '.join(bad) or 'the final dot'} (Windows or a URL path would not keep it)")
    return title


def canvas_path(name: str, folder: Path = WORKFLOWS) -> Path:
    """The UI twin of folder/api/NAME.json: folder/TITLE.json."""
    return folder / f"{canvas_title(name, folder)}.json"


def build(object_info: dict, folder: Path = WORKFLOWS) -> list[Path]:
    """Write folder/TITLE.json for every folder/api/NAME.json (with folder/notes/NAME.md as its note)."""
    written = []
    for api_path in sorted((folder / "api").glob("*.json")):
        note = (folder / "notes" / f"{api_path.stem}.md").read_text()
        ui = api_to_ui(json.loads(api_path.read_text()), object_info, note)
        target = canvas_path(api_path.stem, folder)
        target.write_text(json.dumps(ui, indent=1) + "\n")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write workflows/TITLE.json (UI) from workflows/api/NAME.json")
    parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hywu-workflows-") as work:
        with ComfyServer(Path(os.environ["COMFYUI_DIR"]), workdir=Path(work), log_path=Path(work) / "log.txt") as server:
            object_info = ComfyClient(server.url).object_info()
    for path in build(object_info):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
