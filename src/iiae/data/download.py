"""Facades and Maps: fetch the public pix2pix archives, check them, unpack them into the AB layout.

``iiae data download facades --root DIR`` leaves ``DIR/train``, ``DIR/val``, ``DIR/test`` of side-by-side
JPEGs (X = photo | Y = label map); ``maps`` leaves ``DIR/train`` and ``DIR/val`` (X = satellite | Y = map).
An archive already downloaded by hand is unpacked with ``--archive FILE``. The archives publish no checksum,
so the check is what they must hold: the number of images of every split (below) and readable gzip/tar data.
Without network the command fails with one line saying what to download and where to put it.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath

from iiae.data.paired_images import IMAGE_SUFFIXES
from iiae.errors import ConfigError, DataError, OutputError

PIX2PIX_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/{name}.tar.gz"
#: Images per split folder of each archive (the paper uses Maps' val/ as its test set).
EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "facades": {"train": 400, "val": 100, "test": 106},
    "maps": {"train": 1096, "val": 1098},
}
DOWNLOAD_TIMEOUT_S = 60
_CHUNK_BYTES = 1 << 20


def _count_images(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def layout_is_complete(name: str, root: Path) -> bool:
    """True when every split folder of ``name`` under ``root`` holds the expected number of images."""
    return all(_count_images(root / split) == count for split, count in EXPECTED_COUNTS[name].items())


def _fetch(url: str, target: Path) -> str | None:
    """Download ``url`` to ``target``; None on success, else the reason in one line."""
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as reply, target.open("wb") as handle:
            shutil.copyfileobj(reply, handle, _CHUNK_BYTES)
        return None
    except (OSError, http.client.HTTPException, ValueError) as error:
        target.unlink(missing_ok=True)
        return " ".join(f"{type(error).__name__}: {error}".split())


def unpack_pix2pix_archive(name: str, archive: Path, root: Path) -> dict[str, int]:
    """Copy the images of ``archive`` (``<name>/<split>/<file>``) to ``root/<split>/<file>``; check the counts.

    Only plain files of the expected split folders are written, under their base names, so no member can
    land outside ``root``.
    """
    expected = EXPECTED_COUNTS[name]
    written = dict.fromkeys(expected, 0)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) < 2 or parts[-2] not in expected:
                    continue
                if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                split = parts[-2]
                (root / split).mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as source, (root / split / parts[-1]).open("wb") as target:
                    shutil.copyfileobj(source, target, _CHUNK_BYTES)
                written[split] += 1
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"archive {archive} cannot be unpacked ({' '.join(str(error).split())}): damaged or not a "
                        f"tar.gz; download {PIX2PIX_URL.format(name=name)} again") from None  # fmt: skip
    wrong = [f"{split}/ {written[split]} (expected {count})" for split, count in expected.items()
             if _count_images(root / split) != count]  # fmt: skip
    if wrong:
        raise DataError(f"archive {archive} is not the {name} dataset: {', '.join(wrong)} images in {root}")
    return written


def ensure_pix2pix_dataset(name: str, root: str | Path, archive: str | Path | None = None) -> Path:
    """Make ``root`` hold the AB layout of ``name`` (facades or maps): keep it, unpack ``archive``, or download."""
    if name not in EXPECTED_COUNTS:
        raise ConfigError(f"unknown pix2pix dataset {name!r}: expected one of {', '.join(EXPECTED_COUNTS)}")
    root = Path(root)
    if archive is None and layout_is_complete(name, root):
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create dataset folder {root}: {error.strerror or error}") from None
    if archive is not None:
        archive = Path(archive)
        if not archive.is_file():
            raise DataError(f"archive {archive} does not exist (download {PIX2PIX_URL.format(name=name)})")
        unpack_pix2pix_archive(name, archive, root)
        return root
    url = PIX2PIX_URL.format(name=name)
    handle, temp_name = tempfile.mkstemp(dir=root, prefix=f".{name}-", suffix=".tar.gz")
    os.close(handle)
    temp = Path(temp_name)
    try:
        reason = _fetch(url, temp)
        if reason is not None:
            raise DataError(
                f"could not download {name} ({url}: {reason}); download {name}.tar.gz from {url} yourself, then run "
                f"'iiae data download {name} --root {root} --archive {name}.tar.gz' (or unpack it so that "
                f"{root}/train/1.jpg exists)"
            )
        unpack_pix2pix_archive(name, temp, root)
    finally:
        temp.unlink(missing_ok=True)
    return root
