"""Bad manifest records and bad configs are refused with the documented error, before any training."""
import json

import pytest

from hywu_core.train.config import ConfigError, load_config
from hywu_core.train.data import ManifestError, read_manifest
from hywu_core.train.synthetic import write_procedural_dataset

from .helpers import run_module, write_config


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "data"
    write_procedural_dataset(folder, count=4, size=16)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return folder


def with_record(folder, record, line=3) -> None:
    """Replace manifest line `line` (1-based) by `record` (a dict, or raw text)."""
    path = folder / "manifest.jsonl"
    lines = path.read_text().splitlines()
    lines[line - 1] = record if isinstance(record, str) else json.dumps(record)
    path.write_text("\n".join(lines) + "\n")


GOOD = {"source": "images/0000_source.png", "target": "images/0000_target.png", "instruction": "brighten it"}
CASES = [
    ({**GOOD, "target": "images/missing.png"}, r'line 3: target image "images/missing.png" does not exist'),
    ({**GOOD, "source": "broken.png"}, r'line 3: source image "broken.png" is not a readable image'),
    ({**GOOD, "instruction": "   "}, r'line 3: "instruction" is empty'),
    ({k: v for k, v in GOOD.items() if k != "target"}, r'line 3: no "target"'),
    ({**GOOD, "references": ["images/none.png"]}, r'line 3: references\[0\] image "images/none.png" does not exist'),
    ({**GOOD, "refs": []}, r"line 3: unknown key\(s\) \['refs'\]"),
    ('{"source": "a.png",', r"line 3: not valid JSON"),
    ({**GOOD, "references": ["images/0001_source.png"]}, r"line 3: 1 references, but line 1 has 0"),
]


@pytest.mark.parametrize("record, message", CASES, ids=[m.split(": ", 1)[1][:24] for _, m in CASES])
def test_first_bad_record_is_named(dataset, record, message):
    assert len(read_manifest(dataset)) == 4
    with_record(dataset, record)
    with_record(dataset, {**GOOD, "target": "images/also_missing.png"}, line=4)   # a later bad record
    with pytest.raises(ManifestError, match=message):
        read_manifest(dataset)


def test_cli_refuses_a_bad_manifest_before_loading_anything(dataset, tmp_path):
    with_record(dataset, {**GOOD, "source": "broken.png"}, line=2)
    config = write_config(tmp_path, data={"folder": "data", "procedural": {}})
    result = run_module("hywu_core.train", config, timeout=120)
    assert result.returncode == 2, result.stderr
    assert 'manifest.jsonl line 2: source image "broken.png" is not a readable image' in result.stderr
    assert not (tmp_path / "run").exists()          # no run folder: nothing was built or trained
    assert "hywu train:" in result.stderr and "Traceback" not in result.stderr


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"\[train\] has unknown key\(s\) \['stpes'\]"):
        load_config(write_config(tmp_path, train={"stpes": 10}))
    with pytest.raises(ConfigError, match=r"train.batch_size = 6 is not divisible by train.grad_accum = 4"):
        load_config(write_config(tmp_path, train={"batch_size": 6, "grad_accum": 4}))
    with pytest.raises(ConfigError, match=r"backbone.edit = 'pix2pix': use one of"):
        load_config(write_config(tmp_path, backbone={"edit": "pix2pix"}))
    for key in ("high_frequency", "patch_lattice"):
        for weight in (-0.5, float("nan")):
            with pytest.raises(ConfigError, match=rf"train.{key} = {weight}: give a finite weight >= 0"):
                load_config(write_config(tmp_path, train={key: weight}))
    config = load_config(write_config(tmp_path, train={"batch_size": 4, "grad_accum": 4}))
    with pytest.raises(ConfigError, match="make it a multiple of 8"):
        config.per_rank_micro_batch(world_size=2)
