"""The hybrid condition U handed from the encoder to the generator (paper §3.3), one per batch item.

A Condition carries U and its mask with what produced it (the instructions and a digest of each
source image), so a generated LoRA can say where it came from and a cache can recognise an
unchanged input.

Condition files (`./hywu generate-lora --condition`) are .safetensors with "condition" (B, L, D)
or (B, 1, L, D) and optionally "condition_mask" (B, L), nonzero = real token.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from hywu_core.encoders import ConditionEncoder, check_image_batch, match_instructions, match_references


@dataclass(frozen=True)
class Condition:
    """U (N, L, D) with mask (N, L) (True = real token), and per item the instruction and source digest."""

    tokens: Tensor
    mask: Tensor
    instructions: tuple[str, ...]
    sources: tuple[str, ...]
    encoder: str

    def __post_init__(self):
        n = self.tokens.shape[0]
        if self.tokens.dim() != 3 or tuple(self.mask.shape) != tuple(self.tokens.shape[:2]):
            raise ValueError(f"a condition is U (N, L, D) with a mask (N, L); got U {tuple(self.tokens.shape)}, "
                             f"mask {tuple(self.mask.shape)}")
        if len(self.instructions) != n or len(self.sources) != n:
            raise ValueError(f"condition of {n} items has {len(self.instructions)} instructions and "
                             f"{len(self.sources)} source digests")
        if not torch.isfinite(self.tokens).all():
            raise ValueError("the condition U contains NaN/Inf values: the condition encoder's weights or "
                             "inputs are broken; reload the encoder in float32")

    @classmethod
    def from_tensors(cls, tokens: Tensor, mask: Tensor | None = None, encoder: str = "") -> "Condition":
        """A condition from U alone (e.g. a saved condition file): no instructions or source digests recorded."""
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        n = tokens.shape[0]
        return cls(tokens=tokens, mask=mask.bool(), instructions=("",) * n, sources=("",) * n, encoder=encoder)

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def width(self) -> int:
        return self.tokens.shape[-1]

    @cached_property
    def fingerprint(self) -> str:
        """A digest of U and the mask: equal conditions give equal fingerprints."""
        digest = hashlib.sha256()
        for tensor in (self.tokens, self.mask):
            digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


def image_digest(image: Tensor) -> str:
    """A short sha256 of one IMAGE item's pixels (H, W, 3), recorded as the source of a LoRA."""
    data = image.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]


def split_instructions(text: str, count: int) -> list[str]:
    """The instruction for each of `count` images, read from one text field (the node's).

    One instruction (even over several lines, when there is one image) applies to every image;
    for a batch, a text with exactly `count` non-empty lines gives one instruction per image.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the instruction is empty: describe the edit, e.g. 'make the image sharper' "
                         "(for a batch, one line per image)")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if count == 1:
        return [text.strip()]
    if len(lines) == 1:
        return lines * count
    if len(lines) != count:
        raise ValueError(f"{len(lines)} instruction lines for a batch of {count} images: write one line "
                         f"(used for every image) or exactly {count} lines, one per image")
    return lines


def encode_condition(encoder: ConditionEncoder, images: Tensor, instructions: str | Sequence[str],
                     references: Sequence[Tensor] = ()) -> Condition:
    """Encode a batch of source images, their instructions and optional reference images (§3.3).

    instructions: one text (one line for every image, or one line per image, as the node's text
    field) or a list with one instruction per image. Gradients flow when the encoder is trainable.
    """
    count = check_image_batch(images, "image")
    if isinstance(instructions, str):
        instructions = split_instructions(instructions, count)
    instructions = match_instructions(instructions, count)
    references = match_references(list(references) or None, count)
    tokens, mask = encoder.encode(images, instructions, references or None)
    return Condition(tokens=tokens, mask=mask, instructions=tuple(instructions),
                     sources=tuple(image_digest(image) for image in images),
                     encoder=encoder.folder.name)


def load_condition_file(path: str | Path) -> Condition:
    """A Condition from a condition .safetensors file; clear errors for anything else."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error
    if "condition" not in tensors:
        raise ValueError(f'{path}: no "condition" tensor (found {sorted(tensors)}); '
                         'save the condition under the key "condition"')
    tokens = tensors["condition"]
    if tokens.dim() == 4 and tokens.shape[1] == 1:
        tokens = tokens[:, 0]
    if tokens.dim() != 3:
        raise ValueError(f'{path}: "condition" has shape {tuple(tokens.shape)}; expected (B, L, D) or (B, 1, L, D)')
    mask = tensors.get("condition_mask")
    if mask is not None and tuple(mask.shape) != tuple(tokens.shape[:2]):
        raise ValueError(f'{path}: "condition_mask" has shape {tuple(mask.shape)}; expected {tuple(tokens.shape[:2])}')
    return Condition.from_tensors(tokens, None if mask is None else mask != 0, encoder=Path(path).name)


def save_condition_file(path: str | Path, condition: Condition) -> Path:
    """`condition` as a condition file (what load_condition_file and `./hywu generate-lora --condition` read):
    "condition" (B, L, D) float32 and "condition_mask" (B, L) uint8; the instructions in the metadata."""
    path = Path(path)
    tensors = {"condition": condition.tokens.detach().float().cpu().contiguous(),
               "condition_mask": condition.mask.detach().to("cpu", torch.uint8).contiguous()}
    save_file(tensors, str(path), metadata={"hywu.encoder": condition.encoder,
                                            "hywu.instructions": "\n".join(condition.instructions)})
    return path
