"""v1 transport parsing: argument sources, batch escaping, X-HgProto-1 and compression negotiation,
with strings taken from the reference transcripts."""

from __future__ import annotations

import zlib

import pytest
import zstandard
from multidict import CIMultiDict

from lfsserve.wire.compression import MEDIA_01, MEDIA_02, compress_stream, negotiate
from lfsserve.wire.protocol import (
    BadRequest,
    batch_escape,
    batch_unescape,
    decode_batch,
    decode_nodes,
    encode_nodes,
    header_args,
    parse_client_proto,
    parse_qs_bytes,
)

HEAD = "3fe1e2a22298464992f528c076bd5c0bf6b91cee"


def test_header_args_joined_in_order_case_insensitive():
    # transcript 02: hg 7 sends lower-case header names
    headers = CIMultiDict({"x-hgarg-1": "bookmarks=1&cg=1&common=00000000000000000000",
                           "x-hgarg-2": "00000000000000000000&heads=" + HEAD, "x-hgarg-4": "ignored=1"})
    args = parse_qs_bytes(header_args(headers))
    assert args == {"bookmarks": b"1", "cg": b"1", "common": b"0" * 40, "heads": HEAD.encode()}
    # a plain dict with odd casing works too
    assert header_args({"X-HGARG-1": "key=tip"}) == b"key=tip"


def test_qs_values_are_raw_bytes():
    args = parse_qs_bytes(b"a=%FF%00x&b=&c=1+2&d")
    assert args == {"a": b"\xff\x00x", "b": b"", "c": b"1 2", "d": b""}
    with pytest.raises(BadRequest, match="twice"):
        parse_qs_bytes(b"a=1&a=2")


def test_batch_from_transcript_16():
    cmds = parse_qs_bytes(b"cmds=heads+%3Bknown+nodes%3D8f4dcfd7ba98bfc6b197bd14df4b20948ceaa974%3Blookup+key%3Dtip"
                          b"%3Blistkeys+namespace%3Dphases")["cmds"]
    assert decode_batch(cmds) == [
        ("heads", {}),
        ("known", {"nodes": b"8f4dcfd7ba98bfc6b197bd14df4b20948ceaa974"}),
        ("lookup", {"key": b"tip"}),
        ("listkeys", {"namespace": b"phases"}),
    ]
    # transcript 02: "heads ;known nodes=" (no local nodes)
    assert decode_batch(b"heads ;known nodes=") == [("heads", {}), ("known", {"nodes": b""})]


def test_batch_escaping_round_trip():
    raw = b"a:b,c;d=e::,"
    esc = batch_escape(raw)
    assert esc == b"a:cb:oc:sd:ee:c:c:o"
    assert batch_unescape(esc) == raw
    # a value that escapes to something containing another escape must survive
    assert batch_unescape(batch_escape(b":o")) == b":o"
    assert decode_batch(b"lookup key=" + batch_escape(b"x;y=z,w")) == [("lookup", {"key": b"x;y=z,w"})]
    with pytest.raises(BadRequest):
        decode_batch(b"lookup key")
    with pytest.raises(BadRequest):
        decode_batch(b" key=1")


def test_nodes():
    assert decode_nodes(b"") == []
    nodes = decode_nodes(HEAD.encode() + b" " + b"0" * 40)
    assert nodes == [bytes.fromhex(HEAD), b"\0" * 20]
    assert encode_nodes(nodes) == HEAD.encode() + b" " + b"0" * 40
    for bad in (b"abc", b"g" * 40, HEAD.encode() + b"0"):
        with pytest.raises(BadRequest):
            decode_nodes(bad)


def test_client_proto():
    p = parse_client_proto(CIMultiDict({"x-hgproto-1": "0.1 0.2 comp=zstd,zlib,none,bzip2 partial-pull"}))
    assert p.accepts_02 and p.compression == ("zstd", "zlib", "none", "bzip2") and "partial-pull" in p.flags
    assert not parse_client_proto({}).accepts_02


@pytest.mark.parametrize("proto,server,prefer_none,expected", [
    ("0.1 0.2 comp=zstd,zlib,none,bzip2 partial-pull", ["zstd", "zlib"], False, (MEDIA_02, "zstd")),  # T:02
    ("0.1 0.2 comp=zlib,none,bzip2", ["zstd", "zlib"], False, (MEDIA_02, "zlib")),                   # T:18 (5.9 pure)
    ("0.1 0.2 comp=zstd,zlib,none,bzip2", ["zstd", "zlib"], True, (MEDIA_02, "none")),               # T:03 stream
    ("0.1 0.2 comp=zstd,zlib", ["zlib", "zstd"], False, (MEDIA_02, "zlib")),                          # server order wins
    ("0.1 0.2 comp=bzip2", ["zstd", "zlib"], False, (MEDIA_01, "zlib")),                              # nothing shared
    ("0.1 0.2", ["zstd", "zlib"], False, (MEDIA_02, "zlib")),                                         # no comp=: zlib,none
    ("0.1", ["zstd", "zlib"], False, (MEDIA_01, "zlib")),
    (None, ["zstd", "zlib"], False, (MEDIA_01, "zlib")),                                              # T:16 no X-HgProto
])
def test_negotiation(proto, server, prefer_none, expected):
    headers = {"X-HgProto-1": proto} if proto else {}
    choice = negotiate(parse_client_proto(headers), server, prefer_uncompressed=prefer_none)
    assert (choice.media_type, choice.engine) == expected
    if choice.media_type == MEDIA_02:
        assert choice.prefix == bytes([len(choice.engine)]) + choice.engine.encode()
    else:
        assert choice.prefix == b""


@pytest.mark.parametrize("engine", ["zstd", "zlib", "none"])
def test_compress_stream_round_trip(engine):
    chunks = [bytes([i % 251]) * (i * 37 % 5000) for i in range(300)]
    out = list(compress_stream(iter(chunks), engine, min_output=16 * 1024))
    body = b"".join(out)
    if engine == "zstd":
        plain = zstandard.ZstdDecompressor().decompressobj().decompress(body)
    elif engine == "zlib":
        plain = zlib.decompress(body)
    else:
        plain = body
    assert plain == b"".join(chunks)
    assert all(len(c) >= 16 * 1024 for c in out[:-1])
