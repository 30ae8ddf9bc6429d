"""bundle2 codec: byte-exact against hg serve's replies in the reference transcripts, and robust
against truncated or hostile input."""

from __future__ import annotations

import bz2
import io
import zlib

import pytest
import zstandard

from lfsserve.hg import bundle2
from lfsserve.hg.bundle2 import (
    Bundle2Error,
    BundleReader,
    OutPart,
    UnsupportedContent,
    decode_bookmarks,
    decode_caps,
    decode_nodes,
    decode_phase_heads,
    encode_bookmarks,
    encode_bundle,
    encode_caps,
    encode_parts,
    encode_phase_heads,
)

# The unbundle reply of transcript 07 (push of 2 changesets), as hg serve 7.2.4 sent it.
REPLY_07 = bytes.fromhex(
    "48473230000000000000002f117265706c793a6368616e676567726f75700000000000020b010601696e2d7265706c79"
    "2d746f3372657475726e31000000000000001b066f75747075740000000100010b01696e2d7265706c792d746f330000"
    "0037616464696e67206368616e6765736574730a616464696e67206d616e6966657374730a616464696e672066696c65"
    "206368616e6765730a000000000000000d066f75747075740000000200000000002d6164646564203220636861"
    "6e67657365747320776974682033206368616e67657320746f20332066696c65730a0000000000000000")

# Transcript 16, exchange 19: the error:pushraced reply.
PUSHRACED_16 = bytes.fromhex(
    "48473230000000000000000d066f757470757400000000000000000000000000590f4552524f523a505553485241434544"
    "000000010100073a6d65737361676572656d6f7465207265706f7369746f7279206368616e676564207768696c652070"
    "757368696e67202d20706c656173652074727920616761696e0000000000000000")

# Transcript 16, exchange 19: the request (REPLYCAPS + CHECK:HEADS of 0x11...).
REQUEST_16 = bytes.fromhex(
    "484732300000000000000010095245504c594341505300000000000000000035484732300a6572726f723d61626f7274"
    "2c756e737570706f72746564636f6e74656e742c7075736872616365642c707573686b657900000000000000120b4348"
    "45434b3a484541445300000001000000000014" + "11" * 20 + "0000000000000000")

BUNDLE2_CAPS_7 = ("HG20%0Abookmarks%0Achangegroup%3D01%2C02%2C03%0Acheckheads%3Drelated%0Adelta-compression"
                  "%3Dnone%2Czlib%2Czstd%0Adigests%3Dmd5%2Csha1%2Csha512%0Aerror%3Dabort%2Cunsupportedcontent"
                  "%2Cpushraced%2Cpushkey%0Ahgtagsfnodes%0Alistkeys%0Aphases%3Dheads%0Apushkey%0Aremote-"
                  "changegroup%3Dhttp%2Chttps%0Astream%3Dv2")


def test_reply_bytes_match_hg_serve():
    parts = [
        OutPart(b"reply:changegroup", [], [(b"in-reply-to", b"3"), (b"return", b"1")]),
        OutPart(b"output", [], [(b"in-reply-to", b"3")],
                b"adding changesets\nadding manifests\nadding file changes\n"),
        OutPart(b"output", data=b"added 2 changesets with 3 changes to 3 files\n"),
    ]
    assert encode_parts(parts) == REPLY_07


def test_error_reply_bytes_match_hg_serve():
    parts = [OutPart(b"output"),
             OutPart(b"ERROR:PUSHRACED", [(b"message", b"remote repository changed while pushing - please try again")])]
    assert encode_parts(parts) == PUSHRACED_16


def test_read_request_from_transcript():
    fp = io.BytesIO(REQUEST_16)
    assert fp.read(4) == b"HG20"
    parts = []
    for part in BundleReader(fp).parts():
        parts.append((part.type, part.id, part.mandatory, part.read()))
    assert parts[0][:3] == (b"REPLYCAPS", 0, True)
    assert decode_caps(parts[0][3]) == {"HG20": [], "error": ["abort", "unsupportedcontent", "pushraced", "pushkey"]}
    assert parts[1][:3] == (b"CHECK:HEADS", 1, True)
    assert decode_nodes(parts[1][3]) == [b"\x11" * 20]
    assert fp.read() == b""


