"""Facades and Maps: fetch the public pix2pix archives, check them, unpack them into the AB layout.

``iiae data download facades --root DIR`` leaves ``DIR/train``, ``DIR/val``, ``DIR/test`` of side-by-side
JPEGs (X = photo | Y = label map); ``maps`` leaves ``DIR/train`` and ``DIR/val`` (X = satellite | Y = map).
An archive already downloaded by hand is unpacked with ``--archive FILE``. Downloads go through pooch
(:mod:`iiae.data.fetch`: retries, progress on a terminal, nothing half-written). The archives' publishers give
no checksum, so by default the check is what they must hold: the number of images of every split (below) and
readable gzip/tar data; the sha256 of what was downloaded is logged, and ``known_hash`` (``--known-hash``,
``md5:...`` or ``sha256:...``) makes the download or ``--archive`` refused unless it matches.
Without network the command fails with one line saying what to download and where to put it.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from iiae.data.fetch import check_known_hash, fetch_file, file_matches
from iiae.data.paired_images import IMAGE_SUFFIXES
from iiae.errors import ConfigError, DataError, OutputError

PIX2PIX_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/{name}.tar.gz"
#: Images per split folder of each archive (the paper uses Maps' val/ as its test set).
EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "facades": {"train": 400, "val": 100, "test": 106},
    "maps": {"train": 1096, "val": 1098},
}
#: Checksums of the archives: none is published (the stored code search found only unverified md5s in third-party
#: code, see README.md), so none is pinned; pass ``known_hash`` to check one.
KNOWN_HASHES: dict[str, str | None] = {"facades": None, "maps": None}
_CHUNK_BYTES = 1 << 20


def _count_images(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def layout_is_complete(name: str, root: Path) -> bool:
    """True when every split folder of ``name`` under ``root`` holds the expected number of images."""
    return all(_count_images(root / split) == count for split, count in EXPECTED_COUNTS[name].items())


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


def ensure_pix2pix_dataset(
    name: str, root: str | Path, archive: str | Path | None = None, known_hash: str | None = None
) -> Path:
    """Make ``root`` hold the AB layout of ``name`` (facades or maps): keep it, unpack ``archive``, or download.

    ``known_hash`` (``md5:...``, ``sha256:...``): the archive, downloaded or given, must have it.
    """
    if name not in EXPECTED_COUNTS:
        raise ConfigError(f"unknown pix2pix dataset {name!r}: expected one of {', '.join(EXPECTED_COUNTS)}")
    known_hash = check_known_hash(known_hash) if known_hash is not None else KNOWN_HASHES[name]
    root = Path(root)
    if archive is None and layout_is_complete(name, root):
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create dataset folder {root}: {error.strerror or error}") from None
    url = PIX2PIX_URL.format(name=name)
    if archive is not None:
        archive = Path(archive)
        if not archive.is_file():
            raise DataError(f"archive {archive} does not exist (download {url})")
        if known_hash is not None and not file_matches(archive, known_hash):
            raise DataError(f"archive {archive} does not have the known hash {known_hash}: damaged or another file")
        unpack_pix2pix_archive(name, archive, root)
        return root
    download = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}-download-"))  # hidden, removed whatever happens
    try:
        try:
            fetch_file(url, download / f"{name}.tar.gz", known_hash)
        except DataError as error:
            raise DataError(
                f"could not download {name} ({error}); download {name}.tar.gz from {url} yourself, then run "
                f"'iiae data download {name} --root {root} --archive {name}.tar.gz' (or unpack it so that "
                f"{root}/train/1.jpg exists)"
            ) from None
        unpack_pix2pix_archive(name, download / f"{name}.tar.gz", root)
    finally:
        shutil.rmtree(download, ignore_errors=True)
    return root
