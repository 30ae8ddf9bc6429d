"""Branch of each changeset: read once per revision, kept with the changelog index as it grows."""

from __future__ import annotations

import random

import pytest

from lfsserve.hg import branchmap
from lfsserve.hg.changelog import Changelog, encode_extra
from lfsserve.hg.node import NULLID, NULLREV, hash_revision
from lfsserve.hg.repository import Repository
from lfsserve.hg.revlog import RevlogWriter


def _commit(repo: Repository, specs: list[tuple[int, bytes, bool]], pad: int = 0) -> None:
    """Append changesets (p1 rev, branch, closes) to the changelog; `pad` bytes of description
    make the changelog big enough to be split (not inline)."""
    with repo.lock(), repo.transaction() as tr:
        cl = repo.open_revlog(Changelog, b"00changelog.i")
        w = RevlogWriter(cl, tr, index_name=b"00changelog.i", data_name=b"00changelog.d",
                         compression=repo.compression, sparse=repo.sparse, create_header=repo.revlog_header())
        for p1, branch, closes in specs:
            extra = {b"branch": branch, **({b"close": b"1"} if closes else {})}
            text = (b"0" * 40 + b"\nu\n0 0 " + encode_extra(extra) + b"\n\n" + b"d%d " % len(w)
                    + random.Random(len(w)).randbytes(pad // 2).hex().encode())
            n1 = w.node(p1) if p1 != NULLREV else NULLID
            w.add(hash_revision(text, n1, NULLID), n1, NULLID, len(w), 0, text=text)
        w.finalize()


@pytest.mark.parametrize("pad", [0, 200_000], ids=["inline", "split"])
def test_branch_info_is_extended_not_recomputed(tmp_path, pad):
    repo = Repository.init(tmp_path / "r")
    _commit(repo, [(NULLREV, b"default", False), (0, b"stable", False), (0, b"default", False)], pad)
    first = Repository.open(repo.root)
    info = branchmap.branch_info(first.changelog)
    assert info == [(b"default", False), (b"stable", False), (b"default", False)]

    _commit(repo, [(1, b"stable", True), (2, b"default", False)], pad)
    second = Repository.open(repo.root)
    assert second.changelog.index is not first.changelog.index
    inherited = second.changelog.index.prefix_derived["branches"]
    assert inherited is info  # the grown index carries what was read: only new revisions are read
    grown = branchmap.branch_info(second.changelog)
    assert grown == info + [(b"stable", True), (b"default", False)]
    assert len(info) == 3  # the older index's list is left as it was

    heads = branchmap.branch_heads(grown, second.parents_list, second.visible_mask)
    assert heads == {b"default": [4], b"stable": [3]}
    assert second.branch_tip(b"stable") == second.changelog.node(3)  # only a closed head: that one
    assert second.branchmap() == {b"default": [second.changelog.node(4)], b"stable": [second.changelog.node(3)]}


def test_rewritten_changelog_does_not_inherit(tmp_path):
    repo = Repository.init(tmp_path / "r")
    _commit(repo, [(NULLREV, b"a", False), (0, b"b", False)])
    old = Repository.open(repo.root)
    assert branchmap.branch_info(old.changelog) == [(b"a", False), (b"b", False)]
    # what a rollback and a different push leave: same length, other revisions
    (repo.store.path / "00changelog.i").unlink()
    _commit(Repository.open(repo.root), [(NULLREV, b"c", False), (0, b"d", False), (1, b"d", False)])
    new = Repository.open(repo.root)
    assert "branches" not in new.changelog.index.prefix_derived
    assert branchmap.branch_info(new.changelog) == [(b"c", False), (b"d", False), (b"d", False)]
