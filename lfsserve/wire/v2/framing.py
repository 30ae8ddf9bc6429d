"""Frames of Mercurial's wire protocol v2 (framing media type 0006): codec, request reader, response writer.

A frame is an 8-byte header and a payload:

    bytes 0-2  payload length, 24-bit little-endian
    bytes 3-4  request id, 16-bit little-endian (client-initiated requests are odd)
    byte  5    stream id (the client writes on odd streams, the server on even ones)
    byte  6    stream flags: 0x01 beginning of stream, 0x02 end of stream, 0x04 payload encoded
    byte  7    frame type (high nibble) and per-type flags (low nibble)

Nothing here knows about HTTP. `read_request` turns a request body into the sender's settings and
the commands it asks for; `ResponseWriter` turns command results (sequences of CBOR values) into
frames on one server stream, with the stream's content encoding applied.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import cbor
from .encoding import Encoder

__all__ = [
    "MAX_PAYLOAD",
    "CommandError",
    "CommandRequest",
    "Frame",
    "FrameType",
    "IndefiniteBytes",
    "ProtocolError",
    "Request",
    "ResponseWriter",
    "coalesce",
    "encode_frame",
    "iter_frames",
    "read_request",
]

HEADER_SIZE = 8
# The largest payload we write. The format allows 24 bits, but receivers (Mercurial's parser
# included, which mis-weights the third length byte) rely on frames staying at or below 32 KiB.
MAX_PAYLOAD = 32768
# The largest payload we accept: the specification forbids more than 65535 unless negotiated.
MAX_INCOMING_PAYLOAD = 65535


class FrameType(enum.IntEnum):
    COMMAND_REQUEST = 0x1
    COMMAND_DATA = 0x2
    COMMAND_RESPONSE = 0x3
    ERROR_RESPONSE = 0x5
    TEXT_OUTPUT = 0x6
    PROGRESS = 0x7
    SENDER_PROTOCOL_SETTINGS = 0x8
    STREAM_SETTINGS = 0x9


# Stream flags.
STREAM_BEGIN = 0x01
STREAM_END = 0x02
STREAM_ENCODED = 0x04

# command-request flags
REQUEST_NEW = 0x1
REQUEST_CONTINUATION = 0x2
REQUEST_MORE = 0x4
REQUEST_HAVE_DATA = 0x8
# command-data flags
DATA_CONTINUATION = 0x1
DATA_EOS = 0x2
# command-response flags
RESPONSE_CONTINUATION = 0x1
RESPONSE_EOS = 0x2
# sender-protocol-settings and stream-settings flags
SETTINGS_CONTINUATION = 0x1
SETTINGS_EOS = 0x2


class ProtocolError(ValueError):
    """The request violates the framing protocol; nothing in it can be answered."""


class CommandError(Exception):
    """A command cannot be run as asked (the client's mistake); answered as a command error.

    `message` may contain `%s` placeholders filled from `args` by the client, as in Mercurial's
    error atoms; a message without args is shown as is.
    """

    def __init__(self, message: str, *args: bytes | str):
        super().__init__(message)
        self.message = message
        self.fmt_args = [a.encode("utf-8", "replace") if isinstance(a, str) else a for a in args]

    def render(self) -> str:
        """The message as the client will show it (for logs and plain-text answers)."""
        if not self.fmt_args:
            return self.message
        return self.message % tuple(a.decode("utf-8", "replace") for a in self.fmt_args)


@dataclass(frozen=True)
class Frame:
    request_id: int
    stream_id: int
    stream_flags: int
    type: int
    flags: int
    payload: bytes


def encode_header(length: int, request_id: int, stream_id: int, stream_flags: int, type_: int,
                  flags: int) -> bytes:
    if not 0 <= length < 1 << 24:
        raise ValueError(f"frame payload of {length} bytes does not fit in 24 bits")
    return struct.pack("<HBHBBB", length & 0xFFFF, length >> 16, request_id, stream_id, stream_flags,
                       (type_ << 4) | flags)


def encode_frame(request_id: int, stream_id: int, stream_flags: int, type_: int, flags: int,
                 payload: bytes) -> bytes:
    return encode_header(len(payload), request_id, stream_id, stream_flags, type_, flags) + payload


def iter_frames(data: bytes | bytearray | memoryview,
                max_payload: int = MAX_INCOMING_PAYLOAD) -> Iterator[Frame]:
    """The frames of a complete body; ProtocolError on a truncated or oversized frame."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        if len(view) - pos < HEADER_SIZE:
            raise ProtocolError(f"truncated frame header at byte {pos}")
        lo, hi, request_id, stream_id, stream_flags, type_flags = struct.unpack_from("<HBHBBB", view, pos)
        length = lo | (hi << 16)
        if length > max_payload:
            raise ProtocolError(f"frame at byte {pos} announces a {length}-byte payload "
                                f"(at most {max_payload} allowed)")
        start = pos + HEADER_SIZE
        if start + length > len(view):
            raise ProtocolError(f"truncated frame at byte {pos}: {length}-byte payload announced, "
                                f"{len(view) - start} present")
        yield Frame(request_id, stream_id, stream_flags, type_flags >> 4, type_flags & 0xF,
                    bytes(view[start:start + length]))
        pos = start + length


# -- reading a request ------------------------------------------------------------------------------

@dataclass
class CommandRequest:
    request_id: int
    name: bytes = b""
    args: dict = field(default_factory=dict)
    redirect: dict | None = None
    data: bytes | None = None
    # Why this command cannot run (its request map is unreadable); answered as a command error.
    error: str | None = None


@dataclass
class Request:
    # The client's content encodings from its sender-protocol-settings frame; None without one.
    encodings: list[bytes] | None
    commands: list[CommandRequest]


@dataclass
class _Receiving:
    payload: bytearray
    more: bool
    have_data: bool
    data: bytearray | None = None


def _decode_command(request_id: int, payload: bytes, data: bytes | None) -> CommandRequest:
    req = CommandRequest(request_id, data=data)
    try:
        value = cbor.decode(payload)
    except cbor.CBORError as exc:
        req.error = f"cannot decode command request: {exc}"
        return req
    if not isinstance(value, dict):
        req.error = "command request is not a CBOR map"
        return req
    name = value.get(b"name")
    if not isinstance(name, bytes) or not name:
        req.error = 'command request has no "name" byte string'
        return req
    req.name = name
    args = value.get(b"args", {})
    if not isinstance(args, dict) or not all(isinstance(k, bytes) for k in args):
        req.error = 'command request "args" is not a map with byte string keys'
        return req
    req.args = args
    redirect = value.get(b"redirect")
    if redirect is not None and not isinstance(redirect, dict):
        req.error = 'command request "redirect" is not a map'
        return req
    req.redirect = redirect
    unknown = set(value) - {b"name", b"args", b"redirect"}
    if unknown:
        req.error = "command request has unknown keys: " + ", ".join(
            repr(k) for k in sorted(unknown, key=repr))
    return req


def read_request(body: bytes | bytearray | memoryview, max_commands: int = 100_000) -> Request:
    """The settings and commands of a client's request body.

    Raises ProtocolError for violations of the framing rules (the whole request is refused).
    A command whose request map cannot be decoded is returned with `error` set, so that it
    gets a command error answer under its own request id.
    """
    open_streams: set[int] = set()
    settings_buf: bytearray | None = None
    encodings: list[bytes] | None = None
    seen_command = False
    receiving: dict[int, _Receiving] = {}
    done: dict[int, CommandRequest] = {}

    def finish(request_id: int) -> None:
        entry = receiving.pop(request_id)
        data = bytes(entry.data) if entry.data is not None else None
        done[request_id] = _decode_command(request_id, bytes(entry.payload), data)
        if len(done) > max_commands:
            raise ProtocolError(f"more than {max_commands} commands in one request")

    for frame in iter_frames(body):
        where = f"frame of type {frame.type} for request {frame.request_id}"
        if frame.stream_id % 2 == 0:
            raise ProtocolError(f"{where} is on stream {frame.stream_id}; clients must use odd stream ids")
        if frame.stream_id not in open_streams:
            if not frame.stream_flags & STREAM_BEGIN:
                raise ProtocolError(f"{where} is on stream {frame.stream_id}, which was not begun "
                                    "(its first frame must carry the beginning-of-stream flag)")
            open_streams.add(frame.stream_id)
        elif frame.stream_flags & STREAM_BEGIN:
            raise ProtocolError(f"{where} begins stream {frame.stream_id}, which is already open")
        if frame.stream_flags & STREAM_ENCODED:
            raise ProtocolError(f"{where} is encoded; this server does not accept encoded client frames")
        if frame.stream_flags & ~(STREAM_BEGIN | STREAM_END | STREAM_ENCODED):
            raise ProtocolError(f"{where} has unknown stream flags 0x{frame.stream_flags:02x}")
        if frame.stream_flags & STREAM_END:
            open_streams.discard(frame.stream_id)

        if frame.type == FrameType.SENDER_PROTOCOL_SETTINGS:
            if seen_command or encodings is not None:
                raise ProtocolError("sender protocol settings must come once, before any command")
            more, eos = frame.flags & SETTINGS_CONTINUATION, frame.flags & SETTINGS_EOS
            if bool(more) == bool(eos) or frame.flags & ~(SETTINGS_CONTINUATION | SETTINGS_EOS):
                raise ProtocolError("sender protocol settings frame needs exactly one of the "
                                    "continuation and end-of-stream flags")
            settings_buf = (settings_buf or bytearray()) + frame.payload
            if more:
                continue
            try:
                values = cbor.decode_sequence(settings_buf)
            except cbor.CBORError as exc:
                raise ProtocolError(f"cannot decode sender protocol settings: {exc}") from None
            settings_buf = None
            if len(values) != 1 or not isinstance(values[0], dict):
                raise ProtocolError("sender protocol settings must be exactly one CBOR map")
            encs = values[0].get(b"contentencodings", [b"identity"])
            if not isinstance(encs, list) or not all(isinstance(e, bytes) for e in encs):
                raise ProtocolError('sender protocol settings: "contentencodings" must be a list of '
                                    "byte strings")
            encodings = encs
            continue
        if settings_buf is not None:
            raise ProtocolError("sender protocol settings frames were not finished (no end-of-stream flag)")

        if frame.type == FrameType.COMMAND_REQUEST:
            seen_command = True
            new, cont = frame.flags & REQUEST_NEW, frame.flags & REQUEST_CONTINUATION
            if bool(new) == bool(cont):
                raise ProtocolError(f"{where}: a command request frame needs exactly one of the new "
                                    "and continuation flags")
            more, have_data = bool(frame.flags & REQUEST_MORE), bool(frame.flags & REQUEST_HAVE_DATA)
            if new:
                if frame.request_id in receiving or frame.request_id in done:
                    raise ProtocolError(f"request id {frame.request_id} is used twice")
                receiving[frame.request_id] = _Receiving(bytearray(frame.payload), more, have_data)
            else:
                entry = receiving.get(frame.request_id)
                if entry is None or not entry.more:
                    raise ProtocolError(f"{where}: continuation of a command request that is not "
                                        "expecting more request frames")
                if have_data != entry.have_data:
                    raise ProtocolError(f"{where}: the have-data flag differs from the request's "
                                        "first frame")
                entry.payload += frame.payload
                entry.more = more
            entry = receiving[frame.request_id]
            if not entry.more and not entry.have_data:
                finish(frame.request_id)
        elif frame.type == FrameType.COMMAND_DATA:
            entry = receiving.get(frame.request_id)
            if entry is None or not entry.have_data:
                raise ProtocolError(f"{where}: command data for a request that does not expect data")
            cont, eos = frame.flags & DATA_CONTINUATION, frame.flags & DATA_EOS
            if bool(cont) == bool(eos):
                raise ProtocolError(f"{where}: a command data frame needs exactly one of the "
                                    "continuation and end-of-stream flags")
            if entry.more:
                raise ProtocolError(f"{where}: command data before the request frames were finished")
            entry.data = (entry.data or bytearray()) + frame.payload
            if eos:
                finish(frame.request_id)
        else:
            raise ProtocolError(f"{where}: a client may not send frames of type {frame.type} "
                                "(expected sender protocol settings, command request or command data)")

    if settings_buf is not None:
        raise ProtocolError("request ends inside the sender protocol settings")
    if receiving:
        ids = ", ".join(str(i) for i in sorted(receiving))
        raise ProtocolError(f"request ends before command request(s) {ids} were complete")
    return Request(encodings, list(done.values()))


# -- writing a response -----------------------------------------------------------------------------

@dataclass
class IndefiniteBytes:
    """A command result value sent as an indefinite-length byte string, chunk by chunk."""

    chunks: Iterable[bytes]


ErrorClassifier = Callable[[BaseException], "tuple[str, str, list[bytes]]"]
# Messages longer than this are cut: an error must fit in one frame.
MAX_MESSAGE = 4000


class ResponseWriter:
    """Frames for the answers to one request's commands, on one server stream (id 2).

    The stream's encoding is announced by a stream-settings frame before the first encoded
    frame; the encoder's context spans every command of the request and is flushed after each.
    The last frame of the response carries the end-of-stream flag.
    """

    def __init__(self, encoder: Encoder, stream_id: int = 2, max_payload: int = MAX_PAYLOAD):
        if stream_id % 2:
            raise ValueError("the server writes on even stream ids")
        self.encoder = encoder
        self.stream_id = stream_id
        self.max_payload = max_payload
        self._begun = False
        self._settings_sent = False

    def _frame(self, request_id: int, type_: int, flags: int, payload: bytes, *, encoded: bool = False,
               end: bool = False) -> bytes:
        sflags = 0
        if not self._begun:
            sflags |= STREAM_BEGIN
            self._begun = True
        if encoded:
            sflags |= STREAM_ENCODED
        if end:
            sflags |= STREAM_END
        return encode_frame(request_id, self.stream_id, sflags, type_, flags, payload)

    def _settings(self, request_id: int) -> Iterator[bytes]:
        if not self._settings_sent:
            self._settings_sent = True
            yield self._frame(request_id, FrameType.STREAM_SETTINGS, SETTINGS_EOS,
                              cbor.encode(self.encoder.name))

    def _error_frame(self, request_id: int, kind: str, message: str, args: list[bytes], end: bool) -> bytes:
        atom: dict[bytes, Any] = {b"msg": message[:MAX_MESSAGE].encode("utf-8", "replace")}
        if args:
            atom[b"args"] = args
        payload = cbor.encode({b"type": kind.encode("ascii"), b"message": [atom]})
        return self._frame(request_id, FrameType.ERROR_RESPONSE, 0, payload, end=end)

    def command_error(self, request_id: int, message: str, args: list[bytes] | None = None, *,
                      last: bool) -> bytes:
        """The whole answer of a command that failed before producing anything."""
        err: dict[bytes, Any] = {b"message": message[:MAX_MESSAGE].encode("utf-8", "replace")}
        if args:
            err[b"args"] = args
        payload = cbor.encode({b"status": b"error", b"error": err})
        return self._frame(request_id, FrameType.COMMAND_RESPONSE, RESPONSE_EOS, payload, end=last)

    def respond(self, request_id: int, values: Iterator[Any], classify: ErrorClassifier, *,
                last: bool, initial: dict[bytes, Any] | None = None) -> Iterator[bytes]:
        """Frames answering one command whose result is the CBOR sequence `values`.

        An exception from `values` before its first value becomes a command error answer; one
        raised later becomes an error-response frame after everything already produced (the
        stream must stay decodable for the commands that follow). `classify(exc)` says
        (kind "command"|"server", message, args). `initial` replaces the `{status: ok}` object
        that opens the answer (a content redirect: `{status: redirect, location: ...}`, with no
        values after it).
        """
        try:
            first = next(values)
        except StopIteration:
            first = _NOTHING
        except Exception as exc:
            kind, message, args = classify(exc)
            if kind == "command":
                yield self.command_error(request_id, message, args, last=last)
            else:
                yield self._error_frame(request_id, kind, message, args, end=last)
            return

        yield from self._settings(request_id)
        pending = bytearray()
        max_payload = self.max_payload
        encode = self.encoder.encode

        def continuation(payload: bytes) -> bytes:
            return self._frame(request_id, FrameType.COMMAND_RESPONSE, RESPONSE_CONTINUATION, payload,
                               encoded=True)

        def feed(out: bytes) -> Iterator[bytes]:
            """Frame encoded output: whole frames go out at once, the rest waits in `pending`.

            Big outputs are cut straight from the encoder's buffer, so a 100 MB revision is
            copied once into frames, not shuffled through a growing buffer.
            """
            if not out:
                return
            if pending:
                need = max_payload - len(pending)
                pending.extend(out[:need])
                if len(pending) < max_payload:
                    return
                yield continuation(bytes(pending))
                pending.clear()
                view = memoryview(out)[need:]
            else:
                view = memoryview(out)
            whole = len(view) - len(view) % max_payload
            for offset in range(0, whole, max_payload):
                yield continuation(bytes(view[offset:offset + max_payload]))
            pending.extend(view[whole:])

        error: tuple[str, str, list[bytes]] | None = None
        try:
            yield from feed(encode(cbor.encode(initial or {b"status": b"ok"})))
            value = first
            while value is not _NOTHING:
                for piece in _pieces(value):
                    yield from feed(encode(piece))
                value = next(values, _NOTHING)
        except Exception as exc:
            error = classify(exc)
        flushed = self.encoder.flush()
        if len(pending) + len(flushed) > max_payload:
            yield from feed(flushed)   # leaves at most one frame's worth (possibly a full one)
        else:
            pending.extend(flushed)
        chunk = bytes(pending)
        if error is None:
            # An empty end-of-stream frame is not marked encoded: there is nothing to decode.
            yield self._frame(request_id, FrameType.COMMAND_RESPONSE, RESPONSE_EOS, chunk,
                              encoded=bool(chunk), end=last)
            return
        # What was produced goes out (the stream must stay decodable for the commands that
        # follow), then an error-response frame ends this command's answer.
        if chunk:
            yield self._frame(request_id, FrameType.COMMAND_RESPONSE, RESPONSE_CONTINUATION, chunk,
                              encoded=True)
        kind, message, args = error
        yield self._error_frame(request_id, kind, message, args, end=last)


_NOTHING = object()
# Byte strings at least this long are framed by header + the object itself, not copied into one.
_BIG = 4096


def _pieces(value: Any) -> Iterator[bytes]:
    """The CBOR encoding of one result value, in pieces that avoid copying big byte strings."""
    if isinstance(value, IndefiniteBytes):
        yield from cbor.encode_indefinite_bytes(value.chunks)
    elif isinstance(value, (bytes, bytearray, memoryview)) and len(value) >= _BIG:
        yield cbor.encode_bytes_header(len(value))
        yield bytes(value) if not isinstance(value, bytes) else value
    else:
        yield cbor.encode(value)


def coalesce(frames: Iterable[bytes], size: int = 65536) -> Iterator[bytes]:
    """Join small frames into writes of about `size` bytes (fewer, larger socket writes)."""
    batch: list[bytes] = []
    total = 0
    for frame in frames:
        batch.append(frame)
        total += len(frame)
        if total >= size:
            yield b"".join(batch)
            batch.clear()
            total = 0
    if batch:
        yield b"".join(batch)
