"""iiae data export (MNIST-CDCB as images, read back identical) and iiae data download (Facades, Maps)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import numpy as np
import pytest
import torch
from file_server import serving
from PIL import Image

from iiae.cli.main import main
from iiae.core.config import DataConfig
from iiae.data import download, fetch
from iiae.data.export import to_uint8
from iiae.data.paired_images import scan_split
from iiae.data.splits import build_cdcb_splits


@pytest.mark.parametrize("layout", ["ab", "folders"])
def test_exported_mnist_cdcb_reads_back_identical_pairs(tmp_path, layout, capsys):
    out = tmp_path / "cdcb"
    assert main(["data", "export", "mnist-cdcb", "--format", layout, "--out", str(out), "--size", "32",
                 "--limit", "6"]) == 0  # fmt: skip
    assert "6 train and 6 test pairs" in capsys.readouterr().out
    expected = build_cdcb_splits(DataConfig(validation_fraction=0.0), 32)  # all training pairs, at 32x32
    for split, pairs in (("train", expected.train), ("test", expected.test)):
        read = scan_split(out, split, layout, size=32)
        assert len(read) == 6
        for domain, original in ((read.x, pairs.x[:6]), (read.y, pairs.y[:6])):
            quantised = torch.from_numpy(to_uint8(original)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            assert torch.equal(domain[0:6], quantised)  # PNG is lossless: exactly the 8-bit images
            assert (domain[0:6] - original).abs().max() <= 1 / 127.5
    if layout == "ab":
        with Image.open(out / "test" / "1.png") as image:
            assert image.size == (64, 32)


def test_export_refuses_a_folder_with_files(tmp_path, capsys):
    (tmp_path / "old.txt").write_text("x")
    assert main(["data", "export", "mnist-cdcb", "--out", str(tmp_path), "--limit", "1"]) == 2
    assert "not empty" in capsys.readouterr().err


def _archive(path, counts, side=8):
    """A pix2pix-style archive: facades/<split>/<n>.jpg, side-by-side halves."""
    with tarfile.open(path, "w:gz") as tar:
        for split, count in counts.items():
            for index in range(1, count + 1):
                buffer = io.BytesIO()
                Image.fromarray(np.full((side, 2 * side, 3), index, dtype=np.uint8)).save(buffer, "JPEG")
                info = tarfile.TarInfo(f"facades/{split}/{index}.jpg")
                info.size = buffer.tell()
                buffer.seek(0)
                tar.addfile(info, buffer)
    return path


@pytest.fixture
def small_facades(monkeypatch):
    counts = {"train": 3, "val": 1, "test": 2}
    monkeypatch.setitem(download.EXPECTED_COUNTS, "facades", counts)
    return counts


def test_download_unpacks_a_checked_archive_into_the_ab_layout(tmp_path, small_facades, capsys):
    archive = _archive(tmp_path / "facades.tar.gz", small_facades)
    root = tmp_path / "facades"
    assert main(["data", "download", "facades", "--root", str(root), "--archive", str(archive)]) == 0
    assert "ready" in capsys.readouterr().out
    assert sorted(p.name for p in (root / "train").iterdir()) == ["1.jpg", "2.jpg", "3.jpg"]
    assert len(scan_split(root, "test", "ab", size=8)) == 2
    assert main(["data", "download", "facades", "--root", str(root)]) == 0  # complete: nothing to fetch


def test_download_rejects_an_archive_of_another_dataset(tmp_path, small_facades, capsys):
    archive = _archive(tmp_path / "other.tar.gz", {"train": 2, "test": 2})
    assert main(["data", "download", "facades", "--root", str(tmp_path / "f"), "--archive", str(archive)]) == 2
    error = capsys.readouterr().err
    assert "not the facades dataset" in error and "train/ 2 (expected 3)" in error


def test_download_without_network_says_what_to_fetch_and_where(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(download, "PIX2PIX_URL", "http://127.0.0.1:9/{name}.tar.gz")  # nothing listens there
    monkeypatch.setattr(fetch, "DOWNLOAD_RETRIES", 0)
    root = tmp_path / "maps"
    assert main(["data", "download", "maps", "--root", str(root)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 or error[0].startswith("iiae: downloading"), error
    assert "could not download maps" in error[-1] and "maps.tar.gz" in error[-1] and str(root) in error[-1]
    assert "--archive" in error[-1] and not root.exists()  # the folder it made removed: nothing left behind


@pytest.fixture
def facades_server(tmp_path, small_facades, monkeypatch):
    """The pix2pix server on 127.0.0.1 serving a small facades.tar.gz; no retries."""
    with serving() as server:
        server.files["facades.tar.gz"] = _archive(tmp_path / "served.tar.gz", small_facades).read_bytes()
        monkeypatch.setattr(download, "PIX2PIX_URL", server.url + "/pix2pix/datasets/{name}.tar.gz")
        monkeypatch.setattr(fetch, "DOWNLOAD_RETRIES", 0)
        yield server


def test_download_fetches_unpacks_and_logs_the_archive_sha256(tmp_path, facades_server, capsys):
    sha256 = hashlib.sha256(facades_server.files["facades.tar.gz"]).hexdigest()
    root = tmp_path / "facades"
    assert main(["data", "download", "facades", "--root", str(root)]) == 0
    captured = capsys.readouterr()
    assert "ready" in captured.out and f"sha256 {sha256}" in captured.err
    assert facades_server.requested == ["/pix2pix/datasets/facades.tar.gz"]
    assert sorted(p.name for p in root.iterdir()) == ["test", "train", "val"]  # the archive is not kept
    assert sorted(p.name for p in (root / "train").iterdir()) == ["1.jpg", "2.jpg", "3.jpg"]
    other = tmp_path / "pinned"
    assert main(["data", "download", "facades", "--root", str(other), "--known-hash", f"sha256:{sha256}"]) == 0
    assert "sha256" not in capsys.readouterr().err  # checked, not just logged
    assert main(["-q", "data", "download", "facades", "--root", str(tmp_path / "quiet")]) == 0
    assert capsys.readouterr().err == ""  # -q: no notes (and no progress bar off a terminal anyway)


def test_an_archive_without_the_known_hash_is_refused_and_nothing_is_left(tmp_path, facades_server, capsys):
    root = tmp_path / "facades"
    wrong = "md5:" + "0" * 32
    assert main(["data", "download", "facades", "--root", str(root), "--known-hash", wrong]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("iiae: error: could not download facades") and "does not match" in error and wrong in error
    assert not root.exists()  # no archive, no temporary folder, no image, not the folder it made
    archive = _archive(tmp_path / "facades.tar.gz", {"train": 3, "val": 1, "test": 2})
    assert main(["data", "download", "facades", "--root", str(root), "--archive", str(archive),
                 "--known-hash", wrong]) == 2  # fmt: skip
    assert "does not have the known hash" in capsys.readouterr().err and not root.exists()
    assert main(["data", "download", "facades", "--root", str(root), "--known-hash", "md5:12"]) == 2
    assert "is not md5:<32 hex digits>" in capsys.readouterr().err


def test_a_tar_bomb_member_is_refused_from_its_header_and_an_existing_root_is_kept(tmp_path, capsys):
    """A 2 GB member (a sparse file of zeros, compressed to a few MB) is refused before it is unpacked; a --root
    that existed before stays, one the command made is removed."""

    bomb = tmp_path / "zeros.jpg"
    bomb.touch()
    os.truncate(bomb, 2 << 30)
    archive = tmp_path / "facades.tar"
    with tarfile.open(archive, "w") as tar:  # uncompressed and sparse-free: the header alone is read
        info = tar.gettarinfo(bomb, "facades/train/1.jpg")
        tar.addfile(info)  # header only: the member claims 2 GB, the archive ends (a truncated bomb)
    for root, existed in ((tmp_path / "new" / "root", False), (tmp_path / "mine", True)):
        if existed:
            root.mkdir()
        assert main(["data", "download", "facades", "--root", str(root), "--archive", str(archive)]) == 2
        assert "of 2,147,483,648 bytes: no image of the facades dataset" in capsys.readouterr().err
        assert root.exists() == existed and (not existed or list(root.iterdir()) == [])
    assert not (tmp_path / "new").exists()


def test_an_archive_of_text_files_named_like_images_is_not_the_dataset(tmp_path, monkeypatch, capsys):
    """The right number of files with the right names is not enough: every image must decode."""
    import tarfile

    monkeypatch.setitem(download.EXPECTED_COUNTS, "facades", {"train": 2, "val": 1, "test": 1})
    archive = tmp_path / "facades.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split, count in download.EXPECTED_COUNTS["facades"].items():
            for index in range(1, count + 1):
                text = tmp_path / f"{split}{index}.txt"
                text.write_text("not an image")
                tar.add(text, f"facades/{split}/{index}.jpg")
    root = tmp_path / "root"
    assert main(["data", "download", "facades", "--root", str(root), "--archive", str(archive)]) == 2
    error = capsys.readouterr().err
    assert "is not the facades dataset" in error and "cannot be decoded" in error and not root.exists()
