"""Headless runs of API-format workflows (`./hywu run`): load, override inputs, submit, save images."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from hywu_core.tools.comfy_client import ComfyClient, Progress


class WorkflowError(ValueError):
    """The workflow file or an --input override is unusable; the message says how to fix it."""


def load_api_workflow(path: Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise WorkflowError(f"workflow file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise WorkflowError(f"{path} is not valid JSON: {error}") from None
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise WorkflowError(f"{path} is a UI-format workflow; `./hywu run` takes the API format "
                            "(ComfyUI: Workflow > Export (API), or the twin under workflows/api/)")
    if not isinstance(data, dict) or not data or not all(
            isinstance(node, dict) and "class_type" in node and "inputs" in node for node in data.values()):
        raise WorkflowError(f"{path} is not an API-format workflow: expected an object mapping node ids "
                            "to {\"class_type\": ..., \"inputs\": {...}}")
    return data


def find_node(prompt: dict, selector: str) -> str:
    """A node by id, or by its title (_meta.title) when that title is unique."""
    if selector in prompt:
        return selector
    titled = [node_id for node_id, node in prompt.items() if node.get("_meta", {}).get("title") == selector]
    if len(titled) == 1:
        return titled[0]
    known = ", ".join(f"{i} ({n.get('_meta', {}).get('title', n['class_type'])})" for i, n in prompt.items())
    if titled:
        raise WorkflowError(f"title {selector!r} names {len(titled)} nodes ({', '.join(titled)}); use a node id")
    raise WorkflowError(f"no node {selector!r} in the workflow; nodes: {known}")


def parse_value(text: str):
    """JSON when it parses (numbers, booleans, lists), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_inputs(prompt: dict, overrides: list[str], upload: Callable[[Path], str] | None = None) -> dict:
    """Apply NODE.FIELD=VALUE overrides to a copy of prompt.

    A VALUE that names an existing local file is uploaded into the server's input folder
    (when upload is given) and replaced by the uploaded name, so `--input 10.image=cat.png` works.
    """
    prompt = json.loads(json.dumps(prompt))
    for override in overrides:
        target, sep, text = override.partition("=")
        selector, dot, field = target.rpartition(".")
        if not sep or not dot or not selector or not field:
            raise WorkflowError(f"--input {override!r}: expected NODE.FIELD=VALUE, e.g. 3.seed=42 or \"Load Image.image=cat.png\"")
        node_id = find_node(prompt, selector)
        inputs = prompt[node_id]["inputs"]
        if field not in inputs:
            raise WorkflowError(f"--input {override!r}: node {node_id} ({prompt[node_id]['class_type']}) has no input "
                                f"{field!r}; its inputs: {', '.join(sorted(inputs))}")
        if isinstance(inputs[field], list):
            raise WorkflowError(f"--input {override!r}: {field!r} of node {node_id} is a link from node "
                                f"{inputs[field][0]}, not a value")
        value = parse_value(text)
        if upload is not None and isinstance(value, str) and Path(value).expanduser().is_file():
            value = upload(Path(value).expanduser())
        inputs[field] = value
    return prompt


def run_workflow(client: ComfyClient, prompt: dict, out_dir: Path,
                 on_progress: Callable[[Progress], None] | None = None, timeout: float = 3600.0) -> list[Path]:
    """Run the prompt and save its output images into out_dir; returns the saved paths."""
    entry = client.run(prompt, on_progress=on_progress, timeout=timeout)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    for ref in client.output_images(entry):
        destination = out_dir / Path(ref.subfolder) / ref.filename
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(client.fetch_image(ref))
        saved.append(destination)
    return saved
