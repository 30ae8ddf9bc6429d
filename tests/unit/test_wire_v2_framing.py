"""Frame codec, request reader and response writer of wire protocol v2, and the stream encodings.

Byte sequences come from the reference transcripts (31: clone, 36: hand-made requests), where
Mercurial 5.9.3 is on both ends.
"""

import os
import zlib

import cbor2
import pytest
import zstandard

from lfsserve.wire.v2 import cbor
from lfsserve.wire.v2.encoding import IdentityEncoder, ZlibEncoder, ZstdEncoder, choose, make_decoder, order_from_config
from lfsserve.wire.v2.framing import (
    MAX_PAYLOAD,
    CommandError,
    FrameType,
    IndefiniteBytes,
    ProtocolError,
    ResponseWriter,
    encode_frame,
    encode_header,
    iter_frames,
    read_request,
)
from tests.wire_v2_client import decode_response

H = bytes.fromhex
NODE = H("8ef8ed5f08de26d8c561a4a7430baa40ad566093")

# Transcript 31, exchange 2: the 5.9.3 client's multirequest body (heads + known).
T31_MULTIREQUEST = (
    H("2100000100010182") + cbor2.dumps({b"contentencodings": [b"zlib", b"identity"]})
    + H("0c00000100010011") + cbor2.dumps({b"name": b"heads"})
    + H("1900000300010011") + cbor2.dumps({b"args": {b"nodes": []}, b"name": b"known"})
)
# Transcript 36, exchange 8: hand-made heads request, and hg serve's identity-encoded answer.
T36_REQUEST = H("0c00000100010111") + cbor2.dumps({b"name": b"heads"})
T36_RESPONSE = (
    H("0900000100020192") + b"\x48identity"
    + H("0b00000100020431") + cbor2.dumps({b"status": b"ok"})
    + H("1600000100020431") + cbor2.dumps([NODE])
    + H("0000000100020032")
)


def classify(exc):
    if isinstance(exc, CommandError):
        return "command", exc.message, exc.fmt_args
    return "server", f"boom: {exc}", []


# -- codec --------------------------------------------------------------------------------------

def test_transcript_body_lengths_match_their_headers():
    assert len(T31_MULTIREQUEST) == 94   # content-length in transcript 31
    assert len(T36_REQUEST) == 20 and len(T36_RESPONSE) == 74


def test_header_layout_from_the_transcript():
    # "21 00 00 01 00 01 01 82": length 33, request 1, stream 1, stream-begin, type 8, flags eos
    assert encode_header(33, 1, 1, 0x01, FrameType.SENDER_PROTOCOL_SETTINGS, 0x2) == H("2100000100010182")
    (frame,) = iter_frames(H("2100000100010182") + b"x" * 33)
    assert (frame.request_id, frame.stream_id, frame.stream_flags, frame.type, frame.flags) == (1, 1, 1, 8, 2)


def test_length_is_24_bit_little_endian():
    # hg's own parser weighs the third byte by 16384; we write it correctly (and never need it).
    assert encode_header(70000, 3, 2, 0, 3, 1)[:3] == bytes([0x70, 0x11, 0x01])
    body = encode_frame(0x1234, 2, 0, 3, 1, b"y" * 70000)
    (frame,) = iter_frames(body, max_payload=1 << 24)
    assert frame.request_id == 0x1234 and len(frame.payload) == 70000
    with pytest.raises(ProtocolError, match="70000-byte payload"):
        list(iter_frames(body))
    with pytest.raises(ValueError):
        encode_header(1 << 24, 1, 1, 0, 1, 1)


@pytest.mark.parametrize("body, why", [
    (H("21000001"), "truncated frame header"),
    (H("0500000100010111") + b"abc", "truncated frame"),
])
def test_truncated_frames(body, why):
    with pytest.raises(ProtocolError, match=why):
        list(iter_frames(body))


# -- reading requests ----------------------------------------------------------------------------

