"""Wire v1 commands and exchange helpers that need no repository engine: the heads checks of
unbundle, bundlecaps parsing, capabilities, byte-answer formats (values from the transcripts)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest

from lfsserve.config import Config
from lfsserve.hg.bundle2 import decode_caps
from lfsserve.hg.error import PushRaced, UnknownRevision
from lfsserve.repos import AbsentRepo
from lfsserve.wire import getbundle, unbundle
from lfsserve.wire.protocol import BadRequest
from lfsserve.wire.v1.commands import COMMANDS, Session, bind_args

HEAD_14 = bytes.fromhex("79c7dd265679382f7937de122c2c2e14c46abd83")


class FakeRepo(AbsentRepo):
    def __init__(self, heads, branchmap=None, marks=None):
        super().__init__(Path("fake"))  # publishing, as the default settings
        self._heads, self._branchmap, self._marks = heads, branchmap or {}, marks or {}

    def heads(self):
        return list(self._heads)

    def branchmap(self):
        return self._branchmap

    def lookup(self, key):
        if key == b"tip":
            return self._heads[0]
        raise UnknownRevision(key)

    def listkeys(self, namespace):
        if namespace == b"bookmarks":
            return {k: v.hex().encode() for k, v in self._marks.items()}
        return super().listkeys(namespace)


def session(repo, **hg) -> Session:
    cfg = Config()
    for k, v in hg.items():
        setattr(cfg.hg, k, v)
    return Session(cfg, repo)


def call(name, s, **args):
    cmd = COMMANDS[name]
    return cmd.func(s, **bind_args(cmd, args))


def test_unbundle_heads_argument_forms():
    repo = FakeRepo([HEAD_14])
    # transcript 14: bundle1 push with "hashed" + sha1 of the sorted binary heads
    their = unbundle.parse_unbundle_heads(b"686173686564 7f288ae90956792e637675b5143221f22bf35d29")
    assert their == [b"hashed", bytes.fromhex("7f288ae90956792e637675b5143221f22bf35d29")]
    unbundle.check_heads(repo, their, "preparing changes")
    unbundle.check_heads(repo, unbundle.parse_unbundle_heads(b"666f726365"), "x")  # "force"
    unbundle.check_heads(repo, [HEAD_14], "x")
    with pytest.raises(PushRaced, match="repository changed while preparing changes - please try again"):
        unbundle.check_heads(repo, [b"hashed", b"\x01" * 20], "preparing changes")
    with pytest.raises(BadRequest):
        unbundle.parse_unbundle_heads(b"xyz")
    # an empty repository's only head is the null node, as hg shows it
    unbundle.check_heads(FakeRepo([]), [b"\0" * 20], "x")


def test_bundlecaps_of_transcript_02():
    value = urllib.parse.unquote_to_bytes(
        "HG20%2Cbundle2%3DHG20%250Abookmarks%250Achangegroup%253D01%252C02%252C03%250Acheckheads%253Drelated"
        "%250Aerror%253Dabort%252Cunsupportedcontent%252Cpushraced%252Cpushkey%250Ahgtagsfnodes%250Alistkeys"
        "%250Aphases%253Dheads%250Apushkey%250Astream%253Dv2")
    plain, b2 = getbundle.parse_bundlecaps(value)
    assert b"HG20" in plain
    assert b2["changegroup"] == ["01", "02", "03"] and b2["phases"] == ["heads"] and "hgtagsfnodes" in b2


def test_capabilities_of_a_repository_not_created_yet():
    caps = call("capabilities", session(AbsentRepo(Path("new")))).decode().split(" ")
    assert caps == sorted(caps)
    assert "lfs" in caps and "lfs-serve" not in caps and "unbundlehash" in caps
    assert "streamreqs=generaldelta,revlog-compression-zstd,revlogv1,sparserevlog" in caps
    (b2,) = [c for c in caps if c.startswith("bundle2=")]
    decoded = decode_caps(urllib.parse.unquote_to_bytes(b2[len("bundle2="):]))
    assert decoded["error"] == ["abort", "unsupportedcontent", "pushraced", "pushkey"]
    assert "remote-changegroup" not in decoded and decoded["stream"] == ["v2"]
    assert "httppostargs" not in caps  # only where the front end says no 401 can follow
    s = session(AbsentRepo(Path("new")))
    s.offer_postargs = True
    assert "httppostargs" in call("capabilities", s).decode().split(" ")
    s = session(AbsentRepo(Path("new")), stream_clone=False, httppostargs=False, compression=["zlib"])
    s.offer_postargs = True
    caps = call("capabilities", s).decode().split(" ")
    assert not [c for c in caps if c.startswith("stream")] and "httppostargs" not in caps
    assert "compression=zlib" in caps and "stream%3Dv2" not in caps[2]


def test_byte_answers():
    other = bytes.fromhex("4eb53cf01ea5d9db50694e537b96ad5af5b1f49d")
    repo = FakeRepo([HEAD_14], branchmap={b"default": [HEAD_14], b"a b/\xc3\xa9": [other, HEAD_14]},
                    marks={b"feature": HEAD_14})
    s = session(repo)
    assert call("heads", s) == HEAD_14.hex().encode() + b"\n"
    assert call("heads", session(FakeRepo([]))) == b"0" * 40 + b"\n"
    assert call("lookup", s, key=b"tip") == b"1 " + HEAD_14.hex().encode() + b"\n"
    assert call("lookup", s, key=b"doesnotexist") == b"0 unknown revision 'doesnotexist'\n"  # T:16
    assert call("branchmap", s) == (b"a%20b/%C3%A9 " + other.hex().encode() + b" " + HEAD_14.hex().encode()
                                    + b"\ndefault " + HEAD_14.hex().encode())
    assert call("listkeys", s, namespace=b"namespaces") == b"bookmarks\t\nnamespaces\t\nphases\t"  # T:01
    assert call("listkeys", s, namespace=b"phases") == b"publishing\tTrue"
    # batch: results escaped and joined with ';' (the tab and newline need no escape, '=' would)
    out = call("batch", s, cmds=b"heads ;lookup key=tip;listkeys namespace=bookmarks")
    assert out == (HEAD_14.hex().encode() + b"\n;1 " + HEAD_14.hex().encode() + b"\n;feature\t"
                   + HEAD_14.hex().encode())
    with pytest.raises(BadRequest, match="cannot be batched"):
        call("batch", s, cmds=b"getbundle heads=")
    with pytest.raises(BadRequest, match="needs argument 'key'"):
        bind_args(COMMANDS["lookup"], {})


def test_registry_declares_each_command_once_with_permissions():
    push = {name for name, c in COMMANDS.items() if c.permission == "push"}
    assert push == {"unbundle", "pushkey"}
    assert {"getbundle", "changegroup", "changegroupsubset", "stream_out"} <= \
        {n for n, c in COMMANDS.items() if c.kind == "stream"}
