"""Caffe weight files (.caffemodel, .binaryproto): read and written as a stream, one layer at a time.

A caffemodel is one `NetParameter`: its layers (V2 `layer`, V1 `layers`, V0 `layers { layer }`) each carry their
parameter blobs. Protobuf would decode the whole file at once and hold the floats twice (the bytes and the parsed
message), so the top-level message and each layer's `blobs` are walked here by their wire format: every blob's
packed floats are read straight from the file into a numpy array, blobs of layers nobody asked for are skipped
with a seek, and the small rest of each layer (name, type, shape) is decoded with the protobuf messages of
`schema.py`. Peak memory is the weights kept plus a few kilobytes. Writing mirrors it: each layer's message is
serialized without its blobs, and the blobs' floats are written after it from the arrays themselves.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from google.protobuf.message import DecodeError

from sppnet.core.errors import BadData, InvalidInput
from sppnet.export.caffe import schema

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
FIX = "re-download or re-save the caffemodel (it must be the binary weights file Caffe writes)"


@dataclass(frozen=True)
class Blob:
    """One parameter blob: its shape as stored (`shape` dims, or legacy num/channels/height/width) and floats."""

    shape: tuple[int, ...]
    legacy: bool
    data: np.ndarray  # float32, 1-D

    def shape_text(self) -> str:
        return "x".join(map(str, self.shape)) if self.shape else "(no shape)"

    def matches(self, expected: Sequence[int]) -> bool:
        """Caffe's test: equal shapes, or for a legacy 4-D blob equal shapes padded with leading 1s to 4 axes."""
        if tuple(self.shape) == tuple(expected):
            return True
        if not self.legacy or len(expected) > 4:
            return False
        return tuple(self.shape) == (1,) * (4 - len(expected)) + tuple(expected)


@dataclass(frozen=True)
class CaffeModel:
    """The layers of a caffemodel in file order, with the blobs of those that were asked for."""

    path: str
    format: str  # "V2" (layer), "V1" (layers) or "V0" (layers { layer })
    names: tuple[str, ...]
    blobs: dict[str, list[Blob]]