def test_reads_the_reference_multirequest():
    req = read_request(T31_MULTIREQUEST)
    assert req.encodings == [b"zlib", b"identity"]
    assert [(c.request_id, c.name, c.args, c.error) for c in req.commands] == [
        (1, b"heads", {}, None), (3, b"known", {b"nodes": []}, None)]


def test_reads_the_hand_made_request_without_settings():
    req = read_request(T36_REQUEST)
    assert req.encodings is None and [c.name for c in req.commands] == [b"heads"]


def test_reassembles_continued_command_requests_and_command_data():
    payload = cbor2.dumps({b"name": b"known", b"args": {b"nodes": [NODE] * 3}})
    body = (encode_frame(1, 1, 1, 1, 0x1 | 0x4, payload[:10])   # new + more
            + encode_frame(1, 1, 0, 1, 0x2, payload[10:]))     # continuation, last
    (cmd,) = read_request(body).commands
    assert cmd.args == {b"nodes": [NODE] * 3}
    body = (encode_frame(5, 1, 1, 1, 0x1 | 0x8, cbor2.dumps({b"name": b"x"}))
            + encode_frame(5, 1, 0, 2, 0x1, b"abc") + encode_frame(5, 1, 0, 2, 0x2, b"def"))
    (cmd,) = read_request(body).commands
    assert cmd.data == b"abcdef" and cmd.name == b"x"


def _cmd(rid=1, sflags=0, flags=0x1, payload=None, stream=1, type_=1):
    return encode_frame(rid, stream, sflags, type_, flags, payload or cbor2.dumps({b"name": b"heads"}))


SETTINGS_FRAME = encode_frame(1, 1, 1, 8, 0x2, cbor2.dumps({b"contentencodings": [b"zlib"]}))


@pytest.mark.parametrize("body, why", [
    (_cmd(sflags=1, stream=2), "odd stream ids"),
    (_cmd(sflags=0), "not begun"),
    (_cmd(sflags=1) + _cmd(rid=3, sflags=1), "already open"),
    (_cmd(sflags=1 | 4), "encoded"),
    (_cmd(sflags=1 | 8), "unknown stream flags"),
    (_cmd(sflags=1) + SETTINGS_FRAME.replace(b"\x01\x00\x01\x01\x82", b"\x01\x00\x01\x00\x82", 1),
     "before any command"),
    (encode_frame(1, 1, 1, 8, 0x3, cbor2.dumps({})), "exactly one of"),
    (encode_frame(1, 1, 1, 8, 0x0, cbor2.dumps({})), "exactly one of"),
    (encode_frame(1, 1, 1, 8, 0x2, b"\xff"), "cannot decode sender protocol settings"),
    (encode_frame(1, 1, 1, 8, 0x2, cbor2.dumps([1])), "one CBOR map"),
    (encode_frame(1, 1, 1, 8, 0x2, cbor2.dumps({b"contentencodings": b"zlib"})), "list of byte strings"),
    (encode_frame(1, 1, 1, 8, 0x1, cbor2.dumps({})), "ends inside the sender protocol settings"),
    (_cmd(sflags=1, flags=0x3), "exactly one of the new"),
    (_cmd(sflags=1, flags=0x0), "exactly one of the new"),
    (_cmd(sflags=1) + _cmd(), "used twice"),
    (_cmd(sflags=1, flags=0x2), "not expecting more"),
    (_cmd(sflags=1, flags=0x1 | 0x4), "were complete"),
    (_cmd(sflags=1, flags=0x1 | 0x4) + _cmd(flags=0x2 | 0x8), "have-data flag differs"),
    (_cmd(sflags=1) + encode_frame(1, 1, 0, 2, 0x2, b"x"), "does not expect data"),
    (_cmd(sflags=1, flags=0x1 | 0x8) + encode_frame(1, 1, 0, 2, 0x3, b"x"), "exactly one of the continuation"),
    (_cmd(sflags=1, flags=0x1 | 0x4 | 0x8) + encode_frame(1, 1, 0, 2, 0x2, b"x"), "before the request frames"),
    (encode_frame(1, 1, 1, 3, 0x2, b""), "may not send frames of type 3"),
    (encode_frame(1, 1, 1, 9, 0x2, cbor2.dumps(b"zlib")), "may not send frames of type 9"),
])
def test_bad_requests_are_refused_with_a_reason(body, why):
    with pytest.raises(ProtocolError, match=why):
        read_request(body)


