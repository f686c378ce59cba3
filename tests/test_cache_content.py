"""Caches see content and trust nothing they read back (:mod:`iiae.cache`).

Random tampering, as property tests: a gallery file replaced by other bytes of the same size under the same
mtime (``cp -p``, ``rsync -t``, tar) is encoded again; a cache file with NaN, truncated, with a header claiming
10^11 columns, of another dtype, a random byte flipped, or of another key never gives stale or NaN codes, costs
bounded time and memory, and gives one notice (none for another key: an ordinary miss). The cached digit
classifier and the zero-shot feature cache get the same treatment, and user feature files with an absurd header
or a non-UTF-8 class list are refused naming the file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from test_zs_end_to_end import UNSEEN, make_sketchy

from iiae import IIAE, ModelConfig
from iiae.cache import file_listing, read_cached_array, read_npy, read_npz, write_cached_array
from iiae.errors import DataError
from iiae.evaluation.digit_classifier import ClassifierSettings, load_or_train_classifier
from iiae.runs.own_images import encode_shared, gallery_codes, read_domain_images
from iiae.zsbir import feature_net
from iiae.zsbir.config import FeatureNetConfig
from iiae.zsbir.feature_extractor import WEIGHTS_FILE
from iiae.zsbir.features import load_plain_features, read_class_list, scan_sketchy_folder

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

HUGE = 10**11
torch.manual_seed(0)
MODEL = IIAE(ModelConfig(image_size=16, encoder_widths=[8], exclusive_widths=[8, 8], decoder_widths=[8],
                         shared_channels=2)).eval()  # fmt: skip
quiet = lambda _: None  # noqa: E731


@contextlib.contextmanager
def notices():
    """The messages logged on ``iiae.cache`` inside the block (the CLI's logging setup stops propagation, so a
    handler of our own, not caplog)."""
    found: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: found.append(record.getMessage())
    logger = logging.getLogger("iiae.cache")
    logger.addHandler(handler)
    try:
        yield found
    finally:
        logger.removeHandler(handler)


@contextlib.contextmanager
def bounded(seconds: float = 10.0, megabytes: float = 64.0):
    """The block must finish within ``seconds`` and allocate (numpy and Python) at most ``megabytes`` at once."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - start < seconds and peak < megabytes * 2**20, (time.perf_counter() - start, peak)


def stored_png(path: Path, seed: int, size=(12, 10)) -> Path:
    """A random RGB PNG without compression: its size depends on ``size`` only, never on the pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, compress_level=0)
    return path


def gallery(folder: Path, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [stored_png(folder / f"{index}.png", seed * 100 + index) for index in range(count)]


def fresh_codes(files: list[Path]) -> np.ndarray:
    """The codes of the files as they are now, encoded directly (what a cache must never contradict)."""
    return encode_shared(MODEL, read_domain_images(MODEL, files, "y"), "y").numpy()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def forged_npy(shape: tuple, data: bytes, descr: str = "<f4") -> bytes:
    """A .npy file whose header claims ``shape`` (whatever ``data`` holds), written by hand."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape})
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") + data


def write_npz(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> None:
    path.unlink(missing_ok=True)
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)


# ------------------------------------------------------------------------------------------------- content keys
def test_file_listing_follows_the_bytes_not_the_timestamps(tmp_path):
    files = gallery(tmp_path / "g", 3)
    before = file_listing(tmp_path, files)
    os.utime(files[1], ns=(1, 1))
    assert file_listing(tmp_path, files) == before  # same bytes, another mtime: the same key
    stat = files[1].stat()
    stored_png(files[1], seed=99)
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = file_listing(tmp_path, files)
    assert files[1].stat().st_size == stat.st_size and after[1][:2] == before[1][:2] and after[1] != before[1]
    assert after[0] == before[0] and before[0][0] == "g/0.png"


def test_a_fifo_is_refused_at_once_never_read(tmp_path):
    fifo = tmp_path / "g" / "pipe.png"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"gallery file .*pipe\.png is a FIFO"):
        file_listing(tmp_path, [fifo], "gallery file")
    assert time.perf_counter() - start < 1


