"""A minimal wire protocol v2 client for tests: builds framed requests, decodes framed answers.

Deliberately independent of the server's response writer: it reads frames with the codec, keeps
one decoder per server stream as a receiver must, and splits each request's decoded bytes into
CBOR values with cbor2 directly (plus the strict subset check, so anything the server sends that
Mercurial's decoder would refuse fails the test).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cbor2

from lfsserve.wire.v2 import cbor
from lfsserve.wire.v2.encoding import make_decoder
from lfsserve.wire.v2.framing import (
    RESPONSE_EOS,
    SETTINGS_EOS,
    STREAM_BEGIN,
    STREAM_ENCODED,
    STREAM_END,
    FrameType,
    encode_frame,
    iter_frames,
)

MEDIA_TYPE = "application/mercurial-exp-framing-0006"
HEADERS = {"Accept": MEDIA_TYPE, "Content-Type": MEDIA_TYPE}


def request_body(*commands: tuple[str, dict | None], encodings: list[bytes] | None = None) -> bytes:
    """Frames for the given (name, args) commands on stream 1, request ids 1, 3, 5, ..."""
    out = []
    flags = STREAM_BEGIN
    if encodings is not None:
        out.append(encode_frame(1, 1, flags, FrameType.SENDER_PROTOCOL_SETTINGS, SETTINGS_EOS,
                                cbor2.dumps({b"contentencodings": encodings})))
        flags = 0
    for i, (name, args) in enumerate(commands):
        m: dict = {b"name": name.encode()}
        if args is not None:
            m[b"args"] = args
        out.append(encode_frame(2 * i + 1, 1, flags, FrameType.COMMAND_REQUEST, 0x1, cbor2.dumps(m)))
        flags = 0
    return b"".join(out)


@dataclass
class Answer:
    values: list[Any] = field(default_factory=list)   # decoded CBOR values, status map first
    error: dict | None = None                         # an error-response frame's payload
    complete: bool = False                            # an eos command-response frame was seen

    @property
    def status(self) -> bytes | None:
        return self.values[0][b"status"] if self.values else None

    @property
    def objects(self) -> list[Any]:
        """The command's result values (after the status map)."""
        return self.values[1:]


@dataclass
class Response:
    answers: dict[int, Answer]
    frames: list  # (Frame, decoded payload)
    encoding: bytes | None


def decode_response(body: bytes, require_end: bool = True) -> Response:
    """Decode a whole response body; `require_end`: the server must close its stream (we always do)."""
    decoders: dict[int, Any] = {}
    open_streams: set[int] = set()
    data: dict[int, bytearray] = {}
    answers: dict[int, Answer] = {}
    frames = []
    encoding = None
    for frame in iter_frames(body, max_payload=32768):
        assert frame.stream_id % 2 == 0, "server frames must be on even streams"
        if frame.stream_id not in open_streams:
            assert frame.stream_flags & STREAM_BEGIN, "first frame of a stream must begin it"
            open_streams.add(frame.stream_id)
        else:
            assert not frame.stream_flags & STREAM_BEGIN
        payload = frame.payload
        if frame.stream_flags & STREAM_ENCODED:
            payload = decoders[frame.stream_id].decode(payload)
        if frame.stream_flags & STREAM_END:
            open_streams.discard(frame.stream_id)
        frames.append((frame, payload))
        if frame.type == FrameType.STREAM_SETTINGS:
            assert frame.flags == SETTINGS_EOS
            encoding = cbor.decode(payload)
            decoders[frame.stream_id] = make_decoder(encoding)
            continue
        ans = answers.setdefault(frame.request_id, Answer())
        assert not ans.complete and ans.error is None, "frame after the end of a request's answer"
        if frame.type == FrameType.COMMAND_RESPONSE:
            data.setdefault(frame.request_id, bytearray()).extend(payload)
            if frame.flags & RESPONSE_EOS:
                raw = bytes(data.pop(frame.request_id))
                ans.values = cbor.decode_sequence(raw)   # strict subset check
                assert ans.values == _cbor2_sequence(raw)
                ans.complete = True
        elif frame.type == FrameType.ERROR_RESPONSE:
            ans.error = cbor.decode(payload)
        else:
            raise AssertionError(f"unexpected frame type {frame.type}")
    assert not (require_end and open_streams), "the response must end its stream"
    return Response(answers, frames, encoding)


def _cbor2_sequence(raw: bytes) -> list[Any]:
    import io
    fp = io.BytesIO(raw)
    out = []
    while fp.tell() < len(raw):
        out.append(cbor2.load(fp))
    return out
