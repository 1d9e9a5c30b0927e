"""Fixtures of the training tests (configs and subprocess helpers live in helpers.py)."""
import pytest


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Training runs in one thread here: on 2 cores shared with other jobs, two spinning threads make
    a step ~20x slower (measured: 280 s vs 12 s for the same 60-step run)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