@settings(max_examples=30, deadline=None)
@given(count=st.integers(1, 4), data=st.data())
def test_a_same_size_replacement_under_the_old_mtime_is_never_served_stale(count, data):
    with tempfile.TemporaryDirectory() as folder:
        root, cache = Path(folder) / "gallery", Path(folder) / "cache"
        files = gallery(root, count)
        _, _, cached = gallery_codes(MODEL, root, files, "y", cache, quiet)
        assert not cached and gallery_codes(MODEL, root, files, "y", cache, quiet)[2]
        victim = files[data.draw(st.integers(0, count - 1), label="index")]
        before = victim.stat()
        stored_png(victim, seed=1000 + data.draw(st.integers(0, 10**6), label="seed"))
        os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert (victim.stat().st_size, victim.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
        codes, _, cached = gallery_codes(MODEL, root, files, "y", cache, quiet)
        assert not cached and np.array_equal(codes, fresh_codes(files))


# --------------------------------------------------------------------------------------------- cache tampering
DAMAGE = ("nan", "inf", "truncate", "huge columns", "huge rows and columns", "other rows", "other columns",
          "float16", "object", "garbage", "empty", "fifo", "no values", "deflated")  # fmt: skip
TAMPERING = (*DAMAGE, "other key", "flipped byte")


def tamper(path: Path, kind: str, data) -> None:
    """Damage the cache file ``path`` (a gallery cache of ``write_cached_array``) as ``kind`` says."""
    with np.load(path) as stored:
        key, values = stored["key"], stored["values"]
    rows, columns = values.shape
    raw = path.read_bytes()
    if kind in ("nan", "inf"):
        values = values.copy()
        values[data.draw(st.integers(0, rows - 1)), data.draw(st.integers(0, columns - 1))] = \
            np.nan if kind == "nan" else -np.inf  # fmt: skip
        write_npz(path, {"key": npy_bytes(key), "values": npy_bytes(values)})
    elif kind == "truncate":
        path.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
    elif kind in ("huge columns", "huge rows and columns"):
        shape = (rows, HUGE) if kind == "huge columns" else (HUGE, HUGE)
        write_npz(path, {"key": npy_bytes(key), "values": forged_npy(shape, values.tobytes())})
    elif kind == "other rows":
        write_npz(path, {"key": npy_bytes(key), "values": npy_bytes(np.zeros((rows + 1, columns), np.float32))})
    elif kind == "other columns":
        write_npz(path, {"key": npy_bytes(key), "values": npy_bytes(np.zeros((rows, columns + 1), np.float32))})
    elif kind == "float16":
        write_npz(path, {"key": npy_bytes(key), "values": npy_bytes(values.astype(np.float16))})
    elif kind == "object":
        write_npz(path, {"key": npy_bytes(key), "values": forged_npy((rows, columns), b"\0" * 64, "|O")})
    elif kind == "garbage":
        path.write_bytes(data.draw(st.binary(max_size=300)))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif kind == "no values":
        write_npz(path, {"key": npy_bytes(key)})
    elif kind == "deflated":  # a cache is stored uncompressed: nothing in it can claim more than the file holds
        write_npz(path, {"key": npy_bytes(key), "values": npy_bytes(values)}, zipfile.ZIP_DEFLATED)
    elif kind == "other key":
        write_npz(path, {"key": npy_bytes(np.asarray("0" * 24)), "values": npy_bytes(values + 1)})
    elif kind == "flipped byte":
        position = data.draw(st.integers(0, len(raw) - 1))
        flipped = bytearray(raw)
        flipped[position] ^= 1 << data.draw(st.integers(0, 7))
        path.write_bytes(bytes(flipped))


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(TAMPERING), count=st.integers(1, 4), data=st.data())
def test_a_tampered_gallery_cache_is_never_stale_never_nan_and_rebuilt_with_one_notice(kind, count, data):
    with tempfile.TemporaryDirectory() as folder:
        root, cache = Path(folder) / "gallery", Path(folder) / "cache"
        files = gallery(root, count)
        expected, path, _ = gallery_codes(MODEL, root, files, "y", cache, quiet)
        tamper(path, kind, data)
        with notices() as found, bounded():
            codes, again, cached = gallery_codes(MODEL, root, files, "y", cache, quiet)
        assert again == path and np.array_equal(codes, expected) and np.isfinite(codes).all()
        if kind in DAMAGE:
            assert not cached and len(found) == 1, found
            assert found[0].startswith(f"iiae: cache {path} was damaged (") and found[0].endswith("); rebuilding")
        elif kind == "other key":
            assert not cached and found == []  # an ordinary miss
        else:
            assert len(found) <= 1 and (cached or found)  # a flip that changes nothing that counts is a hit
        with notices() as found:
            codes, _, cached = gallery_codes(MODEL, root, files, "y", cache, quiet)
        assert cached and found == [] and np.array_equal(codes, expected)  # rebuilt


