"""Fixtures of the hywu_core tests (their builders live in helpers.py)."""
import pytest

from hywu_core.generator import Generator

from .helpers import randomize_b_head, small_generator


@pytest.fixture
def generator() -> Generator:
    gen = small_generator()
    randomize_b_head(gen)
    return gen.eval()
