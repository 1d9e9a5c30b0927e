"""`python -m hywu_core COMMAND` (what `./hywu` runs inside its environment, and the `hywu` console script)."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def comfyui_dir_from(args) -> Path:
    value = getattr(args, "comfyui", None) or os.environ.get("COMFYUI_DIR") or os.environ.get("COMFYUI_PATH")
    if not value:
        raise SystemExit("hywu: no ComfyUI folder: run through ./hywu (it sets COMFYUI_DIR), "
                         "or pass --comfyui DIR / set COMFYUI_PATH")
    path = Path(value).expanduser().resolve()
    if not (path / "main.py").is_file():
        raise SystemExit(f"hywu: {path} is not a ComfyUI folder (no main.py)")
    return path


class RepositoryRootAsDirectory:
    """pytest plugin: collect the repository root as a plain directory, not a package.

    The root __init__.py is ComfyUI's entry point for the pack and imports comfy_api, which
    exists only inside a ComfyUI process; pytest >= 8 imports a package's __init__.py to set
    it up (and a root conftest.py would import it too), so the hook must come from here.
    """

    @staticmethod
    def pytest_collect_directory(path, parent):
        import pytest

        if Path(path).resolve() == REPO:
            return pytest.Dir.from_parent(parent, path=path)
        return None


def cmd_test(args, rest: list[str]) -> int:
    import pytest

    has_target = any(not a.startswith("-") and Path(a.split("::")[0]).exists() for a in rest)
    return pytest.main([*rest, *([] if has_target else [str(REPO / "tests")])], plugins=[RepositoryRootAsDirectory()])


def cmd_serve(args, rest: list[str]) -> int:
    from hywu_core.tools.comfy_server import ServerError, server_command

    comfy_dir = comfyui_dir_from(args)
    try:
        cmd = server_command(comfy_dir, args.port, args.listen, python=sys.executable)
    except ServerError as error:
        print(f"hywu serve: {error}", file=sys.stderr)
        return 1
    print(f"[hywu] ComfyUI {comfy_dir} on http://{args.listen}:{args.port} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    os.chdir(comfy_dir)
    os.execv(cmd[0], cmd)


class ProgressBar:
    """A tqdm bar fed by ComfyUI's /ws progress messages, one node at a time."""

    def __init__(self, prompt: dict):
        from tqdm import tqdm

        self.prompt = prompt
        self.bar = tqdm(total=None, file=sys.stderr, dynamic_ncols=True, leave=False)

    def __call__(self, event) -> None:
        if event.max == 0:
            node = self.prompt.get(event.node, {})
            title = node.get("_meta", {}).get("title") or node.get("class_type", "?")
            self.bar.reset(total=None)
            self.bar.set_description(f"{title} #{event.node}")
            return
        self.bar.total = event.max
        self.bar.n = event.value
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def cmd_run(args, rest: list[str]) -> int:
    from hywu_core.tools.comfy_client import (ComfyClient, ConnectionLost, PromptFailed, PromptRejected,
                                              ServerUnreachable)
    from hywu_core.tools.comfy_server import ComfyServer, ServerError
    from hywu_core.tools.workflow_run import WorkflowError, apply_inputs, load_api_workflow, run_workflow

    try:
        prompt = load_api_workflow(args.workflow)
    except WorkflowError as error:
        print(f"hywu run: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="hywu-run-") as workdir:
        server = None
        try:
            if args.server:
                url = args.server
            else:
                server = ComfyServer(comfyui_dir_from(args), workdir=Path(workdir),
                                     log_path=Path(workdir) / "comfyui.log")
                print("[hywu] starting ComfyUI ...", file=sys.stderr, flush=True)
                url = server.start().url
            client = ComfyClient(url)
            prompt = apply_inputs(prompt, args.input, upload=client.upload_image)
            bar = ProgressBar(prompt)
            try:
                saved = run_workflow(client, prompt, args.out, on_progress=bar, timeout=args.timeout)
            finally:
                bar.close()
        except WorkflowError as error:
            print(f"hywu run: {error}", file=sys.stderr)
            return 2
        except PromptRejected as error:
            print(f"hywu run: ComfyUI rejected the prompt:\n{error}", file=sys.stderr)
            return 1
        except PromptFailed as error:
            print(f"hywu run: the prompt failed in ComfyUI:\n{error}", file=sys.stderr)
            return 1
        except ServerUnreachable as error:
            hint = ("start it with ./hywu serve or drop --server" if args.server
                    else "the ComfyUI started for this run stopped")
            print(f"hywu run: {error}; {hint}", file=sys.stderr)
            return 1
        except ConnectionLost as error:
            print(f"hywu run: {error}", file=sys.stderr)
            return 1
        except (ServerError, TimeoutError, OSError) as error:
            print(f"hywu run: {error}", file=sys.stderr)
            return 1
        finally:
            if server is not None:
                server.stop()
    for path in saved:
        print(path)
    print(f"[hywu] saved {len(saved)} image(s) into {Path(args.out).resolve()}", file=sys.stderr)
    return 0


def cmd_demo(args, rest: list[str]) -> int:
    from hywu_core.demo import run

    return run.main(rest)


def cmd_demo_family(args, rest: list[str]) -> int:
    from hywu_core.demo import retrain

    return retrain.main(rest)


def cmd_experiment(args, rest: list[str]) -> int:
    from hywu_core import experiments

    return experiments.main(rest)


def cmd_hunyuan3_edit(args, rest: list[str]) -> int:
    from hywu_core.tools import hunyuan3_edit

    return hunyuan3_edit.main(rest)


def cmd_bench(args, rest: list[str]) -> int:
    from hywu_core.bench import suite as bench

    return bench.main(rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hywu", description="ComfyUI-HY-WU command line")
    commands = parser.add_subparsers(dest="command", required=True)

    test = commands.add_parser("test", help="run the test suite (pytest arguments pass through)", add_help=False)
    test.set_defaults(handler=cmd_test)

    serve = commands.add_parser("serve", help="start ComfyUI with the pack")
    serve.add_argument("--port", type=int, default=8188)
    serve.add_argument("--listen", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_DIR)")
    serve.set_defaults(handler=cmd_serve)

    run = commands.add_parser("run", help="run an API-format workflow headless and save its images")
    run.add_argument("workflow", type=Path, help="API-format workflow JSON")
    run.add_argument("--input", action="append", default=[], metavar="NODE.FIELD=VALUE",
                     help="override a node input (NODE is an id or a unique title); a local file path is uploaded")
    run.add_argument("--out", type=Path, default=Path("hywu_output"), help="folder for the output images")
    run.add_argument("--server", help="URL of a running ComfyUI (default: start one)")
    run.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the prompt")
    run.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_DIR)")
    run.set_defaults(handler=cmd_run)

    demo = commands.add_parser("demo", help="the embedded HY-WU demo: edits bundled images, writes a side-by-side PNG",
                               add_help=False)
    demo.set_defaults(handler=cmd_demo)

    family = commands.add_parser("demo-family", help="retrain the whole demo family from its fixed seed",
                                 add_help=False)
    family.set_defaults(handler=cmd_demo_family)

    experiment = commands.add_parser("experiment", help="the paper reproduction on the demo family: "
                                     "conflict | gradients | routing | geometry", add_help=False)
    experiment.set_defaults(handler=cmd_experiment)

    hunyuan3 = commands.add_parser("hunyuan3-edit", help="one HunyuanImage-3.0-Instruct edit, headless "
                                   "(writes OUT/base.png)", add_help=False)
    hunyuan3.set_defaults(handler=cmd_hunyuan3_edit)

    bench = commands.add_parser("bench", help="benchmarks: per-sample LoRA cost, generator attention, kernels",
                                add_help=False)
    bench.set_defaults(handler=cmd_bench)

    from hywu_core.tools import generate_lora

    generate = commands.add_parser("generate-lora", help="write the LoRA a generator makes for a condition file")
    generate_lora.add_arguments(generate)
    generate.set_defaults(handler=lambda args, rest: generate_lora.run(args))

    from hywu_core.train import __main__ as train_main

    train = commands.add_parser("train", help="train a generator through a frozen backbone (configs/train/*.toml)")
    train_main.add_arguments(train)
    train.set_defaults(handler=lambda args, rest: train_main.run(args))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in ("test", "bench", "demo", "demo-family", "experiment", "hunyuan3-edit"):
        args, rest = parser.parse_args(argv[:1]), argv[1:]
    else:
        args, rest = parser.parse_args(argv), []
    return args.handler(args, rest)
