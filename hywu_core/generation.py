"""Condition -> per-item LoRA through a generator (paper §3.3-3.5), checked and cached.

Caching generated adapters is one of the paper's systems notes (§3.7): a generation is keyed
by the generator object and the condition's fingerprint, so an unchanged input never runs the
NNT twice. The generator is held weakly: a reloaded generator is a new key.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .condition import Condition
from .generator import Generator
from .lora import LoRABundle


@dataclass(frozen=True)
class GeneratedLoRA:
    """N generated LoRAs and, per item, where it came from (generator, instruction, source digest)."""

    bundle: LoRABundle
    items: tuple[dict, ...]

    def __post_init__(self):
        if len(self.items) != self.bundle.batch_size:
            raise ValueError(f"{self.bundle.batch_size} LoRAs but {len(self.items)} provenance records")

    @property
    def batch_size(self) -> int:
        return self.bundle.batch_size

    def check_index(self, index: int) -> int:
        """`index` as a row of this batch (negative counts from the end); a clear error otherwise."""
        n = self.batch_size
        if not -n <= index < n:
            raise ValueError(f"LoRA index {index} is out of range: this HYWU_LORA holds {n} "
                             f"item{'s' if n != 1 else ''} (indices 0..{n - 1})")
        return index % n


def check_finite(bundle: LoRABundle, what: str = "the generated LoRA") -> None:
    """Refuse NaN/Inf factors, naming the first module that has them."""
    for path in bundle.spec.module_paths():
        for name, factors in (("A", bundle.A), ("B", bundle.B)):
            if not torch.isfinite(factors[path]).all():
                raise ValueError(f"{what} has NaN/Inf values in {path} ({name}); refusing to apply it. The generator "
                                 "file is corrupt or was trained unstably: re-download or retrain it")


class GenerationCache:
    """An LRU of generated bundles keyed by (generator, condition fingerprint)."""

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, str], tuple[weakref.ref, LoRABundle]] = OrderedDict()

    def get(self, generator: Generator, condition: Condition) -> LoRABundle | None:
        key = (id(generator), condition.fingerprint)
        entry = self._entries.get(key)
        if entry is None or entry[0]() is not generator:
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, generator: Generator, condition: Condition, bundle: LoRABundle) -> None:
        self._entries[(id(generator), condition.fingerprint)] = (weakref.ref(generator), bundle)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


def generate_lora(generator: Generator, condition: Condition, generator_name: str = "",
                  cache: GenerationCache | None = None) -> GeneratedLoRA:
    """One LoRA per condition item, on the generator's device; refuses mismatched widths and NaN/Inf."""
    if condition.width != generator.config.cond_dim:
        raise ValueError(f"the condition is {condition.width} wide (encoder {condition.encoder!r}) but the generator "
                         f"expects {generator.config.cond_dim}: load the condition encoder this generator was "
                         "trained with")
    bundle = cache.get(generator, condition) if cache is not None else None
    if bundle is None:
        parameter = next(generator.parameters())
        with torch.no_grad():
            bundle = generator.generate(condition.tokens.to(parameter.device, parameter.dtype),
                                        condition.mask.to(parameter.device))
        check_finite(bundle)
        if cache is not None:
            cache.put(generator, condition, bundle)
    items = tuple({"generator": generator_name, "instruction": instruction, "source": source}
                  for instruction, source in zip(condition.instructions, condition.sources))
    return GeneratedLoRA(bundle, items)
