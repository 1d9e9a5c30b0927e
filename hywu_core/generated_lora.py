"""What the Generate node hands on: N generated LoRAs with their provenance (paper §3.3-3.5, §5.3, §7.6).

    generate_lora   condition -> GeneratedLoRA through `generator(condition)`, without gradients,
                    refusing NaN/Inf, cached
    GeneratedLoRA   the bundle and, per item, where it came from (generator, instruction, source
                    digest); the LoRA tools (average, shuffle, blend, bound) return new ones that
                    record what was derived from what

Caching generated adapters is one of the paper's systems notes (§3.7): a generation is keyed by
the generator object and the condition's fingerprint, so an unchanged input never runs the NNT
twice. The generator is held weakly: a reloaded generator is a new key. The cache is bounded by
the bytes of the LoRAs it holds (512 MiB by default), not by a number of entries.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hywu_core import lora_tools
from hywu_core.condition import Condition
from hywu_core.generator import Generator
from hywu_core.lora import LoRABundle

DEFAULT_CACHE_BYTES = 512 * 2**20


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

    def averaged(self, space: str = "parameters") -> GeneratedLoRA:
        """Average PG (§5.3): one LoRA, the mean of the batch."""
        mean = lora_tools.average(self.bundle, space)
        return GeneratedLoRA(mean, ({"derived": f"average of {self.batch_size} ({space})", "from": list(self.items)},))

    def shuffled(self, seed: int) -> tuple[GeneratedLoRA, list[int]]:
        """Shuffle PG (§5.3): item i gets the LoRA of item order[i], never its own; returns (LoRAs, order)."""
        bundle, order = lora_tools.shuffle(self.bundle, seed)
        return GeneratedLoRA(bundle, tuple(self.items[j] | {"shuffled_from": j} for j in order)), order

    def blended(self, other: GeneratedLoRA, t: float, space: str = "parameters") -> GeneratedLoRA:
        """(1 - t) * self + t * other, item by item (a single LoRA pairs with every item)."""
        bundle = lora_tools.blend(self.bundle, other.bundle, t, space)
        items = tuple({"derived": f"blend t={t} ({space})", "a": self.items[i % self.batch_size],
                       "b": other.items[i % other.batch_size]} for i in range(bundle.batch_size))
        return GeneratedLoRA(bundle, items)

    def bounded(self, max_norm: float) -> tuple[GeneratedLoRA, int]:
        """§7.6: every module update scaled to norm <= max_norm; returns (LoRAs, how many were scaled)."""
        bundle, clamped = lora_tools.bound(self.bundle, max_norm)
        return GeneratedLoRA(bundle, tuple(item | {"bounded": max_norm} for item in self.items)), clamped


def check_finite(bundle: LoRABundle, what: str = "the generated LoRA") -> None:
    """Refuse NaN/Inf factors, naming the first module that has them."""
    for path in bundle.spec.module_paths():
        for name, factors in (("A", bundle.A), ("B", bundle.B)):
            if not torch.isfinite(factors[path]).all():
                raise ValueError(f"{what} has NaN/Inf values in {path} ({name}); refusing to apply it. The generator "
                                 "file is corrupt or was trained unstably: re-download or retrain it")


def bundle_bytes(bundle: LoRABundle) -> int:
    """Bytes held by a bundle's factors A and B."""
    return sum(t.numel() * t.element_size() for factors in (bundle.A, bundle.B) for t in factors.values())


class GenerationCache:
    """An LRU of generated bundles keyed by (generator, condition fingerprint), bounded by bytes.

    It holds at most `max_bytes` of LoRA factors (A and B), evicting the least recently used;
    a bundle larger than the whole budget is not cached. Entries whose generator is gone are
    dropped on the next put."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[int, str], tuple[weakref.ref, LoRABundle, int]] = OrderedDict()

    def get(self, generator: Generator, condition: Condition) -> LoRABundle | None:
        key = (id(generator), condition.fingerprint)
        entry = self._entries.get(key)
        if entry is None or entry[0]() is not generator:
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, generator: Generator, condition: Condition, bundle: LoRABundle) -> None:
        for key in [k for k, entry in self._entries.items() if entry[0]() is None]:
            self._drop(key)
        key, size = (id(generator), condition.fingerprint), bundle_bytes(bundle)
        if key in self._entries:
            self._drop(key)
        if size > self.max_bytes:
            return
        self._entries[key] = (weakref.ref(generator), bundle, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[int, str]) -> None:
        self.bytes -= self._entries.pop(key)[2]


def generate_lora(generator: Generator, condition: Condition, cache: GenerationCache | None = None,
                  before_run: Callable[[], object] | None = None) -> GeneratedLoRA:
    """One LoRA per condition item on the generator's device, without gradients; refuses NaN/Inf.
    `before_run` is called only when the NNT has to run (not on a cache hit): the nodes load the generator there."""
    bundle = cache.get(generator, condition) if cache is not None else None
    if bundle is None:
        if before_run is not None:
            before_run()
        with torch.no_grad():
            bundle = generator(condition)
        check_finite(bundle)
        if cache is not None:
            cache.put(generator, condition, bundle)
    items = tuple({"generator": generator.source, "instruction": instruction, "source": source}
                  for instruction, source in zip(condition.instructions, condition.sources))
    return GeneratedLoRA(bundle, items)
