"""Stream content encodings of wire protocol v2: identity, zlib and zstd-8mb.

An encoding applies to a whole server stream: one compression context for every encoded frame
of the stream, flushed (zlib Z_SYNC_FLUSH, zstd block flush) at the end of each command response
so the receiver can decode everything sent so far, never reset in between. The receiver feeds
every encoded payload of the stream, in order, to one decompressor.

The server picks the first encoding in ITS order that the client listed (servers have more to
lose from a poor choice); without sender settings a client is assumed to know only identity.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from typing import Protocol

import zstandard

__all__ = ["DEFAULT_ORDER", "Decoder", "Encoder", "choose", "make_decoder", "make_encoder", "order_from_config"]

# Best first. identity must always be available: every peer supports it.
DEFAULT_ORDER: tuple[bytes, ...] = (b"zstd-8mb", b"zlib", b"identity")

ZSTD_LEVEL = 3
ZSTD_MAX_WINDOW = 8 * 1024 * 1024


class Encoder(Protocol):
    name: bytes

    def encode(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class Decoder(Protocol):
    def decode(self, data: bytes) -> bytes: ...


class IdentityEncoder:
    name = b"identity"

    def encode(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class ZlibEncoder:
    name = b"zlib"

    def __init__(self) -> None:
        self._c = zlib.compressobj()

    def encode(self, data: bytes) -> bytes:
        return self._c.compress(data)

    def flush(self) -> bytes:
        return self._c.flush(zlib.Z_SYNC_FLUSH)


class ZstdEncoder:
    name = b"zstd-8mb"

    def __init__(self) -> None:
        # Level 3 uses a 2 MiB window, inside the 8 MiB the profile lets a receiver insist on.
        self._c = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()

    def encode(self, data: bytes) -> bytes:
        return self._c.compress(data)

    def flush(self) -> bytes:
        return self._c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


_ENCODERS: dict[bytes, Callable[[], Encoder]] = {
    b"identity": IdentityEncoder, b"zlib": ZlibEncoder, b"zstd-8mb": ZstdEncoder}


class _IdentityDecoder:
    def decode(self, data: bytes) -> bytes:
        return data


class _ZlibDecoder:
    def __init__(self) -> None:
        self._d = zlib.decompressobj()

    def decode(self, data: bytes) -> bytes:
        return self._d.decompress(data)


class _ZstdDecoder:
    def __init__(self) -> None:
        self._d = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).decompressobj()

    def decode(self, data: bytes) -> bytes:
        return self._d.decompress(data)


_DECODERS: dict[bytes, Callable[[], Decoder]] = {
    b"identity": _IdentityDecoder, b"zlib": _ZlibDecoder, b"zstd-8mb": _ZstdDecoder}


def make_encoder(name: bytes) -> Encoder:
    return _ENCODERS[name]()


def make_decoder(name: bytes) -> Decoder:
    """A decoder for a stream encoded with `name` (for clients and tests)."""
    try:
        return _DECODERS[name]()
    except KeyError:
        raise ValueError(f"unknown stream encoding {name!r}") from None


def order_from_config(engines: Iterable[str]) -> tuple[bytes, ...]:
    """The server's order from `hg.compression` (zstd, zlib, none); identity always comes last.

    The same setting that orders v1's mercurial-0.2 compression decides v2's stream encodings, so
    an operator who turns zstd off (say, to spare CPU) turns it off for both.
    """
    names = {"zstd": b"zstd-8mb", "zlib": b"zlib", "none": b"identity"}
    order = [names[e] for e in engines if e in names]
    order = [n for n in order if n != b"identity"] + [b"identity"]
    return tuple(dict.fromkeys(order))


def choose(client: Iterable[bytes] | None, server_order: Iterable[bytes] = DEFAULT_ORDER) -> bytes:
    """The first of the server's encodings that the client listed; identity when nothing matches."""
    offered = set(client) if client is not None else {b"identity"}
    for name in server_order:
        if name in offered and name in _ENCODERS:
            return name
    return b"identity"
