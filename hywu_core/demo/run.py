"""`./hywu demo`: the embedded HY-WU family editing bundled images in a headless ComfyUI (docs/design.md, "The tiny editor").

Starts ComfyUI with the pack, the demo family's model folders and the bundled inputs, runs
workflows/api/hywu_demo_edit.json for every (image, instruction) pair — one graph that samples
the same edit with the base backbone and with the generated LoRA — saves the outputs, and
writes one side-by-side PNG: input | instruction | base model | HY-WU, a row per pair.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from hywu_core.tools.comfy_client import ComfyClient
from hywu_core.tools.comfy_server import ComfyServer
from hywu_core.tools.workflow_run import apply_inputs, load_api_workflow

REPO = Path(__file__).resolve().parents[2]
DEMO_MODELS = REPO / "demo_models"
DEMO_INPUTS = REPO / "hywu_core" / "demo" / "inputs"
WORKFLOW = REPO / "workflows" / "api" / "hywu_demo_edit.json"
# the demo's edits: phrasings of the suite's forward directions (hywu_core.demo.edits) that the shipped
# family performs on held-out images (tests/demo/test_shipped_family.py checks their direction)
INSTRUCTIONS = ("make it brighter", "make it darker", "add noise to the image")
FAMILY_FILES = ("checkpoints/hywu_demo.safetensors", "hywu_encoders/hywu_demo/config.json",
                "hywu/hywu_demo.safetensors")
SCALE = 2  # side-by-side cells are shown at twice the 64 px working size


def check_models(models: Path) -> None:
    missing = [name for name in FAMILY_FILES if not (models / name).is_file()]
    if missing:
        raise SystemExit(f"hywu demo: the demo family is incomplete in {models}: missing {', '.join(missing)}. "
                         "Restore demo_models/ from the repository (git checkout demo_models) or retrain it.")


def linked_models(models: Path, folder: Path) -> Path:
    """A models folder for the server whose family entries link to `models` (the repository is not written to)."""
    for name in ("checkpoints", "hywu", "hywu_encoders"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for entry in (models / name).iterdir():
            (folder / name / entry.name).symlink_to(entry.resolve())
    return folder


def side_by_side(rows: list[tuple[Path, str, bytes, bytes]], path: Path) -> None:
    """input | instruction | base | HY-WU, one row per edit, with a header line."""
    import io

    from PIL import Image, ImageDraw

    cell, text_width, header = 64 * SCALE, 220, 24
    canvas = Image.new("RGB", (3 * cell + text_width, header + cell * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for x, label in ((0, "input"), (cell, "instruction"), (cell + text_width, "base model"),
                     (2 * cell + text_width, "HY-WU")):
        draw.text((x + 6, 6), label, fill="black")
    for i, (source, instruction, base, edited) in enumerate(rows):
        y = header + i * cell
        images = [Image.open(source), Image.open(io.BytesIO(base)), Image.open(io.BytesIO(edited))]
        for x, image in zip((0, cell + text_width, 2 * cell + text_width), images):
            canvas.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST), (x, y))
        words, line, lines = instruction.split(), "", []
        for word in words:
            if len(line) + len(word) > 30:
                lines.append(line)
                line = ""
            line = f"{line} {word}".strip()
        lines.append(line)
        for k, text in enumerate(lines):
            draw.text((cell + 8, y + 8 + 14 * k), text, fill="black")
    canvas.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hywu demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("hywu_output") / "demo", help="output folder")
    parser.add_argument("--models", type=Path, default=DEMO_MODELS,
                        help="a folder in ComfyUI's models layout holding the demo family (default: demo_models/)")
    parser.add_argument("--inputs", type=Path, default=DEMO_INPUTS, help="folder of input PNGs")
    parser.add_argument("--instruction", action="append", help="instruction(s) to run (default: four edits)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)

    check_models(args.models)
    sources = sorted(args.inputs.glob("*.png"))
    if not sources:
        raise SystemExit(f"hywu demo: no input images (*.png) in {args.inputs}")
    instructions = args.instruction or list(INSTRUCTIONS)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hywu-demo-") as work:
        work = Path(work)
        server = ComfyServer(Path(os.environ["COMFYUI_DIR"]), workdir=work, log_path=work / "comfyui.log",
                             models_dir=linked_models(args.models, work / "models"))
        print(f"[hywu demo] starting ComfyUI ({server.url}) ...", file=sys.stderr)
        with server:
            client = ComfyClient(server.url)
            template = load_api_workflow(WORKFLOW)
            rows = []
            for source in sources:
                name = client.upload_image(source)
                for instruction in instructions:
                    prompt = apply_inputs(template, [f"Source Image.image={name}", f"Instruction.value={instruction}",
                                                     f"Sample HY-WU.steps={args.steps}",
                                                     f"Sample Base.steps={args.steps}"])
                    entry = client.run(prompt)
                    images = {ref.node: client.fetch_image(ref) for ref in client.output_images(entry)}
                    stem = f"{source.stem}__{instruction.replace(' ', '_')}"
                    (out / f"{stem}__base.png").write_bytes(images["17"])
                    (out / f"{stem}__hywu.png").write_bytes(images["14"])
                    rows.append((source, instruction, images["17"], images["14"]))
                    print(f"[hywu demo] {source.name}: {instruction}", file=sys.stderr)
    grid = out / "side_by_side.png"
    side_by_side(rows, grid)
    print(f"[hywu demo] {len(rows)} edits in {time.monotonic() - started:.1f} s; outputs in {out}", file=sys.stderr)
    print(grid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
