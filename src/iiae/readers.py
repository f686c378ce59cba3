"""Bounded readers: every file a command reads and every value it quotes goes through here.

A reader of user files must never hang, never allocate what the file merely claims, and never echo a value
without bound. The pieces:

- :func:`quote` a value for a message, at most :data:`QUOTE_LIMIT` characters (a 300 MB ``--set`` value gives
  a one-line error of a few hundred characters);
- :func:`check_regular_file` / :func:`open_regular`: only regular files are opened as inputs; a FIFO, device
  or socket is refused at once (``open_regular`` opens without blocking and checks the opened file, so there
  is no window between the check and the open);
- :func:`read_text` / :func:`read_bytes`: a regular file of at most ``limit`` bytes;
- :func:`parse_yaml`: safe YAML (no Python objects), a key given twice refused, aliases limited (a "billion
  laughs" document is refused before it expands) and nesting at most :data:`MAX_DEPTH` deep;
- :func:`parse_json`: JSON nested at most :data:`MAX_DEPTH` deep, without recursion errors;
- :func:`safetensors_header`: a safetensors file's header checked (names, dtypes, shapes, offsets against the
  file size) before any tensor is read; :func:`load_safetensors` then reads the tensors and checks them
  finite.

Every failure is the ``error`` class the caller names (a :class:`~iiae.errors.IIAEError`), naming the file.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from pathlib import Path
from typing import IO, Any

import yaml

from iiae.errors import DataError, IIAEError

QUOTE_LIMIT = 200  # characters of a quoted value in a message
MAX_DEPTH = 32  # nesting of YAML / JSON documents (configs are 3 deep)
MAX_YAML_ALIASES = 100  # alias uses in one YAML document
MAX_YAML_NODES = 100_000  # nodes once aliases are expanded
MAX_SAFETENSORS_HEADER = 100 << 20  # bytes of a safetensors JSON header (the format's own limit)
SAFETENSORS_ITEM_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                          "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}  # fmt: skip


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters (saying how long it was) and on one line.

    The repr of a huge container is never built whole: containers are cut before they are formatted."""
    text = repr(_shallow(value, limit))
    if len(text) > limit:
        text = f"{text[:limit]}... ({_size(value)})"
    return text.replace("\r", "\\r").replace("\n", "\\n")


class _Cut:
    """Stands for the items of a container left out of a quoted value (its repr is ``...``)."""

    def __repr__(self) -> str:
        return "..."


_CUT = _Cut()


def _shallow(value: Any, limit: int, depth: int = 0) -> Any:
    """``value`` with strings cut and containers cut to a few items, so that its repr stays small."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[: limit + 1]
    if isinstance(value, bytes):
        return value if len(value) <= limit else value[: limit + 1]
    if depth > 4:
        return _CUT
    if isinstance(value, dict):
        return {_shallow(k, limit, depth + 1): _shallow(v, limit, depth + 1) for k, v in list(value.items())[:8]}
    if isinstance(value, (list, tuple)):
        return [_shallow(item, limit, depth + 1) for item in list(value[:8])] + ([_CUT] if len(value) > 8 else [])
    return value


def _size(value: Any) -> str:
    if isinstance(value, (str, bytes)):
        return f"{len(value):,} characters" if isinstance(value, str) else f"{len(value):,} bytes"
    if isinstance(value, (dict, list, tuple)):
        return f"{len(value):,} items"
    return "cut"


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, for a message: a folder, a FIFO (named pipe), a socket, a device."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


def check_regular_file(path: str | Path, what: str = "file", error: type[IIAEError] = DataError) -> Path:
    """``path`` as a Path when it names an existing regular file (symbolic links followed); else ``error``
    saying what it is (missing, a folder, a FIFO, a device, a socket)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as failure:
        raise error(f"{what} {path} cannot be read: {failure.strerror or failure}") from None
    if not stat.S_ISREG(mode):
        raise error(f"{what} {path} is {file_kind(mode)}; expected a regular file")
    return path