def test_reader_round_trips_reply_with_params():
    fp = io.BytesIO(REPLY_07[4:])
    got = [(p.name, p.mandatory_params, p.advisory_params, p.read()) for p in BundleReader(fp).parts()]
    assert got[0] == (b"reply:changegroup", {}, {b"in-reply-to": b"3", b"return": b"1"}, b"")
    assert got[2][3] == b"added 2 changesets with 3 changes to 3 files\n"


def test_caps_round_trip_matches_client_blob():
    import urllib.parse
    blob = urllib.parse.unquote_to_bytes(BUNDLE2_CAPS_7)
    caps = decode_caps(blob)
    assert caps["changegroup"] == ["01", "02", "03"]
    assert caps["phases"] == ["heads"]
    assert caps["HG20"] == []
    assert encode_caps(caps) == blob  # hg sorts capability names too


def test_unread_parts_are_skipped_and_payload_read_in_pieces():
    big = bytes(range(256)) * 1000
    data = encode_parts([OutPart(b"first", data=[big[:1000], big[1000:]]),
                         OutPart(b"SECOND", [(b"k", b"v")], data=b"x")])
    reader = BundleReader(io.BytesIO(data[4:]))
    parts = reader.parts()
    p1 = next(parts)
    assert p1.read(10) == big[:10]
    p2 = next(parts)  # the rest of p1 is skipped
    assert (p2.type, p2.mandatory_params, p2.read()) == (b"SECOND", {b"k": b"v"}, b"x")
    assert list(parts) == []


def test_payload_is_rechunked_to_bounded_chunks():
    data = encode_parts([OutPart(b"p", data=(b"a" * 100 for _ in range(1000)))])
    reader = BundleReader(io.BytesIO(data[4:]))
    p = next(reader.parts())
    assert p.read() == b"a" * 100000
    assert max(len(c) for c in bundle2._rechunk((b"a" * 100 for _ in range(1000)), 32768)) <= 32768 + 100


@pytest.mark.parametrize("cut", [3, 4, 8, 12, 20, 40, len(REQUEST_16) - 1])
def test_truncated_bundle_is_an_error(cut):
    fp = io.BytesIO(REQUEST_16[4:cut])
    with pytest.raises(Bundle2Error):
        for part in BundleReader(fp).parts():
            part.read()


def test_hostile_sizes_do_not_allocate():
    # a payload chunk claiming 2 GiB in a 20-byte body
    data = bytes.fromhex("00000000" "00000008" "0170" "00000000" "0000") + b"\x7f\xff\xff\xff" + b"abc"
    reader = BundleReader(io.BytesIO(data))
    with pytest.raises(Bundle2Error, match="ended unexpectedly"):
        next(reader.parts()).read()
    with pytest.raises(Bundle2Error, match="part header size"):
        list(BundleReader(io.BytesIO(b"\x00\x00\x00\x00\x7f\xff\xff\xff")).parts())
    with pytest.raises(Bundle2Error, match="negative"):
        next(BundleReader(io.BytesIO(data[:16] + b"\xff\xff\xff\xf0")).parts()).read()


def test_malformed_part_header():
    # header claims 2 mandatory params but carries no sizes
    header = b"\x01p\x00\x00\x00\x00\x02\x00"
    data = b"\x00\x00\x00\x00" + len(header).to_bytes(4, "big") + header
    with pytest.raises(Bundle2Error, match="malformed"):
        list(BundleReader(io.BytesIO(data)).parts())


def test_unknown_mandatory_stream_param():
    with pytest.raises(UnsupportedContent):
        BundleReader(io.BytesIO(b"\x00\x00\x00\x07Unknown"))
    r = BundleReader(io.BytesIO(b"\x00\x00\x00\x0bunknown=yes\x00\x00\x00\x00"))
    assert r.params == {b"unknown": b"yes"} and list(r.parts()) == []


