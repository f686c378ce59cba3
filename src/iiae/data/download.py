"""Facades and Maps: fetch the public pix2pix archives, check them, unpack them into the AB layout.

``iiae data download facades --root DIR`` leaves ``DIR/train``, ``DIR/val``, ``DIR/test`` of side-by-side
JPEGs (X = photo | Y = label map); ``maps`` leaves ``DIR/train`` and ``DIR/val`` (X = satellite | Y = map).
An archive already downloaded by hand is unpacked with ``--archive FILE``. The archive is unpacked into a staging
folder inside ``DIR`` and checked there; only then do the split folders move into place, and a split folder that
already holds files is refused before any work (a user's files are never overwritten). Downloads go through pooch
(:mod:`iiae.data.fetch`: retries, progress on a terminal, nothing half-written). The archives' publishers give
no checksum, so by default the check is what they must hold: the number of images of every split (below) and
readable gzip/tar data; the sha256 of what was downloaded is logged, and ``known_hash`` (``--known-hash``,
``md5:...`` or ``sha256:...``) makes the download or ``--archive`` refused unless it matches.
Without network the command fails with one line saying what to download and where to put it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from iiae.atomic import remove_stale_temporaries, temporary_name
from iiae.data.fetch import check_known_hash, fetch_file, file_matches
from iiae.data.image_modes import ImageFileError, open_image
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
MAX_MEMBER_BYTES = 64 << 20  # an image of these archives is at most a few hundred kB; a larger member is no image


def _count_images(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def layout_is_complete(name: str, root: Path) -> bool:
    """True when every split folder of ``name`` under ``root`` holds the expected number of images."""
    return all(_count_images(root / split) == count for split, count in EXPECTED_COUNTS[name].items())


def _damaged(archive: Path, name: str, error: BaseException) -> DataError:
    return DataError(f"archive {archive} cannot be unpacked ({' '.join(str(error).split())[:300]}): damaged or not "
                     f"a tar.gz; download {PIX2PIX_URL.format(name=name)} again")  # fmt: skip


def _copy_member(source: IO[bytes], target: Path, shown: Path, damaged) -> None:  # noqa: ANN001
    """Copy one archive member to ``target``: a read that fails is the archive's fault (``damaged(error)``), a
    write that fails is the machine's (a full disk: an OSError naming ``shown``, the file the user will look for)."""
    try:
        with target.open("xb") as file:
            while True:
                try:
                    chunk = source.read(_CHUNK_BYTES)
                except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
                    raise damaged(error) from None  # a DataError, which is no OSError
                if not chunk:
                    break
                file.write(chunk)
    except OSError as error:  # creating, writing or closing the file
        raise OSError(error.errno, error.strerror, str(shown)) from None


def unpack_pix2pix_archive(name: str, archive: Path, root: Path, shown: Path | None = None) -> dict[str, int]:
    """Copy the images of ``archive`` (``<name>/<split>/<file>``) to ``root/<split>/<file>``; check the counts.

    Only plain files of the expected split folders are written, under their base names, so no member can
    land outside ``root``; ``root`` should be a new folder (:func:`ensure_pix2pix_dataset` gives a staging folder;
    ``shown``: the folder to name in messages instead). A member name given twice is refused, never overwritten.
    """
    expected = EXPECTED_COUNTS[name]
    shown = root if shown is None else shown
    written = dict.fromkeys(expected, 0)
    seen: set[tuple[str, str]] = set()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) < 2 or parts[-2] not in expected:
                    continue
                if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                split = parts[-2]
                if member.size > MAX_MEMBER_BYTES:  # a tar bomb: refused from its header, never unpacked
                    raise DataError(f"archive {archive} holds {split}/{parts[-1]} of {member.size:,} bytes: no image "
                                    f"of the {name} dataset is larger than {MAX_MEMBER_BYTES >> 20} MB")  # fmt: skip
                target = root / split / parts[-1]
                if (split, parts[-1]) in seen:
                    raise DataError(f"archive {archive} holds {split}/{parts[-1]} twice: not the {name} dataset")
                seen.add((split, parts[-1]))
                if target.exists() or target.is_symlink():
                    raise OutputError(f"{shown / split / parts[-1]} already exists; iiae data download never "
                                      "overwrites files it did not create")  # fmt: skip
                try:
                    (root / split).mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    raise OSError(error.errno, error.strerror, str(shown / split)) from None
                with tar.extractfile(member) as source:
                    _copy_member(source, target, shown / split / parts[-1],
                                 lambda error: _damaged(archive, name, error))  # fmt: skip
                written[split] += 1
    except OSError as error:
        if error.errno is not None or isinstance(error, OutputError):  # the machine's (a full disk, a forbidden file): said as it is, with the file
            raise
        raise _damaged(archive, name, error) from None  # gzip's BadGzipFile and the like carry no errno
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise _damaged(archive, name, error) from None
    wrong = [f"{split}/ {written[split]} (expected {count})" for split, count in expected.items()
             if _count_images(root / split) != count]  # fmt: skip
    if wrong:
        where = f" in {root}" if shown == root else f"; nothing was written to {shown}"  # staged: removed
        raise DataError(f"archive {archive} is not the {name} dataset: {', '.join(wrong)} images{where}")
    for split in expected:  # every file decodes (text files named .jpg in the right numbers are no dataset)
        for path in sorted((root / split).iterdir()):
            try:
                open_image(path).close()
            except ImageFileError as error:
                reason = str(error).replace(str(path), f"{split}/{path.name}")
                raise DataError(f"archive {archive} is not the {name} dataset: {reason}") from None
    return written


