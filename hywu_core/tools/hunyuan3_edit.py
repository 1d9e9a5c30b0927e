"""`./hywu hunyuan3-edit`: one HunyuanImage-3.0-Instruct edit, headless, through the nodes' own code path.

It runs workflows/api/hunyuan3_edit.json (the canvas workflow's twin) on a ComfyUI it starts: the model
folder is linked into that server's models/hunyuan3, the input images are uploaded, the request fills
the Conditioning node, and the saved image is written as OUT/base.png. Steps, guidance and flow shift
are the folder's generation_config.json values (the Loader reads them), as in the official pipeline.
Without --cot-text the model writes its CoT first (the CoT node, greedy, think mode); with it, that text is
used as given (an empty string: no CoT).

With --generator (an official HY-WU generator folder, linked into the server's models/hywu) it runs
workflows/api/hywu_hunyuan3_edit.json instead, which samples the same request and noise twice: OUT/base.png
without the LoRA, OUT/edit.png with the LoRA the generator wrote for this request; OUT/condition.safetensors
holds the generator's input (key "condition", (batch, tokens, hidden)) and OUT/lora.safetensors its output in
the official key names (as `./hywu generate-lora --format official` writes it).

Interface (a contract; other tools call it):
    ./hywu hunyuan3-edit --model DIR --prompt TEXT [--image A.png ...] [--cot-text TEXT]
                         [--system-prompt NAME] --seed N --image-size HxW [--generator DIR] --out DIR
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from hywu_core.tools.comfy_client import ComfyClient, ImageRef, PromptFailed, PromptRejected
from hywu_core.tools.comfy_server import ComfyServer, ServerError

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows" / "api"
WORKFLOW, HYWU_WORKFLOW = WORKFLOWS / "hunyuan3_edit.json", WORKFLOWS / "hywu_hunyuan3_edit.json"
LOADER, CONDITIONING, SAVE, PROMPT, COT = "3", "4", "11", "12", "13"
GENERATOR, SAVE_HYWU, SAVE_CONDITION, SAVE_LORA = "14", "21", "22", "23"
IMAGE_NODES = ("1", "2")
IMAGE_INPUTS = ("image_1", "image_2", "image_3")
MAX_IMAGES = 3
DEFAULT_SYSTEM_PROMPT = "en_unified"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hywu hunyuan3-edit",
                                     description="edit (or, without --image, generate) one image with "
                                                 "HunyuanImage-3.0-Instruct; writes OUT/base.png")
    parser.add_argument("--model", required=True, type=Path, help="the HunyuanImage-3.0-Instruct folder")
    parser.add_argument("--prompt", required=True, help="the instruction or description")
    parser.add_argument("--image", action="append", default=[], type=Path, help="an input image (up to 3)")
    parser.add_argument("--cot-text", default=None,
                        help="the CoT text (<think>...</think><recaption>...</recaption>) to condition on")
    parser.add_argument("--system-prompt", default=DEFAULT_SYSTEM_PROMPT, help="a named system prompt")
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--image-size", required=True, help="HxW, e.g. 1024x1024 (or 'auto')")
    parser.add_argument("--generator", type=Path, default=None,
                        help="an official HY-WU generator folder (config.json + model.safetensors): also writes "
                             "OUT/edit.png, OUT/condition.safetensors and OUT/lora.safetensors")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    return parser


def edit_prompt(args, uploaded: list[str], folder_name: str, generator_name: str | None = None) -> dict:
    """The API workflow for this request: images 1..n loaded, the rest of the Load Image nodes removed."""
    prompt = json.loads((HYWU_WORKFLOW if generator_name else WORKFLOW).read_text())
    extra = [str(i) for i in range(100, 100 + MAX_IMAGES)]
    nodes = list(IMAGE_NODES) + extra[len(IMAGE_NODES):]
    conditioning, cot = prompt[CONDITIONING]["inputs"], prompt[COT]["inputs"]
    for name in IMAGE_INPUTS:
        conditioning.pop(name, None)
        cot.pop(name, None)
    for node in IMAGE_NODES:
        prompt.pop(node)
    for i, name in enumerate(uploaded):
        prompt[nodes[i]] = {"class_type": "LoadImage", "inputs": {"image": name},
                            "_meta": {"title": f"Image {i + 1}"}}
        conditioning[IMAGE_INPUTS[i]] = cot[IMAGE_INPUTS[i]] = [nodes[i], 0]
    prompt[PROMPT]["inputs"]["value"] = args.prompt
    conditioning.update(system_prompt=args.system_prompt, image_size=args.image_size, seed=args.seed)
    cot.update(system_prompt=args.system_prompt, seed=args.seed)
    if args.cot_text is not None:
        conditioning["cot_text"] = args.cot_text
    prompt[LOADER]["inputs"]["model_folder"] = folder_name
    prompt[SAVE]["inputs"]["filename_prefix"] = "base"
    if generator_name:
        prompt[GENERATOR]["inputs"]["generator"] = generator_name
    return prompt


def check(args) -> str | None:
    if len(args.image) > MAX_IMAGES:
        return f"{len(args.image)} images given; HunyuanImage-3.0-Instruct takes at most {MAX_IMAGES}"
    for image in args.image:
        if not image.is_file():
            return f"--image {image}: no such file"
    if not (args.model / "config.json").is_file():
        return f"--model {args.model}: no config.json there; give the HunyuanImage-3.0-Instruct folder"
    if args.generator is not None and not (args.generator / "config.json").is_file():
        return f"--generator {args.generator}: no config.json there; give the official HY-WU generator folder"
    return None


def link_folder(root: Path, folder: Path) -> str:
    """`folder` linked into the models subfolder `root` under its own name; returns that name."""
    root.mkdir(parents=True, exist_ok=True)
    (root / folder.resolve().name).symlink_to(folder.resolve(), target_is_directory=True)
    return folder.resolve().name


def write_outputs(client: ComfyClient, entry: dict, out: Path, hywu: bool) -> list[Path]:
    """base.png, and with HY-WU edit.png, condition.safetensors and lora.safetensors, from the run's outputs."""
    images = {ref.node: ref for ref in client.output_images(entry)}
    wanted = {"base.png": images[SAVE]}
    if hywu:
        outputs = entry.get("outputs") or {}
        files = {node: ImageRef(**outputs[node]["hywu_files"][0], node=node) for node in (SAVE_CONDITION, SAVE_LORA)}
        wanted |= {"edit.png": images[SAVE_HYWU], "condition.safetensors": files[SAVE_CONDITION],
                   "lora.safetensors": files[SAVE_LORA]}
    out.mkdir(parents=True, exist_ok=True)
    for name, ref in wanted.items():
        (out / name).write_bytes(client.fetch_image(ref))
    return [out / name for name in wanted]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = check(args)
    if problem:
        print(f"hywu hunyuan3-edit: {problem}", file=sys.stderr)
        return 2
    if not os.environ.get("COMFYUI_DIR"):
        print("hywu hunyuan3-edit: no ComfyUI folder: run it as ./hywu hunyuan3-edit (which sets COMFYUI_DIR)",
              file=sys.stderr)
        return 2
    comfyui_dir = Path(os.environ["COMFYUI_DIR"])
    with tempfile.TemporaryDirectory(prefix="hywu-hunyuan3-") as work:
        work = Path(work)
        models = work / "models"
        folder_name = link_folder(models / "hunyuan3", args.model)
        generator_name = link_folder(models / "hywu", args.generator) if args.generator is not None else None
        server = ComfyServer(comfyui_dir, workdir=work, log_path=work / "comfyui.log", models_dir=models)
        print("[hywu] starting ComfyUI ...", file=sys.stderr, flush=True)
        try:
            with server:
                client = ComfyClient(server.url)
                uploaded = [client.upload_image(image) for image in args.image]
                entry = client.run(edit_prompt(args, uploaded, folder_name, generator_name), timeout=24 * 3600)
                written = write_outputs(client, entry, args.out, hywu=generator_name is not None)
        except PromptRejected as error:
            print(f"hywu hunyuan3-edit: ComfyUI rejected the request:\n{error}", file=sys.stderr)
            return 1
        except PromptFailed as error:
            print(f"hywu hunyuan3-edit: the request failed in ComfyUI:\n{error}", file=sys.stderr)
            return 1
        except (ServerError, TimeoutError, OSError) as error:
            print(f"hywu hunyuan3-edit: {error}", file=sys.stderr)
            return 1
    for path in written:
        print(path)
    return 0
