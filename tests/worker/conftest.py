"""Fixtures of the worker tests."""

from __future__ import annotations

import pytest

from tests.worker.procs import Workers


@pytest.fixture
def workers(tmp_path):
    w = Workers(tmp_path)
    yield w
    w.close()
