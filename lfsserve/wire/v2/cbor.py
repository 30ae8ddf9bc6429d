"""CBOR as Mercurial's wire protocol v2 speaks it: a strict subset, encoded and decoded with cbor2.

Mercurial's own decoder accepts only unsigned/negative integers, byte strings (definite or
indefinite length), definite-length arrays and maps, tag 258 (a finite set) around an array, and
true/false/null. Everything we send stays inside that subset: strings are byte strings, maps and
sets are emitted sorted (cbor2's canonical mode), and large payloads go out as indefinite-length
byte strings so they never need to be held whole.

Client input goes through `decode`, which first walks the raw bytes and refuses anything outside
the subset (text strings, floats, undefined, indefinite arrays/maps, any tag but 258, nesting
deeper than MAX_DEPTH, truncated items) and only then lets cbor2 build the objects. cbor2 on its
own accepts far more: shared references that make cyclic objects, bignum and date tags, text.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Any

import cbor2

__all__ = [
    "MAX_DEPTH",
    "CBORError",
    "decode",
    "decode_sequence",
    "encode",
    "encode_bytes_header",
    "encode_indefinite_bytes",
]

MAX_DEPTH = 32
_SET_TAG = 258


class CBORError(ValueError):
    """Input is not CBOR in the subset the protocol allows; the message says what is wrong."""


def encode(value: Any) -> bytes:
    """One value as CBOR: maps and sets sorted, integers in their shortest form."""
    return cbor2.dumps(value, canonical=True)


def encode_bytes_header(length: int) -> bytes:
    """The head of a definite-length byte string of `length` bytes (the bytes themselves follow)."""
    if length < 24:
        return bytes((0x40 | length,))
    if length < 0x100:
        return struct.pack(">BB", 0x58, length)
    if length < 0x10000:
        return struct.pack(">BH", 0x59, length)
    if length < 0x100000000:
        return struct.pack(">BI", 0x5A, length)
    return struct.pack(">BQ", 0x5B, length)


def encode_indefinite_bytes(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """An indefinite-length byte string made of `chunks`, as pieces to send one after another."""
    yield b"\x5f"
    for chunk in chunks:
        if chunk:
            yield encode_bytes_header(len(chunk))
            yield chunk
    yield b"\xff"


def _head(data: memoryview, pos: int) -> tuple[int, int, int | None, int]:
    """(major type, additional info, argument or None for indefinite, position after the head)."""
    if pos >= len(data):
        raise CBORError("truncated CBOR data")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if info < 24:
        return major, info, info, pos
    if info in (24, 25, 26, 27):
        size = 1 << (info - 24)
        if pos + size > len(data):
            raise CBORError("truncated CBOR data")
        return major, info, int.from_bytes(data[pos:pos + size], "big"), pos + size
    if info == 31:
        return major, info, None, pos
    raise CBORError(f"malformed CBOR: reserved additional information {info}")


def _scan(data: memoryview, pos: int, depth: int, hashable: bool = False) -> int:
    """Check the item at `pos` is in the allowed subset; return the position after it."""
    if depth > MAX_DEPTH:
        raise CBORError(f"CBOR nested deeper than {MAX_DEPTH} levels")
    major, info, arg, pos = _head(data, pos)
    if major in (0, 1):
        if arg is None:
            raise CBORError("malformed CBOR: integer without a value")
        return pos
    if major == 2:
        if arg is not None:
            end = pos + arg
            if end > len(data):
                raise CBORError("truncated CBOR byte string")
            return end
        while True:  # indefinite length: definite byte-string chunks up to the break
            if pos >= len(data):
                raise CBORError("truncated CBOR byte string")
            if data[pos] == 0xFF:
                return pos + 1
            cmajor, _, carg, pos = _head(data, pos)
            if cmajor != 2 or carg is None:
                raise CBORError("malformed CBOR: indefinite byte string chunk is not a definite byte string")
            pos += carg
            if pos > len(data):
                raise CBORError("truncated CBOR byte string")
    if major == 3:
        raise CBORError("CBOR text strings are not allowed (use byte strings)")
    if hashable:
        raise CBORError("map keys and set members must be byte strings or integers")
    if major in (4, 5):
        kind = "array" if major == 4 else "map"
        if arg is None:
            raise CBORError(f"indefinite-length CBOR {kind}s are not allowed")
        for _ in range(arg):
            if major == 5:
                pos = _scan(data, pos, depth + 1, hashable=True)
            pos = _scan(data, pos, depth + 1)
        return pos
    if major == 6:
        if arg != _SET_TAG:
            raise CBORError(f"CBOR tag {arg} is not allowed (only 258, a set)")
        smajor, _, count, pos = _head(data, pos)
        if smajor != 4 or count is None:
            raise CBORError("CBOR tag 258 must wrap a definite-length array")
        for _ in range(count):
            pos = _scan(data, pos, depth + 1, hashable=True)
        return pos
    # major 7: only false, true, null
    if info in (20, 21, 22):
        return pos
    if info in (25, 26, 27):
        raise CBORError("CBOR floating-point numbers are not allowed")
    if info == 31:
        raise CBORError("unexpected CBOR break")
    raise CBORError(f"CBOR simple value {arg} is not allowed")


def _load(data: memoryview, start: int, end: int) -> Any:
    try:
        return cbor2.loads(bytes(data[start:end]))
    except (cbor2.CBORDecodeError, ValueError, TypeError) as exc:  # the scan vets input; belt and braces
        raise CBORError(f"invalid CBOR: {exc}") from None


def decode(data: bytes | bytearray | memoryview) -> Any:
    """Exactly one value; raises CBORError on anything outside the subset or trailing bytes."""
    view = memoryview(data)
    if not len(view):
        raise CBORError("empty CBOR data")
    end = _scan(view, 0, 0)
    if end != len(view):
        raise CBORError(f"{len(view) - end} unexpected bytes after the CBOR value")
    return _load(view, 0, end)


def decode_sequence(data: bytes | bytearray | memoryview) -> list[Any]:
    """A CBOR sequence (values one after another), each checked like `decode`."""
    view = memoryview(data)
    out = []
    pos = 0
    while pos < len(view):
        end = _scan(view, pos, 0)
        out.append(_load(view, pos, end))
        pos = end
    return out
