"""Where a benchmark finds the project's shared data: ``--data-root``, else ``$IIAE_SHARED_DATA/<name>``."""

from __future__ import annotations

import os
from pathlib import Path


def data_folder(given: str | None, name: str) -> Path | None:
    """``given``, else ``$IIAE_SHARED_DATA/<name>``; None when neither is an existing folder."""
    if given:
        root = Path(given)
    elif "IIAE_SHARED_DATA" in os.environ:
        root = Path(os.environ["IIAE_SHARED_DATA"]) / name
    else:
        return None
    return root if root.is_dir() else None


def default_root(name: str) -> str:
    """``$IIAE_SHARED_DATA/<name>``, else ``../shared/data/<name>`` (the project's shared folder): a ``--data-root``
    default for benchmarks that cannot run without the data."""
    return str(Path(os.environ.get("IIAE_SHARED_DATA", "../shared/data")) / name)