@pytest.mark.parametrize("payload, why", [
    (b"\xa1", "cannot decode"),
    (cbor2.dumps({"name": "heads"}), "text strings"),
    (cbor2.dumps([b"heads"]), "not a CBOR map"),
    (cbor2.dumps({b"args": {}}), 'no "name"'),
    (cbor2.dumps({b"name": b"heads", b"args": [1]}), '"args" is not a map'),
    (cbor2.dumps({b"name": b"heads", b"redirect": 1}), '"redirect" is not a map'),
    (cbor2.dumps({b"name": b"heads", b"bogus": 1}), "unknown keys"),
])
def test_unreadable_command_maps_become_per_command_errors(payload, why):
    req = read_request(_cmd(sflags=1, payload=payload) + _cmd(rid=3))
    bad, good = req.commands
    assert why in bad.error and bad.request_id == 1
    assert good.error is None and good.name == b"heads"


def test_command_count_is_limited():
    body = _cmd(sflags=1) + b"".join(_cmd(rid=2 * i + 3) for i in range(5))
    with pytest.raises(ProtocolError, match="more than 3 commands"):
        read_request(body, max_commands=3)


# -- writing responses ---------------------------------------------------------------------------

def test_decodes_the_reference_identity_answer():
    # The test client reads hg serve's bytes, so it is a fair judge of ours below.
    resp = decode_response(T36_RESPONSE, require_end=False)
    assert resp.encoding == b"identity"
    assert resp.answers[1].values == [{b"status": b"ok"}, [NODE]]


def test_identity_answer_bytes():
    w = ResponseWriter(IdentityEncoder())
    body = b"".join(w.respond(1, iter([[NODE]]), classify, last=True))
    expected_payload = cbor2.dumps({b"status": b"ok"}) + cbor2.dumps([NODE])
    # stream-settings frame exactly as hg serve sends it, then one eos frame (encoded, end of stream)
    assert body == (H("0900000100020192") + b"\x48identity"
                    + H("2100000100020632") + expected_payload)


def test_zlib_answers_share_one_deflate_stream_across_commands():
    w = ResponseWriter(ZlibEncoder())
    big = os.urandom(100_000)
    body = (b"".join(w.respond(1, iter([{b"totalitems": 1}, big]), classify, last=False))
            + b"".join(w.respond(3, iter([b"1"]), classify, last=True)))
    assert body.startswith(H("0500000100020192") + b"\x44zlib")   # as in transcript 31
    frames = list(iter_frames(body))
    assert all(len(f.payload) <= MAX_PAYLOAD for f in frames)
    assert any(len(f.payload) == MAX_PAYLOAD for f in frames)       # the big value spans frames
    assert frames[1].payload[:2] == b"\x78\x9c"                      # one zlib stream from here on
    resp = decode_response(body)
    assert resp.answers[1].objects == [{b"totalitems": 1}, big]
    assert resp.answers[3].objects == [b"1"]
    # A fresh decompressor per command would fail: the second answer continues the first's stream.
    with pytest.raises(zlib.error):
        zlib.decompressobj().decompress(b"".join(f.payload for f in frames if f.request_id == 3))


def test_zstd_answers_decode_within_an_8mb_window():
    w = ResponseWriter(ZstdEncoder())
    values = [os.urandom(50_000), b"a" * 3_000_000, {b"k": [1, 2, 3]}]
    body = b"".join(w.respond(1, iter(values), classify, last=True))
    assert decode_response(body).answers[1].objects == values
    assert decode_response(body).encoding == b"zstd-8mb"
    payload = b"".join(f.payload for f in list(iter_frames(body))[1:])
    dctx = zstandard.ZstdDecompressor(max_window_size=8 * 1024 * 1024).decompressobj()
    assert dctx.decompress(payload)  # refuses frames needing a larger window