def open_regular(path: str | Path, what: str = "file", error: type[IIAEError] = DataError) -> IO[bytes]:
    """``path`` opened for binary reading, refusing at once anything but a regular file.

    The file is opened without blocking (a FIFO with no writer would block a plain open forever) and the opened
    file itself is checked, so it cannot be swapped between the check and the open."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        handle = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder; expected a regular file") from None
    except OSError as failure:
        raise error(f"{what} {path} cannot be read: {failure.strerror or failure}") from None
    try:
        mode = os.fstat(handle).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{what} {path} is {file_kind(mode)}; expected a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(handle, True)
        return os.fdopen(handle, "rb")
    except BaseException:
        os.close(handle)
        raise


def read_bytes(path: str | Path, limit: int, what: str = "file", error: type[IIAEError] = DataError) -> bytes:
    """The bytes of the regular file ``path``; ``error`` when it is larger than ``limit`` bytes (checked before
    reading: a file that only claims to be small is read no further than ``limit`` + 1 bytes)."""
    with open_regular(path, what, error) as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise error(f"{what} {path} is larger than {limit:,} bytes; expected a small file")
    return data


def read_text(path: str | Path, limit: int = 1 << 20, what: str = "file", error: type[IIAEError] = DataError) -> str:
    """:func:`read_bytes` as UTF-8 text (a leading byte-order mark dropped); ``error`` naming the byte offset when it
    is not UTF-8."""
    data = read_bytes(path, limit, what, error)
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # the byte-order mark some editors write (Notepad)
    except UnicodeDecodeError as failure:
        raise error(f"{what} {path} is not UTF-8 text (byte {failure.start}: {data[failure.start:failure.start + 1]!r})"
                    ) from None  # fmt: skip


# ----------------------------------------------------------------------------------------------------------- YAML
class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one silently), more
    than :data:`MAX_YAML_ALIASES` alias uses, more than :data:`MAX_YAML_NODES` nodes once aliases are expanded and
    nesting deeper than :data:`MAX_DEPTH`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.alias_count = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: ANN401
        if self.check_event(yaml.AliasEvent):
            self.alias_count += 1
            if self.alias_count > MAX_YAML_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"more than {MAX_YAML_ALIASES} aliases (*name)", mark)
        depth = getattr(self, "_depth", 0) + 1
        if depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                              self.peek_event().start_mark)  # fmt: skip
        self._depth = depth
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth - 1

    def construct_document(self, node: yaml.Node) -> Any:  # noqa: ANN401
        _check_expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a mapping key must be a plain value, not {type(key).__name__} "
                    f"(line {key_node.start_mark.line + 1})", key_node.start_mark) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {quote(key)} appears twice (line {key_node.start_mark.line + 1})",
                    key_node.start_mark)  # fmt: skip
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: yaml.Node) -> None:
    """yaml.YAMLError when the document has more than MAX_YAML_NODES nodes with every alias expanded (counted
    over the node graph with memoisation, so a bomb is measured without being expanded)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else list(node.value)
        if not children_done:
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        total = 1 + sum(sizes.get(id(child), 0) for child in children)
        sizes[id(node)] = min(total, MAX_YAML_NODES + 1)
    if sizes.get(id(root), 0) > MAX_YAML_NODES:
        raise yaml.composer.ComposerError(None, None, f"more than {MAX_YAML_NODES:,} values once aliases are "
                                          "expanded", root.start_mark)  # fmt: skip


def parse_yaml(text: str) -> Any:  # noqa: ANN401
    """``text`` as YAML with :class:`BoundedLoader`; yaml.YAMLError (with a short message) when it is not YAML or
    breaks one of the loader's limits."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise yaml.YAMLError(f"nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, OverflowError) as error:  # a scalar its constructor refuses (an int of 5,000 digits)
        raise yaml.YAMLError(f"a value cannot be read ({quote(str(error))[1:-1]})") from None
    finally:
        loader.dispose()


def yaml_problem(error: yaml.YAMLError) -> str:
    """The first line of a YAML error, bounded (what a one-line message can quote)."""
    return quote(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)[1:-1]


# ----------------------------------------------------------------------------------------------------------- JSON
def parse_json(text: str | bytes, source: str, error: type[IIAEError] = DataError) -> Any:  # noqa: ANN401
    """``text`` as JSON nested at most :data:`MAX_DEPTH` deep (checked before parsing, so no recursion error);
    ``error`` naming ``source`` otherwise. NaN and Infinity are accepted as Python's json does."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as failure:
            raise error(f"{source} is not UTF-8 text (byte {failure.start})") from None
    if _json_depth(text) > MAX_DEPTH:
        raise error(f"{source} is nested deeper than {MAX_DEPTH} levels; expected a small JSON document")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as failure:
        raise error(f"{source} is not valid JSON ({quote(str(failure))[1:-1]})") from None


