"""RevlogWriter + Transaction without external programs: round trips, inline->split, rollback,
and the incremental index cache."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from lfsserve.hg.node import NULLID, hash_revision
from lfsserve.hg.repository import Repository
from lfsserve.hg.revlog import INDEX_CACHE, Revlog, RevlogWriter, parse_index


def _texts(n: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    lines = [b"line %d\n" % i for i in range(50)]
    out = []
    for i in range(n):
        for _ in range(3):
            lines[rnd.randrange(len(lines))] = rnd.randbytes(40).hex().encode() + b"\n"
        lines.insert(rnd.randrange(len(lines)), rnd.randbytes(1500).hex().encode() + b"\n")
        out.append(b"".join(lines))
    return out


def _write(repo: Repository, name: bytes, texts: list[bytes], start_parent: bytes = NULLID) -> list[bytes]:
    nodes = []
    with repo.lock(), repo.transaction() as tr:
        rl = repo.open_revlog(Revlog, name)
        w = RevlogWriter(rl, tr, index_name=name, data_name=name[:-2] + b".d", compression=repo.compression,
                         sparse=repo.sparse, create_header=repo.revlog_header())
        parent = start_parent
        for i, text in enumerate(texts):
            node = hash_revision(text, parent, NULLID)
            base = len(w) - 1 if len(w) and i % 3 else None
            if base is not None:
                from lfsserve.hg.mdiff import textdiff

                w.add(node, parent, NULLID, 0, 0, text=text, delta_base=base,
                      delta=textdiff(w.revision(base), text))
            else:
                w.add(node, parent, NULLID, 0, 0, text=text)
            nodes.append(node)
            parent = node
        w.finalize()
    return nodes


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
            and "lock" not in p.name}


def test_write_read_split_and_incremental_index(tmp_path):
    repo = Repository.init(tmp_path / "r")
    name = b"data/some file.txt.i"
    texts = _texts(120)
    nodes = _write(repo, name, texts[:20])
    rl = repo.open_revlog(Revlog, name)
    assert rl.index.inline and len(rl) == 20
    assert [rl.revision(r, verify=True) for r in rl] == texts[:20]
    # grow past the inline threshold: the writer splits the revlog inside the transaction
    nodes += _write(repo, name, texts[20:], start_parent=nodes[-1])
    rl = repo.open_revlog(Revlog, name)
    assert not rl.index.inline and os.path.exists(rl.data_path)
    assert [rl.revision(r, verify=True) for r in rl] == texts
    # a later append is parsed incrementally, and equals a full parse
    more = _texts(130)[120:]
    _write(repo, name, more, start_parent=nodes[-1])
    before = INDEX_CACHE.peek(rl.index_path)
    extended = repo.open_revlog(Revlog, name).index
    assert extended is not before and len(extended) == 130
    full = parse_index(Path(rl.index_path).read_bytes())
    assert extended.entries == full.entries
    assert extended.nodemap == {**full.nodemap}


def test_rollback_restores_every_byte(tmp_path):
    repo = Repository.init(tmp_path / "r")
    name = b"data/x.i"
    texts = _texts(150, seed=3)
    nodes = _write(repo, name, texts[:10])
    before = _files(tmp_path / "r")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with repo.lock(), repo.transaction() as tr:
            rl = repo.open_revlog(Revlog, name)
            w = RevlogWriter(rl, tr, index_name=name, data_name=b"data/x.d", compression="zstd",
                             sparse=True, create_header=repo.revlog_header())
            parent = nodes[-1]
            for text in texts[10:]:  # enough to split the revlog
                node = hash_revision(text, parent, NULLID)
                w.add(node, parent, NULLID, 0, 0, text=text)
                parent = node
            assert not w.inline
            raise Boom()
    assert _files(tmp_path / "r") == before
    assert not (tmp_path / "r" / ".hg" / "store" / "journal").exists()
