"""Checks on what comes from outside the pack: node inputs, API prompts, model folders and files.

    finite          a float input that must be a finite number
    one_of          a choice (combo value) that must be one of the listed ones
    walk_once       os.walk that follows links but enters each real folder once
    read_json       a JSON file of bounded size
    index_shards    the shard files of a *.safetensors.index.json, confined to its folder

ComfyUI 0.3.75 facts behind finite and one_of: execution.validate_inputs checks a FLOAT only
against its min/max (`val < min`, `val > max`), which NaN passes, and checks combo values only
for V1 list inputs; a V3 io.Combo (input type "COMBO") reaches execute() unchecked.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterator, Sequence

MAX_JSON_BYTES = 16 * 2**20  # a model's config.json or shard index; real ones are kilobytes


def finite(value: float, name: str) -> float:
    """`value` as a float; NaN and +-Inf are refused with the input's name."""
    if not math.isfinite(value):
        raise ValueError(f"{name} is {value}: give a finite number")
    return float(value)


def one_of(value, choices: Sequence[str], name: str) -> str:
    """`value` if it is one of `choices`; anything else is refused, listing the choices."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} {value!r} is not a choice of this input: use one of {', '.join(choices)}")
    return value


def walk_once(base) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk(base, followlinks=True) that enters each real folder once.

    A link to a folder already visited (a loop such as `ln -s . loop`, or a second way into
    one folder) is skipped, so the walk ends and lists every real folder once."""
    visited = set()
    for root, dirs, files in os.walk(base, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:
            dirs.clear()
            continue
        visited.add(real)
        yield root, dirs, files


def read_json(path: Path):
    """The parsed JSON file `path`, refusing files over MAX_JSON_BYTES before reading them."""
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{path}: {size} bytes is far too large for a model's JSON file (at most "
                         f"{MAX_JSON_BYTES // 2**20} MiB); download the model again")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); download it again") from error


def index_shards(index: Path) -> list[Path]:
    """The shard files that a *.safetensors.index.json names in its "weight_map", in name order.

    Every shard must lie inside the index's folder: an absolute name, a ".." component or a
    link that leads outside is refused, with the same message whether or not that file exists."""
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
        raise ValueError(f'{index}: no "weight_map" from tensor names to shard file names; download the model again')
    root = os.path.realpath(index.parent)
    shards = []
    for name in sorted(set(weight_map.values())):
        real = os.path.realpath(os.path.join(root, name))
        if os.path.isabs(name) or ".." in Path(name).parts or os.path.commonpath([root, real]) != root:
            raise ValueError(f"{index}: shard {name!r} is outside the folder {index.parent}; an index may name only "
                             "files inside its own folder: download the model again (copies, not links to elsewhere)")
        shards.append(index.parent / name)
    return shards
