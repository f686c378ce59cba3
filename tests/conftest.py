"""Test-session settings shared by every test module."""

from __future__ import annotations

import os
import shutil
import tempfile

_CACHE_DIR: str | None = None


def pytest_configure(config) -> None:
    """Point the digit-classifier cache (iiae.digit_classifier) at a fresh folder for this session.

    Set before the test modules are imported, so subprocesses started with a copy of ``os.environ`` use it
    too; the user's ~/.cache/iiae is never touched, and the classifier is trained once per session.
    """
    global _CACHE_DIR
    _CACHE_DIR = tempfile.mkdtemp(prefix="iiae-test-cache-")
    os.environ["IIAE_CACHE_DIR"] = _CACHE_DIR


def pytest_unconfigure(config) -> None:
    if _CACHE_DIR is not None:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)