def _check_split_folders(name: str, root: Path) -> None:
    """OutputError, before any work, when a split folder of ``name`` under ``root`` exists and is not an empty
    folder: files the command did not create are never overwritten."""
    for split in EXPECTED_COUNTS[name]:
        folder = root / split
        if folder.is_symlink() or (folder.exists() and (not folder.is_dir() or any(folder.iterdir()))):
            raise OutputError(f"{folder} already exists and is not an empty folder; iiae data download never "
                              f"overwrites files it did not create: choose a new --root, or move {folder} away")


@contextlib.contextmanager
def _staged_splits(name: str, root: Path):
    """A staging folder inside ``root`` to unpack into; once the block succeeds (the archive checked), its split
    folders move to ``root/<split>``; whatever happens, the staging folder is removed."""
    staging = temporary_name(root / name)
    staging.mkdir()
    try:
        yield staging
        _check_split_folders(name, root)  # again: nothing appeared there meanwhile
        for split in EXPECTED_COUNTS[name]:
            with contextlib.suppress(FileNotFoundError):
                (root / split).rmdir()  # an empty folder: the rename needs the name free
            os.replace(staging / split, root / split)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_pix2pix_dataset(
    name: str, root: str | Path, archive: str | Path | None = None, known_hash: str | None = None
) -> Path:
    """Make ``root`` hold the AB layout of ``name`` (facades or maps): keep it, unpack ``archive``, or download.

    ``known_hash`` (``md5:...``, ``sha256:...``): the archive, downloaded or given, must have it. Split folders
    of ``root`` that already hold files are refused before any work (unless the layout is complete and no
    ``archive`` is given: then it is kept).
    """
    if name not in EXPECTED_COUNTS:
        raise ConfigError(f"unknown pix2pix dataset {name!r}: expected one of {', '.join(EXPECTED_COUNTS)}")
    known_hash = check_known_hash(known_hash) if known_hash is not None else KNOWN_HASHES[name]
    root = Path(root)
    if archive is None and layout_is_complete(name, root):
        return root
    url = PIX2PIX_URL.format(name=name)
    if archive is not None:
        archive = Path(archive)
        if not archive.is_file():
            what = "does not exist" if not archive.exists() else "is not a regular file"
            raise DataError(f"archive {archive} {what} (download {url})")
    _check_split_folders(name, root)
    created = [folder for folder in [root, *root.parents] if not folder.exists()][::-1]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create dataset folder {root}: {error.strerror or error}") from None
    try:
        return _fill_root(name, root, archive, known_hash, url)
    except BaseException:
        for folder in reversed(created):  # the folders this command made, when it fails: nothing left behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _fill_root(name: str, root: Path, archive: Path | None, known_hash: str | None, url: str) -> Path:
    """:func:`ensure_pix2pix_dataset` once ``root`` exists: unpack ``archive``, or download and unpack."""
    remove_stale_temporaries(root)  # the staging and download folders of a command that was killed
    if archive is not None:
        if known_hash is not None and not file_matches(archive, known_hash):
            raise DataError(f"archive {archive} does not have the known hash {known_hash}: damaged or another file")
        with _staged_splits(name, root) as staging:
            unpack_pix2pix_archive(name, archive, staging, shown=root)
        return root
    download = temporary_name(root / f"{name}-download")  # hidden, removed whatever happens
    download.mkdir()
    try:
        try:
            fetch_file(url, download / f"{name}.tar.gz", known_hash)
        except DataError as error:
            raise DataError(
                f"could not download {name} ({error}); download {name}.tar.gz from {url} yourself, then run "
                f"'iiae data download {name} --root {root} --archive {name}.tar.gz' (or unpack it so that "
                f"{root}/train/1.jpg exists)"
            ) from None
        with _staged_splits(name, root) as staging:
            unpack_pix2pix_archive(name, download / f"{name}.tar.gz", staging, shown=root)
    finally:
        shutil.rmtree(download, ignore_errors=True)
    return root