def read_json_object(path: str | Path, limit: int = 16 << 20, what: str = "JSON file",
                     error: type[IIAEError] = DataError) -> dict:  # fmt: skip
    """The JSON object in ``path`` (an absent file: ``{}``), read bounded (:func:`read_bytes`, :func:`parse_json`);
    ``error`` naming the file when it is not a regular file, too large, not JSON or not an object. For a JSON output
    that keeps the other keys of an existing file (``iiae evaluate --json``)."""
    path = Path(path)
    if not path.exists():
        return {}
    values = parse_json(read_bytes(path, limit, what, error), f"{what} {path}", error)
    if not isinstance(values, dict):
        raise error(f"{what} {path} holds a JSON {type(values).__name__}, not an object")
    return values


def _json_depth(text: str) -> int:
    """The deepest nesting of brackets outside strings (a conservative bound of the JSON nesting)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


# ---------------------------------------------------------------------------------------------------- safetensors
def safetensors_header(path: str | Path, what: str = "weights file", error: type[IIAEError] = DataError,
                       ) -> dict[str, tuple[str, tuple[int, ...]]]:  # fmt: skip
    """{tensor name: (dtype, shape)} of a safetensors file, its header checked against the file before any tensor
    is read: a header length within the file, JSON, every dtype known, every shape of non-negative integers, and
    data offsets that match the shape and tile the data area exactly. A file that claims a 20 GiB tensor it does
    not hold is refused here, not materialised."""
    path = Path(path)
    with open_regular(path, what, error) as file:
        size = os.fstat(file.fileno()).st_size
        prefix = file.read(8)
        if len(prefix) < 8:
            raise error(f"{what} {path} is not a safetensors file ({size} bytes; expected an 8-byte header length)")
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise error(f"{what} {path} is not a safetensors file (its header claims {header_length:,} bytes of "
                        f"a {size:,}-byte file)")  # fmt: skip
        header = parse_json(file.read(header_length), f"{what} {path} (safetensors header)", error)
    if not isinstance(header, dict):
        raise error(f"{what} {path} is not a safetensors file (its header is not a JSON object)")
    data_size = size - 8 - header_length
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        problem = _safetensors_entry_problem(entry, data_size)
        if problem:
            raise error(f"{what} {path}: tensor {quote(name)} {problem}")
        tensors[name] = (entry["dtype"], tuple(entry["shape"]))
        spans.append(tuple(entry["data_offsets"]))
    spans.sort()
    position = 0
    for begin, end in spans:
        if begin != position:
            raise error(f"{what} {path}: its tensors' data overlap or leave gaps (offset {begin}, expected {position})")
        position = end
    if position != data_size:
        raise error(f"{what} {path} holds {data_size:,} bytes of tensor data but its header describes {position:,} "
                    "(truncated or padded)")  # fmt: skip
    return tensors


def _safetensors_entry_problem(entry: Any, data_size: int) -> str | None:  # noqa: ANN401
    if not isinstance(entry, dict):
        return "has no dtype, shape and data_offsets"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_ITEM_SIZES:
        return f"has an unknown dtype {quote(dtype)}"
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape) or len(shape) > 8:
        return f"has an invalid shape {quote(shape)}"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size):  # fmt: skip
        return f"has data offsets {quote(offsets)} outside the file's {data_size:,} bytes of data"
    if offsets[1] - offsets[0] != math.prod(shape) * SAFETENSORS_ITEM_SIZES[dtype]:
        return f"claims shape {shape} of {dtype} but holds {offsets[1] - offsets[0]:,} bytes"
    return None


def load_safetensors(path: str | Path, expected: dict[str, tuple[int, ...]] | None = None, what: str = "weights file",
                     error: type[IIAEError] = DataError, device: str = "cpu") -> dict[str, Any]:  # fmt: skip
    """The tensors of a safetensors file, after :func:`safetensors_header`; with ``expected`` ({name: shape}),
    names and shapes must match it exactly (checked before a tensor is read). Every floating-point tensor must be
    finite. ``error`` names the file and the tensor."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    header = safetensors_header(path, what, error)
    if expected is not None:
        for name, shape in expected.items():
            if name not in header:
                raise error(f"{path}: tensor {quote(name)[1:-1]} is missing (a different model?)")
            if tuple(header[name][1]) != tuple(shape):
                raise error(f"{path}: tensor {quote(name)[1:-1]} has shape {tuple(header[name][1])}, the config "
                            f"expects {tuple(shape)}")  # fmt: skip
        unexpected = sorted(set(header) - set(expected))
        if unexpected:
            raise error(f"{path}: unexpected tensor {quote(unexpected[0])[1:-1]} (a different model?)")
    try:
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError, RuntimeError, ValueError) as failure:
        raise error(f"{what} {path} cannot be read as safetensors ({quote(str(failure))[1:-1]})") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise error(f"{what} {path}: tensor {quote(name)} holds NaN or Inf values")
    return tensors
