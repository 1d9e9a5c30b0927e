"""Edit data for on-the-fly training (§3.6): a folder with a JSONL manifest, one record per edit.

    {"source": "a.png", "target": "b.png", "instruction": "make it brighter", "references": ["r.png"]}

Paths are relative to the folder. Every record is checked before training starts, and the first
bad one raises ManifestError naming its line and the problem (missing file, unreadable image,
empty text, ...). Records must agree on the number of references (the condition encoder reads
them as extra image batches, §3.3).

The order of the data is a function of (seed, epoch): each epoch is a fresh permutation, so a run's
position is (epoch, cursor) and a resumed run draws exactly the samples it would have drawn.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

RECORD_KEYS = ("source", "target", "instruction", "references")


class ManifestError(ValueError):
    """A manifest record that cannot be trained on; the message names the line, the problem and the fix."""


@dataclass(frozen=True)
class EditRecord:
    line: int
    source: Path
    target: Path
    instruction: str
    references: tuple[Path, ...] = ()


def _image_problem(path: Path) -> str | None:
    """None if `path` is a readable image, else what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return "does not exist"
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return f"is not a readable image ({type(error).__name__}: {error})"
    return None


def check_record(folder: Path, line: int, text: str, where: str) -> EditRecord:
    """One manifest line as an EditRecord, or ManifestError naming what is wrong with it."""
    def bad(problem: str) -> ManifestError:
        return ManifestError(f"{where} line {line}: {problem}")

    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise bad(f"not valid JSON ({error.msg} at column {error.colno}); write one JSON object per line") from None
    if not isinstance(record, dict):
        raise bad(f"a record must be a JSON object with {', '.join(RECORD_KEYS[:3])}, got {type(record).__name__}")
    unknown = sorted(set(record) - set(RECORD_KEYS))
    if unknown:
        raise bad(f"unknown key(s) {unknown}; a record has {', '.join(RECORD_KEYS)}")
    for key in ("source", "target", "instruction"):
        if key not in record:
            raise bad(f'no "{key}"; every record needs "source", "target" and "instruction"')
    instruction = record["instruction"]
    if not isinstance(instruction, str) or not instruction.strip():
        raise bad('"instruction" is empty; describe the edit, e.g. "make the image brighter"')
    references = record.get("references", [])
    if not isinstance(references, list):
        raise bad(f'"references" must be a list of image files, got {type(references).__name__}')
    paths = {}
    for key, value in [("source", record["source"]), ("target", record["target"])] + \
            [(f"references[{i}]", r) for i, r in enumerate(references)]:
        if not isinstance(value, str) or not value.strip():
            raise bad(f'"{key}" must name an image file in {folder}, got {value!r}')
        path = (folder / value).resolve()
        problem = _image_problem(path)
        if problem:
            raise bad(f'{key} image "{value}" {problem} (looked in {folder}); fix the file or the record')
        paths[key] = path
    return EditRecord(line, paths["source"], paths["target"], instruction.strip(),
                      tuple(paths[f"references[{i}]"] for i in range(len(references))))


def read_manifest(folder, manifest: str = "manifest.jsonl") -> list[EditRecord]:
    """Every record of folder/manifest, checked; ManifestError at the first bad one."""
    folder = Path(folder).expanduser().resolve()
    path = folder / manifest
    if not path.is_file():
        raise ManifestError(f"no manifest {path}: write one JSON record per line "
                            '({"source": ..., "target": ..., "instruction": ...}) into it')
    records = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        record = check_record(folder, number, text, str(path))
        if records and len(record.references) != len(records[0].references):
            raise ManifestError(f"{path} line {number}: {len(record.references)} references, but line "
                                f"{records[0].line} has {len(records[0].references)}; every record needs the same "
                                "number of references")
        records.append(record)
    if not records:
        raise ManifestError(f"{path} has no records; write one JSON record per line")
    return records


def load_image(path: Path, resolution: tuple[int, int] | None = None) -> Tensor:
    """An image file as a ComfyUI IMAGE item (H, W, 3) float32 in [0, 1]; resized and centre-cropped
    to (height, width) when given."""
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = image.convert("RGB")
        if resolution is not None:
            height, width = resolution
            image = ImageOps.fit(image, (width, height), Image.Resampling.BICUBIC)
        array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy())


@dataclass
class EditBatch:
    """Images as ComfyUI IMAGE batches (N, H, W, 3); `index` holds the samples' global batch positions."""

    source: Tensor
    target: Tensor
    instructions: list[str]
    references: list[Tensor]
    index: list[int]


class EditDataset:
    """Records plus the image size they are trained at (all images of a batch must share one size)."""

    def __init__(self, records: list[EditRecord], resolution: tuple[int, int] | None = None):
        self.records = records
        self.resolution = tuple(resolution) if resolution else None

    def __len__(self) -> int:
        return len(self.records)

    def batch(self, record_ids: list[int], index: list[int]) -> EditBatch:
        records = [self.records[i] for i in record_ids]
        sizes = {}

        def stack(paths) -> Tensor:
            images = [load_image(p, self.resolution) for p in paths]
            for p, image in zip(paths, images):
                sizes.setdefault(tuple(image.shape[:2]), p)
            if len(sizes) > 1:
                (a, pa), (b, pb) = list(sizes.items())[:2]
                raise ManifestError(f"images of one batch differ in size: {pa.name} is {a[0]}x{a[1]}, {pb.name} is "
                                    f"{b[0]}x{b[1]}; set data.resolution = [height, width] to resize them")
            return torch.stack(images)

        references = [stack([r.references[k] for r in records]) for k in range(len(records[0].references))]
        return EditBatch(stack([r.source for r in records]), stack([r.target for r in records]),
                         [r.instruction for r in records], references, list(index))


class DataOrder:
    """Epoch permutations drawn from (seed, epoch); the position is (epoch, cursor)."""

    def __init__(self, size: int, seed: int, epoch: int = 0, cursor: int = 0):
        self.size, self.seed, self.epoch, self.cursor = size, seed, epoch, cursor
        self._order = self._permutation(epoch)

    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def take(self, count: int) -> list[int]:
        """The next `count` record ids, crossing into new epochs as needed."""
        out = []
        while len(out) < count:
            if self.cursor == self.size:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            step = min(count - len(out), self.size - self.cursor)
            out += self._order[self.cursor:self.cursor + step]
            self.cursor += step
        return out

    def state_dict(self) -> dict:
        return {"size": self.size, "seed": self.seed, "epoch": self.epoch, "cursor": self.cursor}

    @classmethod
    def from_state_dict(cls, state: dict) -> "DataOrder":
        return cls(state["size"], state["seed"], state["epoch"], state["cursor"])
