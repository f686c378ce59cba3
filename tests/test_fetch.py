"""Downloads through pooch (iiae.data.fetch), against a local HTTP server: the file arrives whole and checked, or
nothing arrives and the error is one line naming the URL."""

from __future__ import annotations

import hashlib
import logging

import pytest
from file_server import serving

from iiae.data import fetch
from iiae.data.fetch import check_known_hash, fetch_file, file_matches
from iiae.errors import ConfigError, DataError

BODY = bytes(range(256)) * 4096  # 1 MiB
MD5 = hashlib.md5(BODY).hexdigest()
SHA256 = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def server():
    with serving() as running:
        running.files["data.bin"] = BODY
        yield running


@pytest.fixture(autouse=True)
def no_retries(monkeypatch):
    monkeypatch.setattr(fetch, "DOWNLOAD_RETRIES", 0)  # a test that wants retries passes them


def test_a_download_with_the_pinned_hash_arrives_whole(tmp_path, server):
    target = tmp_path / "folder" / "data.bin"
    assert fetch_file(f"{server.url}/files/data.bin", target, f"md5:{MD5}") == target
    assert target.read_bytes() == BODY
    assert [path.name for path in target.parent.iterdir()] == ["data.bin"]  # no temporary file
    assert fetch_file(f"{server.url}/files/data.bin", target, f"sha256:{SHA256}") == target
    assert server.requested == ["/files/data.bin"]  # present with the right hash: not fetched again


@pytest.mark.parametrize("wrong", ["md5:" + "0" * 32, "sha256:" + "0" * 64])
def test_a_hash_mismatch_is_one_line_and_leaves_no_file(tmp_path, server, wrong):
    target = tmp_path / "data.bin"
    with pytest.raises(DataError) as caught:
        fetch_file(f"{server.url}/files/data.bin", target, wrong)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{server.url}/files/data.bin: ")
    assert "does not match" in message and wrong in message
    assert list(tmp_path.iterdir()) == []


def test_a_connection_broken_midway_leaves_no_file(tmp_path, server):
    server.truncated.add("data.bin")
    with pytest.raises(DataError, match="data.bin: ") as caught:
        fetch_file(f"{server.url}/files/data.bin", tmp_path / "data.bin", None)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_http_errors_and_refused_connections_are_one_line(tmp_path, server):
    with pytest.raises(DataError, match="404"):
        fetch_file(f"{server.url}/files/missing.bin", tmp_path / "missing.bin", None)
    with pytest.raises(DataError, match=r"^http://127\.0\.0\.1:9/data\.bin: ConnectionError"):
        fetch_file("http://127.0.0.1:9/data.bin", tmp_path / "data.bin", None)  # nothing listens on port 9
    assert list(tmp_path.iterdir()) == []


def test_a_failed_attempt_is_retried(tmp_path, server):
    server.fail_first = 1  # 503 once, then the file
    target = fetch_file(f"{server.url}/files/data.bin", tmp_path / "data.bin", f"md5:{MD5}", retries=1)
    assert target.read_bytes() == BODY and len(server.requested) == 2


def test_without_a_known_hash_the_sha256_is_logged(tmp_path, server, caplog):
    with caplog.at_level(logging.INFO, logger="iiae.data"):
        fetch_file(f"{server.url}/files/data.bin", tmp_path / "data.bin", None)
    assert any(SHA256 in record.getMessage() for record in caplog.records)
    assert file_matches(tmp_path / "data.bin", SHA256) and not file_matches(tmp_path / "data.bin", "md5:" + "1" * 32)


def test_known_hashes_are_checked_before_any_download():
    assert check_known_hash(SHA256.upper()) == f"sha256:{SHA256}"  # bare hex is a sha256
    assert check_known_hash(f"MD5:{MD5}") == f"md5:{MD5}"
    for bad in ["md5:123", f"sha256:{MD5}", f"crc32:{MD5}", "sha256:" + "g" * 64, ""]:
        with pytest.raises(ConfigError, match="is not md5:<32 hex digits>"):
            check_known_hash(bad)


def test_a_progress_bar_only_on_a_terminal_when_notes_are_shown(tmp_path, server, monkeypatch, capsys):
    assert not fetch.show_progress()  # pytest's stderr is no terminal
    monkeypatch.setattr(fetch.sys.stderr, "isatty", lambda: True, raising=False)
    logger = logging.getLogger("iiae")
    level = logger.level
    try:
        logger.setLevel(logging.INFO)
        assert fetch.show_progress()
        logger.setLevel(logging.WARNING)  # iiae -q
        assert not fetch.show_progress()
    finally:
        logger.setLevel(level)
    monkeypatch.setattr(fetch, "show_progress", lambda: True)
    fetch_file(f"{server.url}/files/data.bin", tmp_path / "data.bin", f"md5:{MD5}")
    assert "100%" in capsys.readouterr().err  # tqdm's bar, through pooch