@pytest.mark.parametrize("algo,compress", [
    ("GZ", zlib.compress),
    ("BZ", bz2.compress),
    ("ZS", lambda d: zstandard.ZstdCompressor().compress(d)),
])
def test_compressed_bundle(algo, compress):
    body = encode_parts([OutPart(b"p", data=b"hello" * 50000)])[8:]
    param = b"Compression=" + algo.encode()
    raw = len(param).to_bytes(4, "big") + param + compress(body)
    (payload,) = [p.read() for p in BundleReader(io.BytesIO(raw)).parts()]
    assert payload == b"hello" * 50000


def test_truncated_compressed_bundle():
    body = encode_parts([OutPart(b"p", data=bytes(range(256)) * 400)])[8:]
    raw = b"\x00\x00\x00\x0eCompression=GZ" + zlib.compress(body)[:-30]
    with pytest.raises(Bundle2Error):
        for p in BundleReader(io.BytesIO(raw)).parts():
            p.read()


def test_interrupt_during_payload_is_readable_by_hg_semantics():
    class Boom(Exception):
        message = "disk on fire"

    def payload():
        yield b"x" * 10
        raise Boom()

    seen = []
    data = b"".join(encode_bundle([OutPart(b"CHANGEGROUP", data=payload())], interrupt_on=(Boom,),
                                  on_interrupt=seen.append))
    assert len(seen) == 1
    # the out-of-band part is error:abort with the message
    assert b"\xff\xff\xff\xff" in data and b"error:abort" in data and b"disk on fire" in data
    with pytest.raises(bundle2.BundleInterrupted, match="disk on fire"):
        for p in BundleReader(io.BytesIO(data[4:])).parts():
            p.read()


def test_error_between_parts_becomes_abort_part():
    class Boom(Exception):
        pass

    def parts():
        yield OutPart(b"output", data=b"hi")
        raise Boom("no phases today")

    data = b"".join(encode_bundle(parts(), interrupt_on=(Boom,)))
    got = [(p.type, p.params) for p in BundleReader(io.BytesIO(data[4:])).parts()]
    assert got == [(b"output", {}), (b"ERROR:ABORT", {b"message": b"no phases today"})]


def test_phase_heads_and_bookmarks_payloads():
    a, b = b"\x01" * 20, b"\x02" * 20
    data = encode_phase_heads({1: [b], 0: [a]})
    assert data == b"\x00\x00\x00\x00" + a + b"\x00\x00\x00\x01" + b
    assert decode_phase_heads(data) == [(0, a), (1, b)]
    with pytest.raises(Bundle2Error):
        decode_phase_heads(data[:-1])
    with pytest.raises(Bundle2Error):
        decode_phase_heads(b"\x00\x00\x00\x07" + a)
    marks = [(b"feature", a), (b"gone", None)]
    enc = encode_bookmarks(marks)
    assert enc[:22] == a + b"\x00\x07" and b"\xff" * 20 in enc
    assert decode_bookmarks(enc) == marks
    with pytest.raises(Bundle2Error):
        decode_bookmarks(enc[:-1])
    with pytest.raises(Bundle2Error):
        decode_nodes(b"x" * 21)


def test_bookmarks_payload_from_transcript_02():
    # BOOKMARKS part of the clone reply: feature -> 3fe1e2a2...
    node = bytes.fromhex("3fe1e2a22298464992f528c076bd5c0bf6b91cee")
    assert encode_bookmarks([(b"feature", node)]) == node + b"\x00\x07feature"


def test_uvarint():
    for v in (0, 1, 127, 128, 300, 2**32, 2**56):
        enc = bundle2.uvarint(v)
        assert bundle2.read_uvarint(io.BytesIO(enc)) == v
    assert bundle2.uvarint(300) == b"\xac\x02"
    assert bundle2.stream2_entry_header(b"s", b"00changelog.i", 448) == b"s\x0d\xc0\x03" + b"00changelog.i"
