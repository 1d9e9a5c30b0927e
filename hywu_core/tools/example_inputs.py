"""The input images the example workflows name, put where ComfyUI's Load Image finds them.

The canvas workflows in workflows/ (ComfyUI's Templates for this pack) load `hywu_demo_source.png`,
`hywu_demo_source_2.png` and `hywu_demo_source_3.png`. They are the held-out demo crops that ship in
hywu_core/demo/inputs/ (no model saw them in training), under the names the workflows use. Called
when the pack loads, so that a template opened on a fresh ComfyUI finds its images and can run.

Standard library only. ComfyUI 0.3.75 sets its input folder (--input-directory) in main.py before it
imports custom nodes, so folder_paths.get_input_directory() is final when this runs; Load Image lists
that folder's files each time the frontend asks for node definitions.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

DEMO_INPUTS = Path(__file__).resolve().parents[1] / "demo" / "inputs"
# the name a workflow's Load Image uses -> the shipped image
EXAMPLE_INPUTS = {
    "hywu_demo_source.png": DEMO_INPUTS / "heldout_cat.png",
    "hywu_demo_source_2.png": DEMO_INPUTS / "heldout_motorcycle.png",
    "hywu_demo_source_3.png": DEMO_INPUTS / "heldout_shapes.png",
}


def install_example_inputs(input_dir: str | Path | None = None) -> list[Path]:
    """Copy each missing example input into `input_dir` (default: ComfyUI's input folder); returns the
    files written. A file of that name already there is left alone (it may be the user's own)."""
    if input_dir is None:
        import folder_paths  # ComfyUI's, importable only inside a ComfyUI process

        input_dir = folder_paths.get_input_directory()
    folder = Path(input_dir)
    written = []
    for name, source in EXAMPLE_INPUTS.items():
        target = folder / name
        if target.exists() or not source.is_file():
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        except OSError as error:  # a read-only input folder must not stop the pack from loading
            logging.warning("ComfyUI-HY-WU: could not copy the example input %s into %s: %s", name, folder, error)
            continue
        written.append(target)
    return written
