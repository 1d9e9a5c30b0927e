"""The Templates browser's thumbnails: workflows/TITLE.jpg, made from real runs of each workflow.

ComfyUI's frontend (1.32.9 and 1.58.1) shows a custom node pack's template TITLE with the image
/api/workflow_templates/<pack folder>/TITLE.jpg, which ComfyUI 0.3.75 serves from workflows/TITLE.jpg
(TITLE: the UI twin's file name, workflow_ui.canvas_title).
Each thumbnail here is composed of the images the workflow's own run saved (and the example inputs it
loads, hywu_core/tools/example_inputs.py), labelled, at the demo family's 64 px shown 2x or more:

    # a ComfyUI with the shipped demo family (demo_models/) and the example inputs, e.g. ./hywu serve
    # after linking demo_models/* into ComfyUI's models/; then for each runnable workflow NAME:
    ./hywu run workflows/api/NAME.json --server URL --out RUNS/NAME
    python -m hywu_core.tools.workflow_thumbnails RUNS [--canvas hywu_qwen_image_edit=SCREENSHOT.png]

A workflow whose models do not ship (hywu_qwen_image_edit: Qwen-Image-Edit-2509; hunyuan3_edit,
hywu_hunyuan3_edit, hywu_hunyuan3_diagnostics: HunyuanImage-3.0-Instruct and the HY-WU release) cannot run
here: its
thumbnail is a screenshot of the workflow on the canvas (the shipped one: the bundled frontend's classic
renderer at 72% zoom, around Encode Condition -> Generate LoRA -> Apply LoRA -> Sample), captioned
"canvas screenshot, not an output".
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hywu_core.tools.example_inputs import EXAMPLE_INPUTS
from hywu_core.tools.workflow_ui import canvas_path

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SIZE = 512
BACKGROUND = (24, 28, 27)
TEXT = (235, 235, 235)
MUTED = (170, 180, 176)
ACCENT = (111, 207, 151)
# frontend 1.58.1 lays a "Node graph" badge over a card's top-left corner (about 190 x 50 px of 512)
TITLE_TOP = 56

# name -> (title, columns, rows): a cell is ("input", Load Image title) or (SaveImage title, batch index)
LAYOUTS = {
    "hywu_demo_edit": ("HY-WU demo edit", ["input", "base model", "HY-WU"],
                       [[("input", "Source Image"), ("Save Base", 0), ("Save HY-WU", 0)]]),
    "hywu_batch_edit": ("HY-WU batch edit: one LoRA per image", ["input", "HY-WU (dynamic)"],
                        [[("input", "Image 1"), ("Save", 0)], [("input", "Image 2"), ("Save", 1)],
                         [("input", "Image 3"), ("Save", 2)]]),
    "hywu_diagnostics": ("HY-WU routing diagnostics", ["input", "base", "HY-WU", "Average", "Shuffle"],
                         [[("input", "Image 1"), ("Save base", 0), ("Save hywu", 0), ("Save average", 0),
                           ("Save shuffle", 0)],
                          [("input", "Image 2"), ("Save base", 1), ("Save hywu", 1), ("Save average", 1),
                           ("Save shuffle", 1)]]),
    "hywu_freeze_lora": ("Freeze a generated LoRA", ["input", "saved LoRA, stock loader"],
                         [[("input", "Source Image"), ("Save", 0)]]),
}
# workflows whose models do not ship: their thumbnail is a canvas screenshot with this caption
CANVAS_CAPTIONS = {"hywu_qwen_image_edit": ("HY-WU on Qwen-Image-Edit-2509",
                                            "needs the Qwen-Image-Edit models (not shipped)"),
                   "hunyuan3_edit": ("HunyuanImage-3.0-Instruct edit",
                                     "needs the HunyuanImage-3.0-Instruct folder (not shipped)"),
                   "hywu_hunyuan3_edit": ("HY-WU on HunyuanImage-3.0-Instruct",
                                          "needs HunyuanImage-3.0-Instruct and HY-WU (not shipped)"),
                   "hywu_hunyuan3_diagnostics": ("HY-WU diagnostics on HunyuanImage-3.0",
                                                 "needs HunyuanImage-3.0-Instruct and HY-WU (not shipped)")}


def thumbnail_path(name: str) -> Path:
    """workflows/TITLE.jpg, beside the UI twin of workflows/api/NAME.json (the frontend asks for its name + .jpg)."""
    return canvas_path(name, WORKFLOWS).with_suffix(".jpg")


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _nodes_by_title(prompt: dict) -> dict[str, dict]:
    return {node.get("_meta", {}).get("title", node_id): node for node_id, node in prompt.items()}


def _instructions(prompt: dict) -> list[str]:
    for node in prompt.values():
        if node["class_type"] == "PrimitiveStringMultiline":
            return [line for line in str(node["inputs"]["value"]).splitlines() if line.strip()]
    return []


def _saved(run_dir: Path, prefix: str, index: int) -> Path:
    """The index-th image a SaveImage with this filename_prefix wrote into `./hywu run --out run_dir`."""
    folder, stem = (run_dir / prefix).parent, Path(prefix).name
    found = sorted(folder.glob(f"{stem}_*.png"))
    if len(found) <= index:
        raise SystemExit(f"{run_dir}: no image {index} from {prefix!r} (found {[p.name for p in found]}); "
                         "run the workflow with ./hywu run --out first")
    return found[index]


def compose_run(name: str, run_dir: Path, out: Path) -> Path:
    """workflows/TITLE.jpg from the images of one `./hywu run workflows/api/NAME.json --out run_dir`."""
    from PIL import Image, ImageDraw

    title, columns, rows = LAYOUTS[name]
    prompt = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    nodes = _nodes_by_title(prompt)
    instructions = _instructions(prompt)
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((16, TITLE_TOP), title, fill=TEXT, font=_font(24))
    draw.text((16, TITLE_TOP + 32), "output of this workflow on the demo family", fill=MUTED, font=_font(15))
    label_height = 22 if len(rows) > 1 else 0
    top = TITLE_TOP + 62
    cell = min((SIZE - 32 - 8 * (len(columns) - 1)) // len(columns),
               (SIZE - top - 24 - 40 - len(rows) * (label_height + 8)) // len(rows))
    left = (SIZE - len(columns) * cell - 8 * (len(columns) - 1)) // 2
    for c, label in enumerate(columns):
        draw.text((left + c * (cell + 8), top), label, fill=ACCENT, font=_font(15))
    top += 24
    for r, row in enumerate(rows):
        for c, (source, key) in enumerate(row):
            if source == "input":
                path = EXAMPLE_INPUTS[nodes[key]["inputs"]["image"]]
            else:
                path = _saved(run_dir, nodes[source]["inputs"]["filename_prefix"], key)
            tile = Image.open(path).convert("RGB").resize((cell, cell), Image.NEAREST)
            image.paste(tile, (left + c * (cell + 8), top))
        top += cell + 4
        if label_height and r < len(instructions):
            draw.text((left, top), f'"{instructions[r]}"', fill=TEXT, font=_font(15))
        top += label_height + 4
    if len(rows) == 1 and instructions:
        draw.text((left, top + 4), f'instruction: "{instructions[0]}"', fill=TEXT, font=_font(17))
    image.save(out, quality=90)
    return out


def compose_canvas(name: str, screenshot: Path, out: Path) -> Path:
    """workflows/TITLE.jpg from a screenshot of the workflow on the canvas, captioned as such."""
    from PIL import Image, ImageDraw

    title, caption = CANVAS_CAPTIONS[name]
    shot = Image.open(screenshot).convert("RGB")
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((16, TITLE_TOP), title, fill=TEXT, font=_font(24))
    top, bottom = TITLE_TOP + 40, SIZE - 64  # the screenshot, fitted whole between the title and the caption
    scale = min(SIZE / shot.width, (bottom - top) / shot.height)
    shot = shot.resize((round(shot.width * scale), round(shot.height * scale)), Image.LANCZOS)
    image.paste(shot, ((SIZE - shot.width) // 2, top + (bottom - top - shot.height) // 2))
    draw.text((12, SIZE - 58), "canvas screenshot, not an output:", fill=ACCENT, font=_font(17))
    draw.text((12, SIZE - 34), caption, fill=TEXT, font=_font(16))
    image.save(out, quality=90)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write workflows/TITLE.jpg from ./hywu run outputs")
    parser.add_argument("runs", type=Path, help="folder with one ./hywu run --out folder per workflow NAME")
    parser.add_argument("--canvas", action="append", default=[], metavar="NAME=SCREENSHOT",
                        help="a workflow that cannot run here: its canvas screenshot")
    args = parser.parse_args(argv)
    for name in LAYOUTS:
        print(compose_run(name, args.runs / name, thumbnail_path(name)))
    for item in args.canvas:
        name, screenshot = item.split("=", 1)
        print(compose_canvas(name, Path(screenshot), thumbnail_path(name)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