def test_a_header_claiming_huge_arrays_is_refused_before_anything_is_allocated(tmp_path):
    path = tmp_path / "gallery-k.npz"
    write_cached_array(path, "k", np.ones((3, 4), np.float32))
    write_npz(path, {"key": npy_bytes(np.asarray("k")), "values": forged_npy((3, HUGE), b"\0" * 48)})
    with notices() as found, bounded(seconds=1, megabytes=4):
        assert read_cached_array(path, "k", 3) is None
    assert len(found) == 1 and "declares shape (3, 100000000000) of float32 (1,200,000,000,000 bytes)" in found[0]
    assert "holds 48 bytes" in found[0]
    assert not write_cached_array(path, "k", np.full((3, 4), np.nan, np.float32))  # NaN is never cached
    assert read_cached_array(path, "k", 3) is None


# ---------------------------------------------------------------------------------------- the digit classifier
@pytest.mark.parametrize("damage", ["nan", "shape", "truncate"])
def test_a_damaged_cached_digit_classifier_is_retrained_with_one_notice(tmp_path, damage):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(48, 3, 32, 32, generator=generator) * 2 - 1
    labels = torch.randint(0, 10, (48,), generator=generator)
    settings_ = ClassifierSettings(epochs=1, batch_size=16)
    first = load_or_train_classifier(images, labels, tmp_path, settings_)
    with safe_open(str(first.path), framework="pt") as opened:
        metadata = opened.metadata()
        state = {name: opened.get_tensor(name) for name in opened.keys()}
    name = sorted(state)[0]
    if damage == "nan":
        state[name] = state[name].clone().view(-1).index_fill(0, torch.tensor([0]), float("nan")).view_as(state[name])
        save_file(state, str(first.path), metadata=metadata)
    elif damage == "shape":
        state[name] = torch.zeros(2, 2)
        save_file(state, str(first.path), metadata=metadata)
    else:
        first.path.write_bytes(first.path.read_bytes()[:-7])
    with notices() as found:
        again = load_or_train_classifier(images, labels, tmp_path, settings_)
    assert not again.from_cache and len(found) == 1 and f"cache {first.path} was damaged" in found[0]
    assert torch.equal(again.predict(images), first.predict(images))  # the same network, trained again
    with notices() as found:
        assert load_or_train_classifier(images, labels, tmp_path, settings_).from_cache and found == []


# ------------------------------------------------------------------------------------- zero-shot feature cache
@pytest.mark.parametrize("damage", ["nan features", "huge header", "extractor weights", "other key"])
def test_a_damaged_zero_shot_feature_cache_is_rebuilt(tmp_path, damage):
    root = make_sketchy(tmp_path / "sketchy", size=16)
    photos, sketches = scan_sketchy_folder(root)
    config = FeatureNetConfig(backbone="small_cnn", image_size=16, widths=[4], feature_dim=8, epochs=1, workers=0,
                              cache_dir=str(tmp_path / "cache"))  # fmt: skip
    first = feature_net.image_features(root, photos, sketches, UNSEEN, config, log=quiet)
    (path,) = (tmp_path / "cache").glob("features-*.npz")
    with np.load(path) as stored:
        members = {name: stored[name] for name in stored.files}
    if damage == "nan features":
        members["sketch"][0, 0] = np.nan
    elif damage == "other key":
        members["key"], members["sketch"] = np.asarray("f" * 16), members["sketch"] + 1
    if damage == "extractor weights":
        weights = next((tmp_path / "cache").glob("extractor-*")) / WEIGHTS_FILE
        with safe_open(str(weights), framework="pt") as opened:
            state = {name: opened.get_tensor(name) for name in opened.keys()}
        state[sorted(state)[0]].view(-1)[0] = float("nan")
        save_file(state, str(weights))
    else:
        encoded = {name: npy_bytes(value) for name, value in members.items()}
        if damage == "huge header":
            encoded["photo"] = forged_npy((len(photos.paths), HUGE), members["photo"].tobytes())
        write_npz(path, encoded)
    with notices() as found, bounded(seconds=30):
        again = feature_net.image_features(root, photos, sketches, UNSEEN, config, log=quiet)
    assert len(found) == (0 if damage == "other key" else 1), found
    assert not again[2]["cached"].startswith(str(tmp_path)) and again[2]["cached"].startswith("written")
    assert np.array_equal(again[0].features, first[0].features) and np.array_equal(again[1].features,
                                                                                     first[1].features)  # fmt: skip
    with notices() as found:
        third = feature_net.image_features(root, photos, sketches, UNSEEN, config, log=quiet)
    assert found == [] and third[2]["cached"] == str(path) and np.array_equal(third[0].features, first[0].features)


