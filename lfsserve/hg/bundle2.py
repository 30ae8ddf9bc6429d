"""bundle2: Mercurial's container of typed parts (`hg help internals.bundle2`), read and written as streams.

Pure format code: no HTTP, no repository. A bundle is the magic `HG20`, a block of stream
parameters, then parts (a header, then a payload cut into int32-sized chunks) until a header size
of 0. Also here: the binary payload formats of the parts lfsserve sends or receives (phase-heads,
bookmarks, check:heads, hgtagsfnodes, listkeys, stream2) and the capability blob.

Readers never hold more than one chunk of a payload, and never trust a size from the wire to
allocate memory: payloads are read in bounded pieces straight from the underlying file.
"""

from __future__ import annotations

import bz2
import struct
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import zstandard

__all__ = [
    "MAGIC",
    "WDIRID",
    "Bundle2Error",
    "BundleReader",
    "InPart",
    "LimitedReader",
    "OutPart",
    "SizeLimitExceeded",
    "UnsupportedContent",
    "decode_bookmarks",
    "decode_caps",
    "decode_listkeys",
    "decode_nodes",
    "decode_phase_heads",
    "decompressing_reader",
    "encode_bookmarks",
    "encode_bundle",
    "encode_caps",
    "encode_listkeys",
    "encode_phase_heads",
    "encode_tagsfnodes",
    "read_uvarint",
    "stream2_entry_header",
    "uvarint",
]

MAGIC = b"HG20"
# "working directory id": in bookmark payloads it means "no such bookmark" (not the null node).
WDIRID = b"\xff" * 20
PREFERRED_CHUNK = 32 * 1024  # payload chunk size on output
INTERRUPT = -1               # payload chunk size announcing an out-of-band part

_int32 = struct.Struct(">i")
_uint32 = struct.Struct(">I")
_phase_entry = struct.Struct(">i20s")
_bookmark_entry = struct.Struct(">20sH")

# Sanity bounds for sizes read from the wire (a part header holds at most 255 params of 255 bytes).
MAX_STREAM_PARAMS = 64 * 1024
MAX_PART_HEADER = 256 * 1024


