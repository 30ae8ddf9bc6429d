"""The CBOR subset of wire protocol v2: what we send, and the strict decoder for client input."""

import cbor2
import pytest

from lfsserve.wire.v2 import cbor

# Payloads of request frames in reference transcripts 31 and 36 (their lengths are in the frame
# headers there: 0x21, 0x0c, 0x19, 0x3a).
SETTINGS = bytes.fromhex("a150636f6e74656e74656e636f64696e677382447a6c6962486964656e74697479")


def test_encodes_the_reference_request_maps_to_their_transcript_lengths():
    assert cbor.encode({b"contentencodings": [b"zlib", b"identity"]}) == SETTINGS
    assert len(cbor.encode({b"name": b"heads"})) == 0x0C
    assert len(cbor.encode({b"name": b"known", b"args": {b"nodes": []}})) == 0x19
    assert len(cbor.encode({b"name": b"rawstorefiledata",
                            b"args": {b"files": [b"changelog", b"manifestlog"]}})) == 0x3A


def test_sets_are_tag_258_with_sorted_members_and_maps_are_sorted():
    encoded = cbor.encode({b"revision", b"phase", b"bookmarks", b"parents"})
    assert encoded[:3] == b"\xd9\x01\x02"
    members = cbor2.loads(encoded[3:])
    assert members == sorted(members, key=lambda m: (len(m), m))
    m = cbor.encode({b"zz": 1, b"a": 2, b"bb": 3})
    assert m == bytes.fromhex("a3416102426262034 27a7a01".replace(" ", ""))


def test_indefinite_bytestring_round_trips_and_is_what_the_reference_sends():
    pieces = b"".join(cbor.encode_indefinite_bytes([b"abc", b"", b"x" * 300]))
    assert pieces[0] == 0x5F and pieces[-1] == 0xFF
    assert cbor.decode(pieces) == b"abc" + b"x" * 300
    assert cbor2.loads(pieces) == b"abc" + b"x" * 300


@pytest.mark.parametrize("n", [0, 23, 24, 255, 256, 65535, 65536])
def test_bytes_header_matches_cbor2(n):
    assert cbor.encode_bytes_header(n) + b"\0" * n == cbor2.dumps(b"\0" * n)


def test_bytes_header_for_huge_lengths():
    assert cbor.encode_bytes_header(2**32) == b"\x5b" + (2**32).to_bytes(8, "big")
    assert cbor.encode_bytes_header(2**32 - 1) == b"\x5a\xff\xff\xff\xff"


def test_decodes_the_allowed_subset():
    value = {b"name": b"x", b"args": {b"nodes": [b"\1" * 20], b"n": -5, b"t": True, b"f": False, b"z": None,
                                      b"s": {b"a", b"b"}, 1: 2}}
    assert cbor.decode(cbor.encode(value)) == value
    assert cbor.decode_sequence(cbor.encode(1) + cbor.encode(b"x")) == [1, b"x"]


@pytest.mark.parametrize("data, why", [
    (cbor2.dumps("text"), "text strings"),
    (cbor2.dumps({b"k": "v"}), "text strings"),
    (cbor2.dumps(1.5), "floating-point"),
    (bytes([0xF7]), "simple value"),                       # undefined
    (bytes([0x9F, 0x01, 0xFF]), "indefinite-length CBOR arrays"),
    (bytes([0xBF, 0x41, 0x61, 0x01, 0xFF]), "indefinite-length CBOR maps"),
    (bytes([0xC2, 0x41, 0x01]), "tag 2"),                   # bignum
    (bytes([0xD8, 0x1C, 0x81, 0xD8, 0x1D, 0x00]), "tag 28"),  # shared reference: a cyclic list
    (bytes([0xD9, 0x01, 0x02, 0x9F, 0xFF]), "definite-length array"),
    (bytes([0xD9, 0x01, 0x02, 0x81, 0x80]), "byte strings or integers"),  # unhashable set member
    (bytes([0xA1, 0x80, 0x01]), "byte strings or integers"),             # array as map key
    (bytes([0x5A, 0xFF, 0xFF, 0xFF, 0xFF, 0x00]), "truncated"),          # 4 GiB announced
    (bytes([0x9B]) + (2**40).to_bytes(8, "big"), "truncated"),          # 2^40 items announced
    (bytes([0x81] * 200 + [0x00]), "nested deeper"),
    (bytes([0x1C]), "reserved"),
    (bytes([0x5F, 0x61, 0x61, 0xFF]), "chunk"),            # text chunk in an indefinite byte string
    (bytes([0xFF]), "break"),
    (b"", "empty"),
    (cbor2.dumps(1) + b"\x00", "unexpected bytes"),
])
def test_strict_decoder_refuses_with_a_reason(data, why):
    with pytest.raises(cbor.CBORError, match=why):
        cbor.decode(data)