def test_a_same_size_image_replacement_gives_new_zero_shot_features(tmp_path):
    root = make_sketchy(tmp_path / "sketchy", size=16)
    photos, sketches = scan_sketchy_folder(root)
    config = FeatureNetConfig(backbone="small_cnn", image_size=16, widths=[4], feature_dim=8, epochs=1, workers=0,
                              cache_dir=str(tmp_path / "cache"))  # fmt: skip
    key = feature_net.cache_key(root, photos, sketches, UNSEEN, config, feature_net.choose_backbone(config))
    victim = sketches.paths[0]
    before = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # other bytes, the same size
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (victim.stat().st_size, victim.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert feature_net.cache_key(root, photos, sketches, UNSEEN, config, feature_net.choose_backbone(config)) != key


# ------------------------------------------------------------------------------------------- user feature files
def test_user_feature_files_with_absurd_headers_are_refused_naming_the_file(tmp_path):
    features = np.ones((4, 3), np.float32)
    labels = npy_bytes(np.asarray(["a", "b", "a", "b"]))
    write_npz(tmp_path / "sketch.npz", {"features": forged_npy((4, HUGE), features.tobytes()), "labels": labels})
    write_npz(tmp_path / "image.npz", {"features": npy_bytes(features), "labels": labels})
    with bounded(seconds=1, megabytes=4), pytest.raises(DataError, match=r"sketch\.npz: array 'features' declares"):
        load_plain_features(tmp_path)
    bomb = npy_bytes(np.zeros((4, 3), np.float32))[:-48] + b"\0" * (48 << 20)  # claims (4, 3), holds 48 MiB
    write_npz(tmp_path / "sketch.npz", {"features": bomb, "labels": labels}, zipfile.ZIP_DEFLATED)
    with bounded(seconds=2, megabytes=8), pytest.raises(DataError, match=r"sketch\.npz: array 'features' declares"):
        load_plain_features(tmp_path)
    (tmp_path / "big.npy").write_bytes(forged_npy((HUGE, HUGE), b"\0" * 16))
    with bounded(seconds=1, megabytes=4), pytest.raises(DataError, match=r"big\.npy declares shape"):
        read_npy(tmp_path / "big.npy")
    (tmp_path / "ok.npz").write_bytes(b"")
    with pytest.raises(DataError, match=r"ok\.npz is not a readable \.npz"):
        read_npz(tmp_path / "ok.npz", {"features": None})


def test_a_non_utf8_class_list_is_a_data_error_naming_the_file_and_byte(tmp_path):
    path = tmp_path / "unseen.txt"
    path.write_bytes(b"door\nf\xe4n\n")
    with pytest.raises(DataError, match=r"unseen\.txt is not UTF-8 text \(byte 6"):
        read_class_list(path)


def test_a_huge_sparse_file_is_keyed_by_identity_without_reading_it(tmp_path):
    """A PNG followed by 40 GB of zeros (a sparse file) is listed at once: keyed by device, inode, size and times
    instead of its bytes; rewriting it (a new ctime) changes the key."""
    import time

    from iiae.cache import file_listing

    path = tmp_path / "g.png"
    path.write_bytes(b"\x89PNG" + bytes(100))
    os.truncate(path, 40 << 30)
    started = time.perf_counter()
    first = file_listing(tmp_path, [path])
    assert time.perf_counter() - started < 1 and first[0][:2] == ["g.png", 40 << 30]
    stat = path.stat()
    time.sleep(0.05)  # the kernel's timestamps move in ticks of a few ms
    with open(path, "r+b") as handle:
        handle.write(b"\x89PNX")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same size and mtime; ctime cannot be set back
    assert file_listing(tmp_path, [path]) != first
