"""DeltaEmitter: the one delta policy of changegroups and wire v2 (bases the receiver has)."""

from __future__ import annotations

import random

import pytest

from lfsserve.hg.mdiff import patch, textdiff
from lfsserve.hg.node import NULLID, NULLREV, hash_revision
from lfsserve.hg.repository import Repository
from lfsserve.hg.revlog import Revlog, RevlogWriter
from lfsserve.hg.storageutil import DeltaEmitter


@pytest.fixture(scope="module")
def branchy(tmp_path_factory):
    """A 60-revision revlog with branches and merges; stored deltas against p1, the previous
    revision, or nothing, so every branch of the policy is taken."""
    repo = Repository.init(tmp_path_factory.mktemp("se") / "r")
    name = b"data/f.i"
    rnd = random.Random(7)
    texts: list[bytes] = []
    with repo.lock(), repo.transaction() as tr:
        rl = repo.open_revlog(Revlog, name)
        w = RevlogWriter(rl, tr, index_name=name, data_name=b"data/f.d", compression=repo.compression,
                         sparse=repo.sparse, create_header=repo.revlog_header())
        for i in range(60):
            p1 = rnd.randrange(-1, i) if i else NULLREV
            p2 = rnd.randrange(-1, i) if i > 3 and rnd.random() < 0.2 else NULLREV
            if p2 == p1:
                p2 = NULLREV
            lines = (texts[p1] if p1 >= 0 else b"").splitlines(keepends=True) or [b"start\n"]
            lines.insert(rnd.randrange(len(lines) + 1), b"rev %d %s\n" % (i, rnd.randbytes(8).hex().encode()))
            text = b"".join(lines)
            n1, n2 = (w.node(p) if p >= 0 else NULLID for p in (p1, p2))
            base = rnd.choice([None, p1 if p1 >= 0 else None, i - 1 if i else None])
            kw = {} if base is None else {"delta_base": base, "delta": textdiff(w.revision(base), text)}
            w.add(hash_revision(text, n1, n2), n1, n2, i, 0, text=text, **kw)
            texts.append(text)
        w.finalize()
    rl = repo.open_revlog(Revlog, name)
    yield rl, texts
    rl.close()


@pytest.mark.parametrize("redelta", [False, True])
@pytest.mark.parametrize("have_parents", [True, False])
@pytest.mark.parametrize("subset", ["all", "tail", "sparse"])
def test_every_delta_is_against_a_base_the_receiver_has(branchy, have_parents, subset, redelta):
    rl, texts = branchy
    revs = {"all": range(60), "tail": range(30, 60), "sparse": range(1, 60, 3)}[subset]
    em = DeltaEmitter(rl, have_parents=have_parents, redelta_fulltexts=redelta)
    sent: set[int] = set()
    reused = 0
    for rev in revs:
        base, data = em.next(rev)
        if base == NULLREV:
            assert data == texts[rev]
            # a full text goes as such only when stored so, or when the receiver has no base
            assert (rl.deltaparent(rev) == NULLREV and not redelta) or not (
                sent or (have_parents and any(p != NULLREV for p in rl.parentrevs(rev))))
        else:
            assert base in sent or (have_parents and base in rl.parentrevs(rev))
            assert patch(texts[base], data) == texts[rev]
            reused += base == rl.deltaparent(rev)
        sent.add(rev)
    assert reused  # stored deltas are reused where their base qualifies


def test_against_previous_chains_every_revision(branchy):
    rl, texts = branchy
    em = DeltaEmitter(rl, against_previous=True)
    prev = NULLREV
    for rev in range(10, 60, 2):
        base, data = em.next(rev)
        assert base == (prev if prev != NULLREV else rl.parentrevs(rev)[0])
        assert (patch(texts[base], data) if base != NULLREV else data) == texts[rev]
        prev = rev