class _Stream:
    """Protobuf wire-format reading from a file, bounded by the end of the message being read."""

    def __init__(self, f: BinaryIO, size: int, source: str) -> None:
        self.f, self.size, self.source = f, size, source

    @property
    def pos(self) -> int:
        return self.f.tell()

    def corrupt(self, problem: str) -> BadData:
        return BadData(f"{self.source} is not a readable caffemodel: {problem}; {FIX}")

    def byte(self, end: int) -> int:
        if self.pos >= end:
            raise self.truncated("a number", 1, end)
        return self.f.read(1)[0]

    def truncated(self, what: str, declared: int, end: int) -> BadData:
        where = "the file holds" if end >= self.size else "its message holds"
        return BadData(
            f"{self.source} is truncated or corrupt: {what} at byte {self.pos} declares {declared} bytes but "
            f"{where} only {max(end - self.pos, 0)} more; {FIX}"
        )

    def varint(self, end: int) -> int:
        result, shift = 0, 0
        while True:
            b = self.byte(end)
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise self.corrupt(f"a varint longer than 10 bytes at byte {self.pos}")

    def key(self, end: int) -> tuple[int, int]:
        start = self.pos
        key = self.varint(end)
        number, wire = key >> 3, key & 7
        if number == 0 or wire not in (VARINT, FIXED64, LEN, FIXED32):
            raise self.corrupt(f"protobuf field {number} of wire type {wire} at byte {start}")
        return number, wire

    def length(self, end: int, what: str) -> int:
        n = self.varint(end)
        if n > end - self.pos:
            raise self.truncated(what, n, end)
        return n

    def skip(self, wire: int, end: int, what: str) -> None:
        if wire == VARINT:
            self.varint(end)
            return
        n = {FIXED64: 8, FIXED32: 4}.get(wire)
        if n is None:
            n = self.length(end, what)
        elif n > end - self.pos:
            raise self.truncated(what, n, end)
        self.f.seek(n, os.SEEK_CUR)

    def raw(self, start: int) -> bytes:
        """The bytes from `start` to the current position (a field just skipped, with its key)."""
        end = self.pos
        self.f.seek(start)
        return self.f.read(end - start)

    def floats(self, n: int, dtype: str, what: str) -> np.ndarray:
        width = np.dtype(dtype).itemsize
        if n % width:
            raise self.corrupt(f"{what} holds {n} bytes, not a whole number of {width}-byte values")
        values = np.empty(n // width, dtype=dtype)
        if self.f.readinto(memoryview(values).cast("B")) != n:  # type: ignore[attr-defined]
            raise self.truncated(what, n, self.size)
        return values


def _parse(cls: Any, data: bytes, stream: _Stream, what: str) -> Any:
    try:
        return cls.FromString(bytes(data))
    except DecodeError as e:
        raise stream.corrupt(f"{what} does not decode ({e})") from None


def _read_blob(stream: _Stream, end: int, what: str) -> Blob:
    """One BlobProto ending at `end`: its floats (data, or double_data cast to float32) and shape."""
    meta, chunks, singles = bytearray(), [], []
    while stream.pos < end:
        start = stream.pos
        number, wire = stream.key(end)
        if number == schema.BLOB_DATA and wire == LEN:
            chunks.append(stream.floats(stream.length(end, what), "<f4", what))
        elif number == schema.BLOB_DOUBLE_DATA and wire == LEN:
            chunks.append(stream.floats(stream.length(end, what), "<f8", what).astype(np.float32))
        elif number == schema.BLOB_DATA and wire == FIXED32:  # an unpacked float, legal if unusual
            singles.append(stream.floats(4, "<f4", what))
        elif number in (schema.BLOB_DIFF, schema.BLOB_DOUBLE_DIFF):
            stream.skip(wire, end, what)
        else:
            stream.skip(wire, end, what)
            meta += stream.raw(start)
    proto = _parse(schema.BlobProto, meta, stream, what)
    parts = chunks + singles
    data = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.empty(0, np.float32)
    if proto.HasField("shape"):
        shape, legacy = tuple(int(d) for d in proto.shape.dim), False
    elif any(proto.HasField(k) for k in ("num", "channels", "height", "width")):
        shape, legacy = (proto.num, proto.channels, proto.height, proto.width), True
    else:
        shape, legacy = (data.size,), True
    count = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if count != data.size:
        raise BadData(
            f"{stream.source}: {what} has shape {'x'.join(map(str, shape))} ({count} values) but holds "
            f"{data.size} values; {FIX}"
        )
    return Blob(shape, legacy, data)


def _read_layer(
    stream: _Stream, end: int, layout: str, wanted: Collection[str] | None, index: int
) -> tuple[str, list[Blob] | None, str]:
    """One layer message: (name, its blobs or None when not wanted, layout) where layout is V2, V1 or V0."""
    name_field, blobs_field, cls = (1, schema.V2_BLOBS, schema.LayerParameter) if layout == "V2" else (
        4, schema.V1_BLOBS, schema.V1LayerParameter)
    meta, blobs, name, found = bytearray(), [], None, layout
    what = f"layer #{index + 1}"
    while stream.pos < end:
        start = stream.pos
        number, wire = stream.key(end)
        if number == blobs_field and wire == LEN:
            n = stream.length(end, f"a blob of {what}")
            if wanted is None or name is None or name in wanted:
                blobs.append(_read_blob(stream, stream.pos + n, f"blob {len(blobs)} of {_name(name, what)}"))
            else:
                stream.f.seek(n, os.SEEK_CUR)
        elif layout != "V2" and number == schema.V1_V0_LAYER and wire == LEN:  # V0: the layer nested in field 1
            n = stream.length(end, what)
            name, nested = _read_v0(stream, stream.pos + n, wanted, what)
            blobs += nested
            found = "V0"
        else:
            if number == name_field and wire == LEN:
                name = _decode(stream.f.read(stream.length(end, what)), stream, what)
            else:
                stream.skip(wire, end, what)
            meta += stream.raw(start)
    if found != "V0":
        name = _parse(cls, meta, stream, what).name
    if name is None:
        raise stream.corrupt(f"{what} has no name")
    keep = wanted is None or name in wanted
    return name, (blobs if keep else None), found


def _read_v0(stream: _Stream, end: int, wanted: Collection[str] | None, what: str) -> tuple[str, list[Blob]]:
    meta, blobs, name = bytearray(), [], None
    while stream.pos < end:
        start = stream.pos
        number, wire = stream.key(end)
        if number == schema.V0_BLOBS and wire == LEN:
            n = stream.length(end, f"a blob of {what}")
            if wanted is None or name is None or name in wanted:
                blobs.append(_read_blob(stream, stream.pos + n, f"blob {len(blobs)} of {_name(name, what)}"))
            else:
                stream.f.seek(n, os.SEEK_CUR)
        else:
            if number == 1 and wire == LEN:
                name = _decode(stream.f.read(stream.length(end, what)), stream, what)
            else:
                stream.skip(wire, end, what)
            meta += stream.raw(start)
    name = _parse(schema.V0LayerParameter, meta, stream, what).name
    return name, blobs


def _name(name: str | None, what: str) -> str:
    return f"layer {name!r}" if name else what


def _decode(data: bytes, stream: _Stream, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise stream.corrupt(f"the name of {what} is not text") from None


def _open(path: Path, what: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as e:
        raise InvalidInput(f"cannot read the {what} {path} ({e.strerror}): pass an existing, readable file") from None


def read_caffemodel(path: str | os.PathLike[str], wanted: Collection[str] | None = None) -> CaffeModel:
    """Every layer name of a caffemodel and the blobs of the `wanted` layers (all when None), in one pass.

    Where a name appears twice, the later layer's blobs win, as Caffe copies them in file order.
    """
    path = Path(path)
    with _open(path, "caffemodel") as f:
        size = os.fstat(f.fileno()).st_size
        stream = _Stream(f, size, str(path))
        names, blobs, layouts = [], {}, set()
        while stream.pos < size:
            number, wire = stream.key(size)
            if number in (schema.NET_LAYER, schema.NET_LAYERS) and wire == LEN:
                n = stream.length(size, f"layer #{len(names) + 1}")
                layout = "V2" if number == schema.NET_LAYER else "V1"
                name, layer_blobs, found = _read_layer(stream, stream.pos + n, layout, wanted, len(names))
                names.append(name)
                layouts.add(found)
                if layer_blobs is not None:
                    blobs[name] = layer_blobs
            else:
                stream.skip(wire, size, "a field of the net")
    if not names:
        raise BadData(f"{path} holds no layers: it is not a Caffe .caffemodel (or an empty one); {FIX}")
    if len(layouts) > 1 and "V2" in layouts:
        raise BadData(f"{path} mixes V2 `layer` and V1/V0 `layers` entries; {FIX}")
    fmt = "V2" if "V2" in layouts else ("V0" if "V0" in layouts else "V1")
    return CaffeModel(str(path), fmt, tuple(names), blobs)


def read_blobproto(path: str | os.PathLike[str]) -> Blob:
    """A single BlobProto file, such as Caffe's mean.binaryproto."""
    path = Path(path)
    with _open(path, "mean file") as f:
        size = os.fstat(f.fileno()).st_size
        stream = _Stream(f, size, str(path))
        blob = _read_blob(stream, size, "the blob")
    if blob.data.size == 0:
        raise BadData(f"{path} holds no values: it is not a Caffe .binaryproto mean; pass the mean file Caffe wrote")
    return blob


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def write_caffemodel(
    path: str | os.PathLike[str], name: str, layers: Iterable[tuple[Any, Sequence[np.ndarray]]]
) -> None:
    """Write a V2 caffemodel atomically: each (LayerParameter without blobs, its arrays) in order, the arrays'
    floats streamed from memory as little-endian float32 with their shapes."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(_key(1, LEN) + _varint(len(name.encode())) + name.encode())
            for message, arrays in layers:
                head = message.SerializeToString()
                parts = []
                for array in arrays:
                    data = np.ascontiguousarray(array, dtype="<f4")
                    shape = schema.BlobShape(dim=list(data.shape)).SerializeToString()
                    meta = _key(7, LEN) + _varint(len(shape)) + shape + _key(schema.BLOB_DATA, LEN)
                    meta += _varint(data.nbytes)
                    parts.append((meta, data))
                blob_sizes = [len(meta) + data.nbytes for meta, data in parts]
                size = len(head) + sum(len(_key(7, LEN) + _varint(n)) + n for n in blob_sizes)
                f.write(_key(schema.NET_LAYER, LEN) + _varint(size) + head)
                for (meta, data), n in zip(parts, blob_sizes, strict=True):
                    f.write(_key(schema.V2_BLOBS, LEN) + _varint(n) + meta)
                    f.write(memoryview(data.reshape(-1)).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