class Bundle2Error(ValueError):
    """The bundle is malformed or truncated; the message says where."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class SizeLimitExceeded(Bundle2Error):
    """The bundle unpacks to more than a configured limit (a revision, or the whole push)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def size_text(n: int) -> str:
    """A byte count as people read it: 512 MiB, 1.5 GiB, 300 bytes."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n} bytes"


class LimitedReader:
    """A reader over `fp` that refuses, before reading, to go past `max_total` bytes in all
    (0: no limit) or to read more than `max_read` bytes in one call (0: no limit).

    The changegroup reader asks for one whole chunk (a revision's delta) per call, with the length
    the chunk's header claims: `max_read` thus bounds the revision a push can make the server hold,
    and refuses a hostile length before anything is allocated.
    """

    def __init__(self, fp: BinaryIO, *, max_total: int = 0, total_setting: str = "",
                 max_read: int = 0, read_setting: str = ""):
        self._fp = fp
        self.max_total = max_total
        self.max_read = max_read
        self._total_setting = total_setting
        self._read_setting = read_setting
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        if self.max_read and (n < 0 or n > self.max_read):
            raise SizeLimitExceeded(
                f"a revision of {size_text(n) if n >= 0 else 'unbounded size'} is larger than this "
                f"server's limit of {size_text(self.max_read)} ({self._read_setting})",
                hint="track large files with the lfs extension, or ask the server's administrator")
        if self.max_total:
            room = self.max_total - self.count
            data = self._fp.read(room + 1 if n < 0 else min(n, room + 1))
        else:
            data = self._fp.read(n)
        self.count += len(data)
        if self.max_total and self.count > self.max_total:
            raise SizeLimitExceeded(
                f"push unpacks to more than this server's limit of {size_text(self.max_total)} "
                f"({self._total_setting})", hint="push fewer changesets at a time")
        return data


class UnsupportedContent(Bundle2Error):
    """A mandatory part type or parameter that the receiver does not know."""

    def __init__(self, parttype: bytes | None = None, params: Sequence[bytes] = ()):
        self.parttype = parttype
        self.params = tuple(params)
        what = []
        if parttype is not None:
            what.append(f"part type {parttype.decode('latin-1')!r}")
        if params:
            what.append("parameters " + ", ".join(p.decode("latin-1") for p in params))
        super().__init__("unsupported bundle2 content: " + "; ".join(what))


def is_mandatory(name: bytes) -> bool:
    """A part type with any upper-case letter is mandatory (stream params: a leading capital)."""
    return name != name.lower()


# -- capabilities ----------------------------------------------------------------------------------

def encode_caps(caps: Mapping[str, Sequence[str]]) -> bytes:
    """The capability blob: one `name[=v1,v2]` line per capability, names and values url-quoted."""
    lines = []
    for name in sorted(caps):
        values = caps[name]
        line = urllib.parse.quote(name)
        if values:
            line += "=" + ",".join(urllib.parse.quote(v) for v in values)
        lines.append(line)
    return "\n".join(lines).encode("ascii")


def decode_caps(blob: bytes) -> dict[str, list[str]]:
    caps: dict[str, list[str]] = {}
    for line in blob.decode("latin-1").splitlines():
        if not line:
            continue
        name, sep, values = line.partition("=")
        vals = [urllib.parse.unquote(v) for v in values.split(",")] if sep else []
        caps[urllib.parse.unquote(name)] = vals
    return caps


# -- writing ---------------------------------------------------------------------------------------

@dataclass
class OutPart:
    """A part to send. `data` is bytes or an iterable of bytes (consumed lazily, once)."""

    type: bytes
    mandatory_params: list[tuple[bytes, bytes]] = field(default_factory=list)
    advisory_params: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: bytes | Iterable[bytes] = b""


def part_header(ptype: bytes, part_id: int, mandatory: Sequence[tuple[bytes, bytes]],
                advisory: Sequence[tuple[bytes, bytes]]) -> bytes:
    if not 0 < len(ptype) < 256:
        raise ValueError(f"bad part type {ptype!r}")
    if len(mandatory) > 255 or len(advisory) > 255:
        raise ValueError("too many part parameters")
    out = [bytes([len(ptype)]), ptype, _uint32.pack(part_id), bytes([len(mandatory), len(advisory)])]
    sizes = bytearray()
    for key, value in (*mandatory, *advisory):
        if len(key) > 255 or len(value) > 255:
            raise ValueError(f"part parameter {key!r} too long")
        sizes += bytes([len(key), len(value)])
    out.append(bytes(sizes))
    for key, value in (*mandatory, *advisory):
        out.append(key)
        out.append(value)
    header = b"".join(out)
    return _int32.pack(len(header)) + header


def _rechunk(data: bytes | Iterable[bytes], size: int) -> Iterator[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        for i in range(0, len(data), size):
            yield bytes(data[i:i + size])
        return
    buf = bytearray()
    for piece in data:
        if not piece:
            continue
        if not buf and len(piece) >= size:
            yield bytes(piece)
            continue
        buf += piece
        if len(buf) >= size:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


def _error_message(exc: BaseException) -> tuple[bytes, bytes | None]:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    hint = getattr(exc, "hint", None)
    enc = lambda s: s.encode("utf-8", "replace")[:255]  # noqa: E731 - param values are <= 255 bytes
    return enc(message), (enc(hint) if hint else None)


def abort_part(exc: BaseException) -> OutPart:
    message, hint = _error_message(exc)
    params = [(b"message", message)]
    if hint:
        params.append((b"hint", hint))
    return OutPart(b"ERROR:ABORT", params)


def encode_bundle(parts: Iterable[OutPart], *, chunk_size: int = PREFERRED_CHUNK,
                  interrupt_on: tuple[type[BaseException], ...] = (),
                  on_interrupt: Callable[[BaseException], None] | None = None) -> Iterator[bytes]:
    """The bytes of a bundle2 stream (no stream parameters) holding `parts`, produced lazily.

    If producing a part's payload, or the next part, raises one of `interrupt_on`, the receiver is
    told through bundle2's own means (an out-of-band `error:abort` inside the payload, or an
    `ERROR:ABORT` part between parts), the stream is closed properly, and `on_interrupt(exc)` is
    called; anything else propagates.
    """
    yield MAGIC + _int32.pack(0)
    part_id = 0
    it = iter(parts)
    while True:
        try:
            part = next(it)
        except StopIteration:
            break
        except interrupt_on as exc:
            yield part_header(*_split(abort_part(exc), part_id))
            yield _int32.pack(0)
            if on_interrupt:
                on_interrupt(exc)
            break
        yield part_header(*_split(part, part_id))
        part_id += 1
        try:
            for chunk in _rechunk(part.data, chunk_size):
                yield _int32.pack(len(chunk)) + chunk
        except interrupt_on as exc:
            err = abort_part(exc)
            yield _int32.pack(INTERRUPT)
            yield part_header(err.type.lower(), 0, [], err.mandatory_params)
            yield _int32.pack(0)   # end of the out-of-band part's payload
            yield _int32.pack(0)   # end of the interrupted part's payload
            yield _int32.pack(0)   # end of stream
            if on_interrupt:
                on_interrupt(exc)
            return
        yield _int32.pack(0)
    yield _int32.pack(0)


def _split(part: OutPart, part_id: int):
    return part.type, part_id, part.mandatory_params, part.advisory_params


def encode_parts(parts: Iterable[OutPart]) -> bytes:
    """A whole small bundle (replies, tests) as bytes."""
    return b"".join(encode_bundle(parts))


# -- reading ---------------------------------------------------------------------------------------

def _read_exact(fp: BinaryIO, n: int, what: str) -> bytes:
    data = fp.read(n)
    if len(data) != n:
        raise Bundle2Error(f"bundle2 stream ended unexpectedly in {what} "
                           f"(got {len(data)} bytes, expected {n})")
    return data


def _read_int32(fp: BinaryIO, what: str) -> int:
    return _int32.unpack(_read_exact(fp, 4, what))[0]


class _InflateReader:
    """A file-like reader that inflates a zlib or bz2 stream from `fp` as it is read, in bounded steps."""

    STEP = 1024 * 1024

    def __init__(self, fp: BinaryIO, decompressor):
        self._fp = fp
        self._d = decompressor
        self._pending = b""   # compressed input not yet handed to the decompressor
        self._buf = bytearray()

    def _fill(self) -> bool:
        d = self._d
        if d.eof:
            return False
        if not self._pending and getattr(d, "needs_input", True):
            self._pending = self._fp.read(64 * 1024)
            if not self._pending:
                raise Bundle2Error("compressed bundle data ends unexpectedly (truncated)")
        try:
            out = d.decompress(self._pending, self.STEP)
        except (zlib.error, OSError, EOFError, ValueError) as exc:
            raise Bundle2Error(f"corrupt compressed bundle data: {exc}")
        # zlib keeps input it could not use yet in unconsumed_tail; bz2 keeps it internally.
        self._pending = getattr(d, "unconsumed_tail", b"")
        self._buf += out
        return True

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self._buf) < n) and self._fill():
            pass
        if n < 0 or n >= len(self._buf):
            out, self._buf = bytes(self._buf), bytearray()
        else:
            with memoryview(self._buf) as view:
                out = bytes(view[:n])  # one copy (a bytearray slice would make two)
            del self._buf[:n]
        return out


class _ZstdReader:
    """Decompresses zstd as it is read: output in steps of at most STEP bytes (the decompressor
    allocates what it is asked for), compressed input in pieces of at most READ_SIZE."""

    STEP = 1024 * 1024
    READ_SIZE = 64 * 1024

    def __init__(self, fp: BinaryIO):
        # max_window_size bounds the decoder's own buffer whatever a frame header claims
        self._r = zstandard.ZstdDecompressor(max_window_size=1 << 27).stream_reader(
            fp, read_size=self.READ_SIZE, read_across_frames=True)

    def read(self, n: int = -1) -> bytes:
        try:
            chunks = []
            got = 0
            while n < 0 or got < n:
                c = self._r.read(self.STEP if n < 0 else min(self.STEP, n - got))
                if not c:
                    break
                chunks.append(c)
                got += len(c)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except zstandard.ZstdError as exc:
            raise Bundle2Error(f"corrupt zstd bundle data: {exc}")


def decompressing_reader(fp: BinaryIO, algo: str) -> BinaryIO:
    """Wrap `fp` to decompress as it is read. algo: UN, GZ (zlib), BZ (bz2 with magic),
    _truncatedBZ (bz2 whose `BZ` magic was eaten by a bundle1 header), ZS (zstd)."""
    if algo == "UN":
        return fp
    if algo == "GZ":
        return _InflateReader(fp, zlib.decompressobj())  # type: ignore[return-value]
    if algo == "BZ":
        return _InflateReader(fp, bz2.BZ2Decompressor())  # type: ignore[return-value]
    if algo == "_truncatedBZ":
        d = bz2.BZ2Decompressor()
        d.decompress(b"BZ")
        return _InflateReader(fp, d)  # type: ignore[return-value]
    if algo == "ZS":
        return _ZstdReader(fp)  # type: ignore[return-value]
    raise UnsupportedContent(params=[b"Compression=" + algo.encode("latin-1")])


class InPart:
    """A part being read. Its payload is a file-like `read(n)`; it must be read (or `consume()`d)
    before the next part of the bundle is reached; BundleReader.parts() does that."""

    def __init__(self, fp: BinaryIO, header: bytes):
        self._fp = fp
        self._left = 0      # bytes left in the current payload chunk
        self._done = False
        try:
            tlen = header[0]
            self.type: bytes = header[1:1 + tlen]
            if len(self.type) != tlen or not tlen:
                raise IndexError
            pos = 1 + tlen
            (self.id,) = _uint32.unpack_from(header, pos)
            pos += 4
            nman, nadv = header[pos], header[pos + 1]
            pos += 2
            sizes = header[pos:pos + 2 * (nman + nadv)]
            if len(sizes) != 2 * (nman + nadv):
                raise IndexError
            pos += len(sizes)
            params = []
            for i in range(nman + nadv):
                k = header[pos:pos + sizes[2 * i]]
                pos += sizes[2 * i]
                v = header[pos:pos + sizes[2 * i + 1]]
                pos += sizes[2 * i + 1]
                params.append((k, v))
            if pos != len(header):
                raise IndexError
        except (IndexError, struct.error):
            raise Bundle2Error("malformed bundle2 part header")
        self.mandatory = is_mandatory(self.type)
        self.mandatory_params: dict[bytes, bytes] = dict(params[:nman])
        self.advisory_params: dict[bytes, bytes] = dict(params[nman:])
        self.params: dict[bytes, bytes] = {**self.advisory_params, **self.mandatory_params}

    @property
    def name(self) -> bytes:
        """The part type in lower case (the type's case only says whether it is mandatory)."""
        return self.type.lower()

    def _next_chunk(self) -> bool:
        while True:
            size = _read_int32(self._fp, f"payload of part {self.type!r}")
            if size == INTERRUPT:
                _read_interruption(self._fp)
                continue
            if size < 0:
                raise Bundle2Error(f"negative payload chunk size {size} in part {self.type!r}")
            if size == 0:
                self._done = True
                return False
            self._left = size
            return True

    def read(self, n: int = -1) -> bytes:
        first = b""                    # a read within one payload chunk (the usual case): no copy
        buf: bytearray | None = None   # a read across chunks
        got = 0
        while (n < 0 or got < n) and not self._done:
            if not self._left and not self._next_chunk():
                break
            want = self._left if n < 0 else min(self._left, n - got)
            data = self._fp.read(want)
            if len(data) != want:
                raise Bundle2Error(f"bundle2 stream ended unexpectedly in the payload of part {self.type!r}")
            self._left -= want
            got += want
            if not first:
                first = data
            else:
                # Payload chunks are small (hg sends 32 KiB): a big read grows one buffer, freed
                # as a whole, rather than a list of thousands of pieces whose memory the allocator
                # of an executor thread keeps after they are joined (measured: 3x instead of 2x).
                if buf is None:
                    buf = bytearray(first)
                buf += data
        return first if buf is None else bytes(buf)

    def read_all(self, limit: int) -> bytes:
        """The whole payload of a part that is small by nature; more than `limit` bytes is an error."""
        data = self.read(limit + 1)
        if len(data) > limit:
            raise Bundle2Error(f"payload of part {self.type.decode('latin-1')!r} is larger than {limit} bytes")
        return data

    def consume(self) -> None:
        while not self._done:
            if self._left:
                skip = min(self._left, 1024 * 1024)
                if len(self._fp.read(skip)) != skip:
                    raise Bundle2Error("bundle2 stream ended unexpectedly while skipping a part")
                self._left -= skip
            elif not self._next_chunk():
                break


class BundleInterrupted(Bundle2Error):
    """The sender interrupted its bundle with an out-of-band error part."""


def _read_interruption(fp: BinaryIO) -> None:
    size = _read_int32(fp, "interruption")
    if size == 0:
        return
    if not 0 < size <= MAX_PART_HEADER:
        raise Bundle2Error(f"bad part header size {size} in an interruption")
    part = InPart(fp, _read_exact(fp, size, "interruption part header"))
    message = part.params.get(b"message", b"").decode("utf-8", "replace")
    part.consume()
    if part.name == b"error:abort":
        raise BundleInterrupted(f"the sender aborted: {message or 'no message'}")
    raise BundleInterrupted(f"the sender interrupted its bundle with a {part.name.decode('latin-1')!r} part")


class BundleReader:
    """Reads a bundle2 stream from a binary file object positioned after the `HG20` magic."""

    KNOWN_STREAM_PARAMS = frozenset({b"compression"})

    def __init__(self, fp: BinaryIO, *, max_unpacked: int = 0, unpacked_setting: str = ""):
        """`max_unpacked`: most bytes the stream may hold after decompression (0: no limit)."""
        size = _read_int32(fp, "stream parameters size")
        if not 0 <= size <= MAX_STREAM_PARAMS:
            raise Bundle2Error(f"bad bundle2 stream parameters size {size}")
        self.params: dict[bytes, bytes] = {}
        if size:
            for item in _read_exact(fp, size, "stream parameters").split(b" "):
                if not item:
                    raise Bundle2Error("empty bundle2 stream parameter")
                name, _, value = item.partition(b"=")
                name = urllib.parse.unquote_to_bytes(name)
                value = urllib.parse.unquote_to_bytes(value)
                if not name or not name[:1].isalpha():
                    raise Bundle2Error(f"invalid bundle2 stream parameter name {name!r}")
                if name.lower() not in self.KNOWN_STREAM_PARAMS and name[:1].isupper():
                    raise UnsupportedContent(params=[name])
                self.params[name] = value
        algo = self.params.get(b"Compression", self.params.get(b"compression"))
        self._fp = decompressing_reader(fp, algo.decode("latin-1")) if algo else fp
        if max_unpacked:
            self._fp = LimitedReader(self._fp, max_total=max_unpacked,  # type: ignore[assignment]
                                     total_setting=unpacked_setting)

    def parts(self) -> Iterator[InPart]:
        """Each part in turn; a part the caller left unread is skipped before the next."""
        while True:
            size = _read_int32(self._fp, "part header size")
            if size == 0:
                return
            if size == INTERRUPT:
                _read_interruption(self._fp)
                continue
            if not 0 < size <= MAX_PART_HEADER:
                raise Bundle2Error(f"bad bundle2 part header size {size}")
            part = InPart(self._fp, _read_exact(self._fp, size, "part header"))
            yield part
            part.consume()


# -- part payloads ---------------------------------------------------------------------------------

def encode_phase_heads(mapping: Mapping[int, Iterable[bytes]]) -> bytes:
    """`phase-heads` / `check:phases` payload: (phase, node) pairs, phases ascending."""
    return b"".join(_phase_entry.pack(phase, node)
                    for phase in sorted(mapping) for node in mapping[phase])


def decode_phase_heads(data: bytes) -> list[tuple[int, bytes]]:
    if len(data) % _phase_entry.size:
        raise Bundle2Error("bad phase-heads payload (not a multiple of 24 bytes)")
    out = []
    for phase, node in _phase_entry.iter_unpack(data):
        if phase not in (0, 1, 2):
            raise Bundle2Error(f"bad phase {phase} in a phase-heads payload")
        out.append((phase, node))
    return out


def encode_bookmarks(marks: Iterable[tuple[bytes, bytes | None]]) -> bytes:
    """`bookmarks` / `check:bookmarks` payload; None (missing) is sent as WDIRID."""
    out = []
    for name, node in marks:
        out.append(_bookmark_entry.pack(WDIRID if node is None else node, len(name)))
        out.append(name)
    return b"".join(out)


def decode_bookmarks(data: bytes) -> list[tuple[bytes, bytes | None]]:
    out = []
    pos = 0
    size = _bookmark_entry.size
    while pos < len(data):
        if pos + size > len(data):
            raise Bundle2Error("bad bookmarks payload (truncated entry)")
        node, length = _bookmark_entry.unpack_from(data, pos)
        pos += size
        name = data[pos:pos + length]
        if len(name) != length or not name:
            raise Bundle2Error("bad bookmarks payload (truncated or empty name)")
        pos += length
        out.append((name, None if node == WDIRID else node))
    return out


def decode_nodes(data: bytes) -> list[bytes]:
    """`check:heads` / `check:updated-heads` payload: concatenated 20-byte nodes."""
    if len(data) % 20:
        raise Bundle2Error("bad heads payload (not a multiple of 20 bytes)")
    return [data[i:i + 20] for i in range(0, len(data), 20)]


def encode_listkeys(keys: Mapping[bytes, bytes]) -> bytes:
    """pushkey encoding: `key\\tvalue` lines joined by newlines, no trailing newline."""
    return b"\n".join(b"%s\t%s" % (k, v) for k, v in sorted(keys.items()))


def decode_listkeys(data: bytes) -> dict[bytes, bytes]:
    out = {}
    for line in data.splitlines():
        k, _, v = line.partition(b"\t")
        out[k] = v
    return out


def encode_tagsfnodes(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """`hgtagsfnodes` payload: (changeset node, .hgtags filenode) pairs."""
    return b"".join(cs + fnode for cs, fnode in pairs)


def uvarint(value: int) -> bytes:
    """Unsigned LEB128, as stream2 uses for name and data lengths."""
    if value < 0:
        raise ValueError("negative uvarint")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_uvarint(fp: BinaryIO) -> int:
    result = shift = 0
    while True:
        b = fp.read(1)
        if not b:
            raise Bundle2Error("stream ended inside a uvarint")
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise Bundle2Error("uvarint too long")


def stream2_entry_header(src: bytes, name: bytes, size: int) -> bytes:
    """The bytes before a file's data in a `stream2` payload: src (b's' store, b'c' cache), lengths, name."""
    return src + uvarint(len(name)) + uvarint(size) + name
