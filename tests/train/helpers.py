"""Tiny training configs for the hywu_core.train tests: a 2-block demo MMDiT (width 64), a tiny SigLIP2,
a 1-block NNT and a procedural brighten/darken dataset at 16x16, all built inside the test's folder."""
import csv
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "run": {"output": "run", "seed": 0, "device": "cpu", "checkpoint_every": 20},
    "backbone": {"kind": "demo", "demo": {"patch_size": 4, "depth": 1, "num_blocks": 2, "mlp_ratio": 2.0,
                                          "text_width": 32, "text_layers": 1, "text_heads": 2, "text_ffn": 64,
                                          "text_length": 32}},
    "encoder": {"tiny": "siglip2"},
    "generator": {"width": 32, "depth": 1, "heads": 2, "rank": 8, "alpha": 8.0},
    "data": {"folder": "data", "procedural": {"kind": "brighten_darken", "count": 16, "size": 16}},
    "train": {"steps": 60, "batch_size": 4, "lr": 1e-2, "warmup_steps": 2},
    "validation": {"count": 2, "steps": 4},
}


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def write_config(folder: Path, name: str = "train.toml", **sections) -> Path:
    """TINY with sections updated key by key (e.g. train={"steps": 8}; a key set to None is left out),
    written as TOML into folder."""
    tables = {k: dict(v) for k, v in TINY.items()}
    for section, values in sections.items():
        tables[section].update(values)
        tables[section] = {k: v for k, v in tables[section].items() if v is not None}
    lines = []
    for section, values in tables.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_value(v)}" for k, v in values.items()]
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def subprocess_env() -> dict:
    """The test environment for training subprocesses: one thread each (every run does the same
    float work in the same order), the repository importable, COMFYUI_DIR passed on."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def run_module(*args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *map(str, args)], env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def read_losses(run: Path) -> list[float]:
    with open(run / "loss.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def objective_on_demo_backbone(prediction: str, **weights):
    """(the DenoisingObjective losses with `weights` on two random 16x16 edits of a fresh demo backbone
    of `prediction`, the same edits' raw-output errors computed here by hand through ComfyUI's
    apply_model, the plain objective's losses, the backbone's patch size)."""
    import torch

    from hywu_core.tiny_editor.backbone import DemoBackboneConfig, assemble_demo_backbone, build_demo_backbone
    from hywu_core.train.backbone import Backbone
    from hywu_core.train.objective import DenoisingObjective

    config = DemoBackboneConfig(prediction=prediction)
    bb = Backbone(*assemble_demo_backbone(build_demo_backbone(seed=0, config=config)[0], config),
                  "instruct_pix2pix").load()
    g = torch.Generator().manual_seed(1)
    sources, targets = torch.rand(2, 16, 16, 3, generator=g), torch.rand(2, 16, 16, 3, generator=g)
    plain = DenoisingObjective(bb)
    x0, conds, noise, sigma = plain.inputs(sources, targets, ["darken", "blur"], [], [0, 1], 0)
    weighted = DenoisingObjective(bb, **weights).losses(None, conds, x0, noise, sigma)
    ms, errors = bb.model_sampling, []
    with torch.no_grad():
        for i in range(2):
            s = sigma[i:i + 1]
            x_t = ms.noise_scaling(s, noise[i:i + 1], x0[i:i + 1])
            denoised = bb.model.model.apply_model(x_t, s, c_concat=conds[i]["c_concat"].cond,
                                                  c_crossattn=conds[i]["c_crossattn"].cond)
            slope = -s if prediction == "velocity" else torch.ones(())
            errors.append((denoised - x0[i:i + 1]) / slope)
    return weighted, errors, plain.losses(None, conds, x0, noise, sigma), config.patch_size
