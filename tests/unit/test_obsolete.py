"""Obsolescence markers: both obsstore formats, and pushed marker parts that hg would refuse."""

from __future__ import annotations

import base64
import io
import struct

import pytest

from lfsserve.config import Config
from lfsserve.hg import bundle2, obsolete
from lfsserve.hg.bundle2 import OutPart
from lfsserve.hg.error import Abort
from lfsserve.hg.obsolete import decode_markers, encode_markers
from lfsserve.hg.repository import Repository
from lfsserve.repos import RepoSettings
from lfsserve.wire import unbundle

from ..bundle_build import changegroup03

A, B, C, P1, P2 = (bytes([i]) * 20 for i in range(1, 6))
MARKERS = [
    (A, (B,), 0, ((b"operation", b"amend"), (b"user", b"Test <t@example.com>")), (1700000000.5, -3600), (P1,)),
    (B, (), 0, ((b"user", b"x"),), (0.0, 0), (P1, P2)),          # a prune, both parents recorded
    (C, (A, B), 4, (), (1.0, 7200), None),                       # a split, parents not recorded
    (P2, (C,), 0, (), (2.0, 0), ()),                             # parents recorded: none
]


@pytest.mark.parametrize("version", [0, 1])
def test_formats_round_trip(version):
    data = encode_markers(MARKERS, version)
    assert data[0] == version
    got_version, got = decode_markers(data)
    assert got_version == version and got == MARKERS
    # appending (no header) continues the same file
    assert decode_markers(data + encode_markers(MARKERS[:1], version, header=False))[1] == MARKERS + MARKERS[:1]


def test_format_1_layout():
    # >IdhHBBB: total size, seconds, tz in minutes, flags, successors, parents (3: none), metadata count
    one = encode_markers([(A, (B,), 0, ((b"k", b"vv"),), (5.0, -3600), None)], 1)[1:]
    assert one[:19] == struct.pack(">IdhHBBB", 19 + 40 + 2 + 3, 5.0, -60, 0, 1, 3, 1)
    assert one[19:] == A + B + b"\x01\x02" + b"kvv"


def test_format_0_layout():
    one = encode_markers([(A, (B,), 0, (), (5.0, 0), None)], 0)[1:]
    assert one == struct.pack(">BIB20s", 1, len(b"date:5.0 0"), 0, A) + B + b"date:5.0 0"


@pytest.mark.parametrize(("data", "message"), [
    (b"\x07", "parsing obsolete marker: unknown version 7"),
    (encode_markers(MARKERS, 1)[:-3], "parsing obsolete marker: truncated marker at byte"),
    (encode_markers(MARKERS, 0)[:-3], "parsing obsolete marker: metadata is too short"),
    (b"\x01" + struct.pack(">IdhHBBB", 10**6, 0.0, 0, 0, 255, 2, 255) + A, "parsing obsolete marker: truncated"),
    (b"\x01" + struct.pack(">IdhHBBB", 19 + 20, 0.0, 0, 0, 0, 9, 0) + A, "has 9 parents"),
    (b"\x00" + struct.pack(">BIB20s", 200, 0, 0, A), "truncated marker at byte 27: 200 successors"),
    (encode_markers([(A, (bytes(20),), 0, (), (0.0, 0), None)], 1),
     "bad obsolescence marker detected: invalid successors nullid"),
])
def test_bad_marker_data_is_refused(data, message):
    with pytest.raises(Abort) as exc:
        decode_markers(data)
    assert message in str(exc.value)


def test_relevant_markers_follow_predecessors_and_prunes():
    store = obsolete.ObsStore(1, list(MARKERS))
    # B: its own prune, A -> B (B a successor), then C -> (A, B) (A a successor), then P2 -> C
    assert store.relevant([B]) == set(MARKERS)
    assert store.relevant([bytes([8]) * 20]) == set()
    # P1 has children markers; the prune of B (parents P1, P2) is relevant to it
    assert MARKERS[1] in store.relevant([P1])


def _push(repo: Repository, parts: list[OutPart]) -> list[tuple[bytes, dict[bytes, bytes]]]:
    reply = unbundle.unbundle(Config(), repo, b"force".hex().encode(), io.BytesIO(bundle2.encode_parts(parts)))
    out = []
    for part in bundle2.BundleReader(io.BytesIO(reply.body[4:])).parts():
        out.append((part.name, dict(part.params)))
        part.read_all(1 << 20)
    return out


