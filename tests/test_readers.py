"""Bounded readers (iiae.readers): whatever a file or a value holds, reading it takes bounded time and memory,
a message quotes it in bounded size, and only regular files are opened. Property tests over random structures,
alias bombs, safetensors headers and special files."""

from __future__ import annotations

import json
import os
import struct
import time

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from iiae.core.config import apply_overrides, config_from_dict, resolve_config
from iiae.errors import CheckpointError, ConfigError, DataError
from iiae.readers import (
    MAX_DEPTH,
    QUOTE_LIMIT,
    check_regular_file,
    load_safetensors,
    open_regular,
    parse_json,
    parse_yaml,
    quote,
    read_text,
    safetensors_header,
)

MESSAGE_LIMIT = 2_000  # characters of any one-line error about a value, whatever the value's size
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=30),
                    st.floats(allow_nan=False, allow_infinity=False))  # fmt: skip
structures = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)), max_leaves=40)


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(item) for item in value), default=0)
    return 0


# ------------------------------------------------------------------------------------------------ quoting
@PROPERTY
@given(st.one_of(structures, st.text(min_size=0, max_size=5000), st.binary(max_size=5000),
                 st.lists(st.integers(), min_size=0, max_size=3000)))  # fmt: skip
def test_a_quoted_value_is_bounded_and_on_one_line(value):
    text = quote(value)
    assert len(text) <= QUOTE_LIMIT + 40
    assert "\n" not in text and "\r" not in text


def test_quote_keeps_small_values_as_their_repr():
    assert quote("steps") == "'steps'" and quote([1, 2]) == "[1, 2]" and quote({"a": None}) == "{'a': None}"


# ---------------------------------------------------------------------------------------------------- YAML
@PROPERTY
@given(structures)
def test_yaml_round_trips_every_structure_within_the_limits(value):
    assert _depth(value) < MAX_DEPTH
    assert parse_yaml(yaml.safe_dump(value)) == value


@PROPERTY
@given(st.integers(MAX_DEPTH + 1, 3000), st.sampled_from(["flow", "block"]))
def test_deep_yaml_is_refused_quickly_with_a_short_message(depth, style):
    block = "\n".join(" " * (2 * level) + "k:" for level in range(depth)) + " 1"
    text = "[" * depth + "]" * depth if style == "flow" else block
    started = time.perf_counter()
    with pytest.raises(yaml.YAMLError) as caught:
        parse_yaml(text)
    assert time.perf_counter() - started < 2
    assert "deeper than" in str(caught.value)


def _alias_bomb(width: int, levels: int) -> str:
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    for level in range(1, levels + 1):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join(lines)


@PROPERTY
@given(st.integers(2, 12), st.integers(1, 9))
def test_alias_expansion_is_bounded(width, levels):
    """A 'billion laughs' document: parsed when its expansion is small, refused (fast, small memory) when not."""
    text = _alias_bomb(width, levels)
    expanded = sum(width ** level for level in range(1, levels + 2))
    aliases = width * levels
    started = time.perf_counter()
    if expanded <= 50_000 and aliases <= 100:
        parsed = parse_yaml(text)
        assert len(parsed) == levels + 1
    else:
        try:
            parse_yaml(text)
        except yaml.YAMLError as error:
            assert len(str(error)) < MESSAGE_LIMIT
    assert time.perf_counter() - started < 2


def test_a_key_twice_and_an_unhashable_key_are_yaml_errors():
    with pytest.raises(yaml.YAMLError, match="appears twice"):
        parse_yaml("a: 1\na: 2\n")
    with pytest.raises(yaml.YAMLError, match="plain value"):
        parse_yaml("? [1, 2]\n: 3\n")


@PROPERTY
@given(st.one_of(st.text(max_size=3000), structures.map(lambda v: yaml.safe_dump(v, default_flow_style=True)),
                 st.integers(0, 20_000).map(lambda n: "9" * n), st.integers(40, 500).map(lambda n: "[" * n),
                 st.integers(2, 9).map(lambda n: _alias_bomb(9, n).replace("\n", ", ").join("{}"))))  # fmt: skip
def test_any_set_value_gives_a_config_or_one_bounded_config_error(raw):
    """``--set KEY=VALUE`` with any text: a config or a ConfigError of bounded size (never another exception)."""
    for key in ("data.train_split", "train.steps", "model.encoder_widths", "loss.lambda_"):
        values = resolve_config("mnist_cdcb").to_dict()
        started = time.perf_counter()
        try:
            config_from_dict(apply_overrides(values, [f"{key}={raw}"]))
        except ConfigError as error:
            assert len(str(error)) < MESSAGE_LIMIT and "\n" not in str(error)
        assert time.perf_counter() - started < 2


def test_config_files_are_read_bounded(tmp_path):
    from iiae.core.config import load_config

    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"train:\n  steps: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 16"):
        load_config(binary)


