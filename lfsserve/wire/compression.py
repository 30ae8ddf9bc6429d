"""Compression of v1 stream responses: media type and engine negotiation, incremental compressors.

A client that lists `0.2` in X-HgProto-1 gets `application/mercurial-0.2`: one length byte, the
engine name, then the stream compressed with the first engine in the SERVER's order that the
client lists in `comp=` (a client without `comp=` is taken to accept zlib and none). Answers that
gain nothing from compression (stream clones) use `none`. Without 0.2, or without a shared
engine, the answer is `application/mercurial-0.1`: a bare zlib stream.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import zstandard

from .protocol import ClientProto

__all__ = ["MEDIA_01", "MEDIA_02", "Choice", "compress_stream", "negotiate"]

MEDIA_01 = "application/mercurial-0.1"
MEDIA_02 = "application/mercurial-0.2"
# What a 0.2 client without a comp= token is taken to support.
_DEFAULT_CLIENT_ENGINES = ("zlib", "none")


@dataclass(frozen=True)
class Choice:
    media_type: str
    engine: str           # "zstd" | "zlib" | "none"
    prefix: bytes         # bytes before the compressed stream (the 0.2 engine header)


def negotiate(client: ClientProto, server_engines: Iterable[str], *, prefer_uncompressed: bool = False) -> Choice:
    if client.accepts_02:
        if prefer_uncompressed:
            return Choice(MEDIA_02, "none", b"\x04none")
        offered = client.compression or _DEFAULT_CLIENT_ENGINES
        for engine in server_engines:
            if engine in offered:
                name = engine.encode("ascii")
                return Choice(MEDIA_02, engine, bytes([len(name)]) + name)
    return Choice(MEDIA_01, "zlib", b"")


def compress_stream(chunks: Iterable[bytes], engine: str, *, zstd_level: int = 3, zlib_level: int = 6,
                    min_output: int = 64 * 1024) -> Iterator[bytes]:
    """Compress `chunks` incrementally with `engine`, yielding pieces of about `min_output` bytes
    (fewer, larger writes are cheaper for the event loop) and flushing at the end."""
    if engine == "none":
        compress, flush = (lambda b: b), (lambda: b"")
    elif engine == "zstd":
        cobj = zstandard.ZstdCompressor(level=zstd_level).compressobj()
        compress, flush = cobj.compress, cobj.flush
    elif engine == "zlib":
        zobj = zlib.compressobj(zlib_level)
        compress, flush = zobj.compress, zobj.flush
    else:
        raise ValueError(f"unknown compression engine {engine!r}")
    buf = bytearray()
    for chunk in chunks:
        out = compress(chunk)
        if out:
            if not buf and len(out) >= min_output:
                yield out
                continue
            buf += out
            if len(buf) >= min_output:
                yield bytes(buf)
                buf.clear()
    buf += flush()
    if buf:
        yield bytes(buf)
