"""Fixtures shared across test modules."""

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module: small graphs gain nothing from two, and on a loaded
    2-core machine (parallel test runs) OpenMP oversubscription made model tests 10-50x slower."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
