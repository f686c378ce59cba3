"""Where iiae caches what it can recompute (the digit classifier, zero-shot SBIR features and galleries)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$IIAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/iiae``, else ``~/.cache/iiae``."""
    if os.environ.get("IIAE_CACHE_DIR"):
        return Path(os.environ["IIAE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "iiae"
