"""Fixtures of the worker tests."""

from __future__ import annotations

import pytest
import torch

from tests.worker.procs import Workers
from tests.worker.train_helpers import tokenised_rows


@pytest.fixture
def workers(tmp_path):
    w = Workers(tmp_path)
    yield w
    w.close()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: extra threads only add synchronisation (and thrash on a shared 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rows(tiny_model_dir):
    """Four real fault-report rows tokenised for the tiny model."""
    return tokenised_rows(tiny_model_dir, 4)
