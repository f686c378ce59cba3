"""Test-session settings shared by every test module."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

_CACHE_DIR: str | None = None


def pytest_configure(config) -> None:
    """Point the digit-classifier cache (iiae.evaluation.digit_classifier) at a fresh folder for this session.

    Set before the test modules are imported, so subprocesses started with a copy of ``os.environ`` use it
    too; the user's ~/.cache/iiae is never touched, and the classifier is trained once per session.
    """
    global _CACHE_DIR
    _CACHE_DIR = tempfile.mkdtemp(prefix="iiae-test-cache-")
    os.environ["IIAE_CACHE_DIR"] = _CACHE_DIR


def pytest_unconfigure(config) -> None:
    if _CACHE_DIR is not None:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)


@pytest.fixture
def one_thread():
    """One torch thread for the test: on a busy 2-core machine two threads wait on each other (20x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
