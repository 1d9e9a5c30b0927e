"""The batch item of each row a module sees when a mixture of experts gathers tokens (for per-item LoRA, §3.2).

A mixture of experts flattens its (B, L, D) input into tokens and hands each expert only the tokens routed to
it, so a Linear inside an expert sees (n, D) rows from different batch items. Per-item LoRA (lora_inject) needs
each row's item: the mixture announces it around each expert call with `gathered_from(items, batch_size)`, and
the LoRA hooks read it with `current()`. Outside such a call `current()` is None.
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import NamedTuple

from torch import Tensor


class GatheredRows(NamedTuple):
    items: Tensor       # (n,) int64: the batch item of each row the module sees
    batch_size: int     # B of the mixture's input


_current: contextvars.ContextVar[GatheredRows | None] = contextvars.ContextVar("hywu_gathered_rows", default=None)


@contextmanager
def gathered_from(items: Tensor, batch_size: int):
    """Inside the block, modules called see rows that came from batch items `items` of a batch of `batch_size`."""
    token = _current.set(GatheredRows(items, batch_size))
    try:
        yield
    finally:
        _current.reset(token)


def current() -> GatheredRows | None:
    """The gathered rows' batch items, or None when the rows a module sees are the batch itself."""
    return _current.get()
