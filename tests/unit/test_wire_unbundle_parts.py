"""bundle2 push parts go through the part-handler registry (wire/unbundle.py): one handler per
part type, each given the push's PushOperation, on a real engine repository."""

from __future__ import annotations

import io

from lfsserve.config import Config
from lfsserve.hg import bundle2
from lfsserve.hg.bundle2 import OutPart
from lfsserve.hg.repository import Repository
from lfsserve.repos import RepoSettings
from lfsserve.wire import unbundle


def _push(repo: Repository, parts: list[OutPart]) -> list[tuple[bytes, dict[bytes, bytes]]]:
    body = io.BytesIO(bundle2.encode_parts(parts))
    reply = unbundle.unbundle(Config(), repo, b"force".hex().encode(), body)
    reader = bundle2.BundleReader(io.BytesIO(reply.body[4:]))
    out = []
    for part in reader.parts():
        out.append((part.name, dict(part.params)))
        part.read_all(1 << 20)
    return out


def test_registry_declares_the_parts_we_accept():
    assert {b"replycaps", b"check:heads", b"check:updated-heads", b"check:phases", b"check:bookmarks",
            b"changegroup", b"phase-heads", b"bookmarks", b"pushkey", b"obsmarkers"} == set(unbundle.PART_HANDLERS)
    assert unbundle.PART_HANDLERS[b"changegroup"].params == {b"version", b"nbchanges", b"targetphase"}


def test_parts_are_dispatched_and_refused_as_hg_does(tmp_path):
    with RepoSettings(lock_timeout=5).apply(Repository.init(tmp_path / "r")) as repo:
        # a mandatory parameter the changegroup handler does not declare: unsupported content
        reply = _push(repo, [OutPart(b"CHANGEGROUP", [(b"version", b"02"), (b"bogus", b"1")])])
        assert reply[-1] == (b"error:unsupportedcontent", {b"parttype": b"changegroup", b"params": b"bogus"})
        # a mandatory part nobody handles: unsupported content naming it; an advisory one is skipped
        reply = _push(repo, [OutPart(b"cache:rev-branch-cache"), OutPart(b"REMOTE-CHANGEGROUP")])
        assert reply[-1] == (b"error:unsupportedcontent", {b"parttype": b"remote-changegroup"})
        # obsolescence markers where the repository does not create them: hg's refusal
        reply = _push(repo, [OutPart(b"OBSMARKERS", data=b"\1")])
        assert reply[-1] == (b"error:abort", {b"message": b"creating obsolete markers is not enabled on this repo"})
        # check:heads against the empty repository passes; a pushkey on a missing bookmark replies 0
        reply = _push(repo, [OutPart(b"CHECK:HEADS", data=b"\0" * 20),
                             OutPart(b"pushkey", [], [(b"namespace", b"bookmarks"), (b"key", b"b"),
                                                      (b"old", b"1" * 40), (b"new", b"")])])
        assert (b"reply:pushkey", {b"in-reply-to": b"1", b"return": b"0"}) in reply
        assert repo.bookmarks() == {}


def test_divergent_bookmarks_refused_but_at_bookmarks_accepted(tmp_path):
    # hg's rule (bookmarks.isdivergent): `name@path` is a client's divergent copy and is refused;
    # `@` (the bookmark hg checks out on clone) and a name ending in `@` are ordinary bookmarks.
    with RepoSettings(lock_timeout=5).apply(Repository.init(tmp_path / "r")) as repo:
        nullid = b"\0" * 20
        reply = _push(repo, [OutPart(b"BOOKMARKS", data=bundle2.encode_bookmarks([(b"feature@default", nullid)]))])
        assert reply[-1] == (b"error:abort", {b"message": b"cannot accept divergent bookmark feature@default!"})
        reply = _push(repo, [OutPart(b"BOOKMARKS", data=bundle2.encode_bookmarks([(b"@", nullid),
                                                                                   (b"release@", nullid)]))])
        assert not any(name.startswith(b"error") for name, _ in reply), reply
        assert repo.bookmarks() == {b"@": nullid, b"release@": nullid}