def test_indefinite_bytestrings_stream_in_chunks():
    chunks = [os.urandom(40_000) for _ in range(3)]
    w = ResponseWriter(IdentityEncoder())
    frames = list(w.respond(1, iter([{b"size": 120_000}, IndefiniteBytes(iter(chunks))]), classify, last=True))
    body = b"".join(frames)
    assert decode_response(body).answers[1].objects == [{b"size": 120_000}, b"".join(chunks)]
    raw = b"".join(f.payload for f in list(iter_frames(body))[1:])
    assert raw[len(cbor2.dumps({b"status": b"ok"})) + len(cbor2.dumps({b"size": 120_000}))] == 0x5F


def test_error_before_output_is_a_command_error_answer():
    def values():
        raise CommandError("unknown node: %s", NODE.hex())
        yield

    w = ResponseWriter(ZlibEncoder())
    body = b"".join(w.respond(5, values(), classify, last=True))
    (frame,) = iter_frames(body)
    assert frame.type == FrameType.COMMAND_RESPONSE and frame.flags == 0x2
    assert frame.stream_flags == 0x1 | 0x2  # begins and ends the stream, not encoded
    assert cbor.decode(frame.payload) == {b"status": b"error", b"error": {
        b"message": b"unknown node: %s", b"args": [NODE.hex().encode()]}}


def test_error_midway_keeps_the_stream_decodable_for_later_commands():
    def failing():
        yield {b"totalitems": 2}
        yield b"x" * 50_000
        raise RuntimeError("disk on fire")

    w = ResponseWriter(ZlibEncoder())
    body = (b"".join(w.respond(1, failing(), classify, last=False))
            + b"".join(w.respond(3, iter([[NODE]]), classify, last=True)))
    resp = decode_response(body)
    assert resp.answers[1].error == {b"type": b"server", b"message": [{b"msg": b"boom: disk on fire"}]}
    assert resp.answers[3].objects == [[NODE]]


def test_empty_result_still_sends_ok_status():
    w = ResponseWriter(IdentityEncoder())
    resp = decode_response(b"".join(w.respond(1, iter([]), classify, last=True)))
    assert resp.answers[1].values == [{b"status": b"ok"}]


# -- encodings -----------------------------------------------------------------------------------

def test_server_order_wins_over_client_order():
    assert choose([b"identity", b"zlib", b"zstd-8mb"]) == b"zstd-8mb"
    assert choose([b"zlib", b"identity"]) == b"zlib"             # the pure 5.9.3 client's list
    assert choose(None) == b"identity"                           # no sender settings
    assert choose([b"br"]) == b"identity"
    assert choose([b"zstd-8mb", b"zlib"], order_from_config(["zlib"])) == b"zlib"
    assert order_from_config(["none", "zstd"]) == (b"zstd-8mb", b"identity")


def test_decoders_round_trip():
    for enc in (IdentityEncoder(), ZlibEncoder(), ZstdEncoder()):
        dec = make_decoder(enc.name)
        out = dec.decode(enc.encode(b"hello ") + enc.flush()) + dec.decode(enc.encode(b"world") + enc.flush())
        assert out == b"hello world"
    with pytest.raises(ValueError):
        make_decoder(b"lz4")


def test_big_values_are_cut_into_full_frames():
    value = os.urandom(2_000_000)
    w = ResponseWriter(IdentityEncoder())
    frames = list(iter_frames(b"".join(w.respond(1, iter([b"x" * 100, value]), classify, last=True))))[1:]
    sizes = [len(f.payload) for f in frames]
    assert all(s == MAX_PAYLOAD for s in sizes[:-1]) and 0 < sizes[-1] <= MAX_PAYLOAD
    ok, small, header = len(cbor2.dumps({b"status": b"ok"})), len(cbor2.dumps(b"x" * 100)), 5
    assert sum(sizes) == ok + small + header + len(value)
    w = ResponseWriter(IdentityEncoder())
    assert decode_response(b"".join(w.respond(3, iter([value]), classify, last=True))).answers[3].objects == [value]
