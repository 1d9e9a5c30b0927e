"""`python -m hywu_core generate-lora`: official and comfy output formats, both generator kinds, errors."""
import argparse
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hywu_core.condition import Condition
from hywu_core.generator_files import load_generator, save_generator
from hywu_core.tools import generate_lora as cli

from .official_reference import TINY_CONFIG, reference_forward, write_official_folder

REPO = Path(__file__).resolve().parents[2]


def generate_lora(*args):
    """The command exactly as outside tools run it (a fresh interpreter)."""
    return subprocess.run([sys.executable, "-m", "hywu_core", "generate-lora", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def generate_lora_here(capsys, *args) -> tuple[int, str]:
    """The same sub-command in this process (fast): (exit code, stderr)."""
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    code = cli.run(parser.parse_args(list(map(str, args))))
    return code, capsys.readouterr().err


def test_official_format_from_our_generator(tmp_path, generator):
    save_generator(tmp_path / "gen.safetensors", generator)
    cond = torch.randn(2, 5, 12)
    save_file({"condition": cond}, str(tmp_path / "cond.safetensors"))
    done = generate_lora("--generator", tmp_path / "gen.safetensors", "--condition", tmp_path / "cond.safetensors",
                         "--out", tmp_path / "lora.safetensors", "--format", "official")
    assert done.returncode == 0, done.stderr
    out = load_file(str(tmp_path / "lora.safetensors"))
    with torch.no_grad():
        bundle = generator(Condition.from_tensors(cond))
    scale = out.pop("scale")
    assert scale.shape == () and float(scale) == generator.alpha / generator.rank == 2.0
    assert sorted(out) == sorted(f"{p}.lora_{ab}" for p in generator.spec.module_paths() for ab in "AB")
    for path in bundle.A:
        assert out[f"{path}.lora_A"].shape == (2, 4, bundle.A[path].shape[-1])      # (B, r, d_in)
        assert torch.equal(out[f"{path}.lora_A"], bundle.A[path])
        assert torch.equal(out[f"{path}.lora_B"], bundle.B[path])


def test_official_folder_through_the_cli_matches_the_reference(tmp_path):
    weights = write_official_folder(tmp_path / "hy-wu")
    cond = torch.randn(2, 1, 5, TINY_CONFIG["input_dim"])                            # (B, 1, L, D) as the release feeds it
    save_file({"condition": cond}, str(tmp_path / "cond.safetensors"))
    done = generate_lora("--generator", tmp_path / "hy-wu", "--condition", tmp_path / "cond.safetensors",
                         "--out", tmp_path / "lora.safetensors")
    assert done.returncode == 0, done.stderr
    out = load_file(str(tmp_path / "lora.safetensors"))
    expected = [reference_forward(weights, TINY_CONFIG, cond[i, 0]) for i in range(2)]
    assert sorted(out) == sorted(expected[0])
    assert out["model.layers.2.mlp.experts.w1.lora_A"].shape == (2, 2, 4, 16)       # (B, E, r, d_in)
    assert out["model.layers.0.self_attn.o_proj.lora_B"].shape == (2, 16, 4)        # (B, d_out, r)
    for key in expected[0]:
        torch.testing.assert_close(out[key].double(), torch.stack([e[key] for e in expected]) if key != "scale"
                                   else expected[0][key], rtol=1e-4, atol=1e-5, msg=key)


def test_comfy_format_one_file_per_condition_or_by_index(tmp_path, generator, capsys):
    save_generator(tmp_path / "gen.safetensors", generator)
    cond = torch.randn(3, 5, 12)
    save_file({"condition": cond}, str(tmp_path / "cond.safetensors"))
    common = ("--generator", tmp_path / "gen.safetensors", "--condition", tmp_path / "cond.safetensors", "--format", "comfy")
    code, err = generate_lora_here(capsys, *common, "--out", tmp_path / "lora.safetensors")
    assert code == 0, err
    with torch.no_grad():
        bundle = load_generator(tmp_path / "gen.safetensors")(Condition.from_tensors(cond))
    for i in range(3):
        written = load_file(str(tmp_path / f"lora_{i}.safetensors"))
        expected = bundle.to_comfy_state_dict(i)
        assert sorted(written) == sorted(expected)
        assert all(torch.equal(written[k], expected[k]) for k in expected)
        assert any(k.endswith(".lora_up.weight") for k in written)
    assert not (tmp_path / "lora.safetensors").exists()
    code, err = generate_lora_here(capsys, *common, "--out", tmp_path / "second.safetensors", "--index", 1)
    assert code == 0, err
    second, first_run = load_file(str(tmp_path / "second.safetensors")), load_file(str(tmp_path / "lora_1.safetensors"))
    assert second.keys() == first_run.keys() and all(torch.equal(second[k], first_run[k]) for k in second)
    code, err = generate_lora_here(capsys, *common, "--out", tmp_path / "x.safetensors", "--index", 3)
    assert code == 2 and "--index 3 is out of range for a batch of 3" in err


def test_bad_condition_and_generator_files_exit_2_with_a_message(tmp_path, generator, capsys):
    save_generator(tmp_path / "gen.safetensors", generator)
    args = ("--generator", tmp_path / "gen.safetensors", "--condition", tmp_path / "cond.safetensors",
            "--out", tmp_path / "lora.safetensors")
    save_file({"cond": torch.randn(1, 5, 12)}, str(tmp_path / "cond.safetensors"))
    code, err = generate_lora_here(capsys, *args)
    assert code == 2 and 'no "condition" tensor' in err
    save_file({"condition": torch.randn(5, 12)}, str(tmp_path / "cond.safetensors"))
    code, err = generate_lora_here(capsys, *args)
    assert code == 2 and "expected (B, L, D) or (B, 1, L, D)" in err
    save_file({"condition": torch.randn(1, 5, 7)}, str(tmp_path / "cond.safetensors"))
    code, err = generate_lora_here(capsys, *args)
    assert code == 2 and "the condition is 7 wide (from 'cond.safetensors') but the generator expects 12" in err
    save_file({"condition": torch.randn(2, 5, 12)}, str(tmp_path / "cond.safetensors"))
    code, err = generate_lora_here(capsys, *args, "--index", 0)
    assert code == 2 and "--index applies to --format comfy only" in err
    code, err = generate_lora_here(capsys, "--generator", tmp_path / "missing.safetensors", *args[2:])
    assert code == 2 and "no such file or folder" in err
    assert not (tmp_path / "lora.safetensors").exists()
