"""Every download of the package, through `pooch <https://www.fatiando.org/pooch>`_: retries, a progress bar on
a terminal, a pinned hash, nothing half-written.

:func:`fetch_file` streams a URL into a temporary file beside its target, checks the file's hash (``md5:...``,
``sha256:...``; none for archives whose publishers give none, whose sha256 is then logged) and only then moves
it to the target, so a failed, interrupted or mismatching download leaves no file. Failures are one-line
:class:`~iiae.errors.DataError` s naming the URL.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pooch

from iiae.errors import ConfigError, DataError, OutputError

LOG = logging.getLogger("iiae.data")

DOWNLOAD_RETRIES = 2  # further attempts after a failed one (pooch waits 1 s, then 2 s between them)
DOWNLOAD_TIMEOUT_S = 60  # seconds without a byte from the server before an attempt fails
_CHUNK_BYTES = 1 << 20
#: ``md5:<32 hex>``, ``sha1:<40>``, ``sha256:<64>`` (also without the prefix) or ``sha512:<128>``.
_HASH_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
#: Errors of the machine writing the download (a full disk, a read-only or forbidden folder), not of the network:
#: said as they are, naming the file, never as a failed download to fetch by hand.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def check_known_hash(known_hash: str) -> str:
    """``known_hash`` in pooch's form (``alg:hex``; a bare 64-hex string is a sha256), lower-case; ConfigError
    naming the accepted forms otherwise."""
    algorithm, _, digest = known_hash.strip().rpartition(":")
    algorithm = (algorithm or "sha256").lower()
    if _HASH_LENGTHS.get(algorithm) != len(digest) or not re.fullmatch(r"[0-9a-fA-F]+", digest):
        raise ConfigError(
            f"known hash {known_hash!r} is not md5:<32 hex digits>, sha1:<40>, sha256:<64> or sha512:<128>"
        )
    return f"{algorithm}:{digest.lower()}"


def file_sha256(path: Path) -> str:
    """The sha256 of a file, as hex (pooch's ``file_hash``)."""
    return pooch.file_hash(str(path), alg="sha256")


def file_matches(path: Path, known_hash: str) -> bool:
    """True if the file's hash is ``known_hash`` (``alg:hex``)."""
    algorithm, digest = check_known_hash(known_hash).split(":")
    return pooch.file_hash(str(path), alg=algorithm) == digest


def show_progress() -> bool:
    """A progress bar only on a terminal, when the ``iiae`` loggers show notes (not ``-q``) and tqdm is there."""
    return sys.stderr.isatty() and LOG.isEnabledFor(logging.INFO) and importlib.util.find_spec("tqdm") is not None


@contextlib.contextmanager
def _pooch_notes_silenced() -> Iterator[None]:
    """pooch logs each download and retry itself, with advice for its own API; iiae says what it does instead."""
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def fetch_file(url: str, target: Path, known_hash: str | None, retries: int | None = None) -> Path:
    """Download ``url`` to ``target`` if its hash is ``known_hash``; return ``target``.

    A file already at ``target`` is kept if its hash is ``known_hash`` and replaced otherwise (pooch's rule: with
    ``known_hash=None`` any file there is kept). ``known_hash=None`` accepts any content and logs its sha256.
    A failed attempt (network, HTTP error, hash mismatch) is retried ``retries`` times (default
    :data:`DOWNLOAD_RETRIES`); then a one-line DataError ``"<url>: <reason>"``. The temporary file never outlives
    the call.
    """
    target = Path(target)
    known_hash = None if known_hash is None else check_known_hash(known_hash)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create download folder {target.parent}: {error.strerror or error}") from None
    progress = show_progress()
    retries = DOWNLOAD_RETRIES if retries is None else retries
    store = pooch.create(path=target.parent, base_url="", registry={target.name: known_hash},
                         urls={target.name: url}, retry_if_failed=retries)  # fmt: skip
    downloader = pooch.HTTPDownloader(progressbar=progress, chunk_size=_CHUNK_BYTES, timeout=DOWNLOAD_TIMEOUT_S)
    LOG.info("iiae: downloading %s", url)
    try:
        with _pooch_notes_silenced():
            store.fetch(target.name, downloader=downloader)
    except (OSError, ValueError) as error:  # requests' errors are OSErrors; a hash mismatch is a ValueError
        if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
            raise OSError(error.errno, error.strerror, str(target)) from None
        raise DataError(f"{url}: {' '.join(f'{type(error).__name__}: {error}'.split())}") from None
    if known_hash is None:
        LOG.info("iiae: %s has sha256 %s (no published checksum to check it against)", target.name, file_sha256(target))
    return target