def test_pushed_markers_are_checked_before_anything_is_kept(tmp_path):
    settings = RepoSettings(lock_timeout=5, evolution=("all",))
    with settings.apply(Repository.init(tmp_path / "r")) as repo:
        reply = _push(repo, [OutPart(b"CHANGEGROUP", [(b"version", b"03")], data=changegroup03(b"f", b"x\n"))])
        assert reply[0][0] == b"reply:changegroup"
        (public,) = repo.heads()
        obsstore = repo.store.path / "obsstore"
        unknown = bytes([9]) * 20
        good = encode_markers([(unknown, (A,), 0, (), (0.0, 0), None)], 1)
        for data, message in [
            (good[:-5], b"parsing obsolete marker"),
            (b"\x01" + struct.pack(">IdhHBBB", 19 + 20 * 256, 0.0, 0, 0, 255, 0, 0) + A, b"parsing obsolete marker"),
            # a publishing repository: a public changeset cannot be obsoleted
            (encode_markers([(public, (A,), 0, (), (0.0, 0), None)], 0),
             b"cannot obsolete public changeset: " + public.hex()[:12].encode()),
        ]:
            reply = _push(repo, [OutPart(b"OBSMARKERS", data=good), OutPart(b"OBSMARKERS", data=data)])
            assert reply[-1][0] == b"error:abort" and reply[-1][1][b"message"].startswith(message), reply
            assert not obsstore.exists() and len(repo.obsstore) == 0  # the good part was rolled back too
        # too large a part: refused without being read whole
        reply = _push(repo, [OutPart(b"OBSMARKERS", data=b"\x01" + bytes(unbundle.MAX_OBSMARKERS_PART))])
        assert reply[-1][0] == b"error:abort" and b"larger than" in reply[-1][1][b"message"]
        # markers naming changesets the server does not have are kept, as hg keeps them, once
        for new in (b"1", b"0"):
            reply = _push(repo, [OutPart(b"OBSMARKERS", data=good)])
            assert (b"reply:obsmarkers", {b"in-reply-to": b"0", b"new": new}) in reply
        assert obsstore.read_bytes() == good and repo.obsstore.markers == decode_markers(good)[1]
        assert repo.heads() == [public]


def test_obsolete_pushkey_namespace_for_old_clients(tmp_path):
    with RepoSettings(lock_timeout=5, evolution=("all",)).apply(Repository.init(tmp_path / "r")) as repo:
        assert b"obsolete" in repo.listkeys(b"namespaces") and repo.listkeys(b"obsolete") == {}
        many = [(bytes([i % 256, i // 256]) * 10, (A,), 0, ((b"user", b"u" * 100),), (float(i), 0), None)
                for i in range(200)]
        payload = base64.b85encode(encode_markers(many[:150], 0))
        with repo.lock(), repo.transaction() as tr:
            assert repo.pushkey(tr, b"obsolete", b"dump0", b"", payload)
            assert not repo.pushkey(tr, b"obsolete", b"dump1", b"old", payload)  # an old value: refused
            assert not repo.pushkey(tr, b"obsolete", b"other", b"", payload)
            repo.add_markers(tr, many[100:])
        keys = repo.listkeys(b"obsolete")
        # format 0 in base85 chunks of at most 5300 bytes, as hg splits them
        assert len(keys) > 1 and all(len(base64.b85decode(v)) <= 5301 for v in keys.values())
        got = [m for v in keys.values() for m in decode_markers(base64.b85decode(v))[1]]
        assert sorted(got) == sorted(many)
    with RepoSettings(lock_timeout=5).apply(Repository.open(tmp_path / "r")) as repo:
        # evolution off: markers still hide what they obsolete, but are not exchanged
        assert b"obsolete" not in repo.listkeys(b"namespaces") and repo.listkeys(b"obsolete") == {}


def test_topic_branch_map_and_heads(tmp_path):
    from lfsserve.hg.branchmap import fqbn, parse_fqbn
    from lfsserve.wire.v1.commands import COMMANDS, Session

    for name, parts in [(b"default", (b"default", b"none", b"")),
                        (b"default//feature", (b"default", b"none", b"feature")),
                        (b"stable//team/fix", (b"stable", b"team", b"fix"))]:
        assert parse_fqbn(name) == parts and fqbn(*parts) == name
    path = tmp_path / "r"
    Repository.init(path).close()
    (path / ".hg" / "hgrc").write_text("[phases]\npublish = no\n[extensions]\ntopic =\n")
    with RepoSettings(lock_timeout=5).apply(Repository.open(path)) as repo:
        for cg in (changegroup03(b"a", b"a\n"), changegroup03(b"b", b"b\n", extra=b"topic:feature"),
                   changegroup03(b"c", b"c\n", extra=b"topic:fix\0topic-namespace:team")):
            assert _push(repo, [OutPart(b"CHANGEGROUP", [(b"version", b"03")], data=cg)])[0][0] == b"reply:changegroup"
        bm = repo.branchmap_tns()
        assert sorted(bm) == [b"default", b"default//feature", b"default//team/fix"]
        assert sorted(repo.branchmap()[b"default"]) == sorted(n for ns in bm.values() for n in ns)
        session = Session(Config(), repo)
        tns_heads = COMMANDS["tns_heads"].func
        assert tns_heads(session, namespaces=b"*".hex().encode()).split() == \
            [n.hex().encode() for n in repo.heads()]
        # the `team` namespace was not asked for: its head is left out
        assert sorted(tns_heads(session, namespaces=b"other".hex().encode()).split()) == \
            sorted(n.hex().encode() for n in bm[b"default"] + bm[b"default//feature"])
        assert COMMANDS["branchmaptns"].func(session).count(b"\n") == 2