# ---------------------------------------------------------------------------------------------------- JSON
@PROPERTY
@given(structures)
def test_json_round_trips(value):
    assert parse_json(json.dumps(value), "x") == value


@PROPERTY
@given(st.integers(MAX_DEPTH + 1, 200_000))
def test_deep_json_is_refused_without_recursion(depth):
    with pytest.raises(DataError, match="deeper than"):
        parse_json("[" * depth + "]" * depth, "f.json")


def test_brackets_inside_strings_do_not_count():
    assert parse_json(json.dumps({"a": "[" * 100}), "f.json") == {"a": "[" * 100}


# ---------------------------------------------------------------------------------------------- special files
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path):
    fifo = tmp_path / "last.ckpt"
    os.mkfifo(fifo)
    started = time.perf_counter()
    for read in (lambda: open_regular(fifo), lambda: check_regular_file(fifo), lambda: read_text(fifo, 100),
                 lambda: safetensors_header(fifo)):  # fmt: skip
        with pytest.raises(DataError, match="FIFO"):
            read()
    assert time.perf_counter() - started < 2


def test_a_folder_and_a_device_are_refused(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        open_regular(tmp_path)
    if os.path.exists("/dev/null"):
        with pytest.raises(CheckpointError, match="character device"):
            read_text("/dev/null", 10, "config", CheckpointError)


# ---------------------------------------------------------------------------------------------- safetensors
def _safetensors(tmp_path, header: dict, data: bytes = b"") -> os.PathLike:
    encoded = json.dumps(header).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def test_a_claimed_huge_tensor_is_refused_before_it_is_read(tmp_path):
    """The header claims a 20 GiB tensor; the file holds 16 bytes: refused from the header alone."""
    path = _safetensors(tmp_path, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                   "spy": {"dtype": "F32", "shape": [5 << 30], "data_offsets": [16, 16 + (20 << 30)]}},
                        bytes(16))  # fmt: skip
    with pytest.raises(DataError, match="outside the file"):
        safetensors_header(path)


def test_extra_tensors_are_refused_by_name_before_reading(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2), "spy": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="unexpected tensor spy"):
        load_safetensors(path, {"w": (2,)}, error=CheckpointError)
    with pytest.raises(CheckpointError, match=r"has shape \(2,\), the config expects \(3,\)"):
        load_safetensors(path, {"w": (3,), "spy": (3,)}, error=CheckpointError)
    assert set(load_safetensors(path, {"w": (2,), "spy": (3,)})) == {"w", "spy"}


def test_non_finite_tensors_are_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.tensor([1.0, float("nan")])}, str(path))
    with pytest.raises(DataError, match="NaN or Inf"):
        load_safetensors(path)


header_entries = st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(["F32", "F16", "I64", "U8", "F99", ""]), st.integers()),
    "shape": st.one_of(st.lists(st.integers(-2, 10**12), max_size=4), st.text(max_size=3), st.none()),
    "data_offsets": st.one_of(st.lists(st.integers(-5, 10**13), min_size=0, max_size=3), st.none()),
})  # fmt: skip


@PROPERTY
@given(st.dictionaries(st.text(max_size=10), header_entries, max_size=4), st.binary(max_size=256),
       st.integers(0, 2))  # fmt: skip
def test_any_safetensors_header_is_checked_in_bounded_time(tmp_path_factory, header, data, lie):
    """Random headers and data (and a header length that lies): the header is accepted only when it describes
    the file exactly, and then every tensor loads; otherwise a DataError, fast."""
    folder = tmp_path_factory.mktemp("st")
    path = _safetensors(folder, header, data)
    if lie:
        raw = bytearray(path.read_bytes())
        raw[:8] = struct.pack("<Q", [10**15, len(raw)][lie - 1])
        path.write_bytes(bytes(raw))
    started = time.perf_counter()
    try:
        tensors = safetensors_header(path)
    except DataError as error:
        assert len(str(error)) < MESSAGE_LIMIT
    else:
        loaded = load_safetensors(path) if all(d != "F99" for d, _ in tensors.values()) else {}
        for name, (_, shape) in tensors.items():
            assert name not in loaded or tuple(loaded[name].shape) == shape
    assert time.perf_counter() - started < 2


def test_an_existing_json_output_is_read_as_an_object_or_refused(tmp_path):
    from iiae.errors import OutputError
    from iiae.readers import read_json_object

    assert read_json_object(tmp_path / "absent.json") == {}
    (tmp_path / "ok.json").write_text('{"mine": 1}')
    assert read_json_object(tmp_path / "ok.json") == {"mine": 1}
    for name, text, fragment in (("list.json", "[1, 2]", "holds a JSON list"), ("deep.json", "[" * 5000, "deeper"),
                                 ("digits.json", "9" * 5000, "not valid JSON"), ("text.json", "notes", "not valid")):
        (tmp_path / name).write_text(text)
        with pytest.raises(OutputError, match=fragment):
            read_json_object(tmp_path / name, error=OutputError)
