"""Unit tests of the engine's format code: deltas, store names, changesets, pointers, phases, tags, DAG."""

from __future__ import annotations

import random
import zlib

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from lfsserve.hg import dagop, mdiff, phases
from lfsserve.hg.changelog import decode_extra, encode_extra, parse_changeset
from lfsserve.hg.error import CorruptRevlog
from lfsserve.hg.filelog import LfsPointerError, pack_meta, parse_lfs_pointer, parse_meta
from lfsserve.hg.revlog import Compressor, decompress
from lfsserve.hg.store import decode_dir, encode_dir, encode_path
from lfsserve.hg.tags import live_tags, merge_tags, parse_tags

lines = st.lists(st.sampled_from([b"a\n", b"b\n", b"c", b"\n", b"long line here\n", b"\x00\xff\n", b"x"]),
                 max_size=40).map(b"".join)


@given(lines, lines)
@settings(max_examples=300, deadline=None)
def test_textdiff_then_patch_gives_the_target(a, b):
    d = mdiff.textdiff(a, b)
    assert mdiff.patch(a, d) == b
    assert mdiff.patched_size(len(a), d) == len(b)


def test_textdiff_is_small_for_small_changes():
    a = b"".join(b"entry %05d\0%040x\n" % (i, i) for i in range(3000))
    b = a.replace(b"entry 01000\0", b"entry 01000x\0")
    assert len(mdiff.textdiff(a, b)) < 200


def test_patch_rejects_malformed_deltas():
    base = b"0123456789"
    with pytest.raises(mdiff.PatchError):
        mdiff.patch(base, mdiff._pack_hunk(5, 20, 0))  # past the end
    with pytest.raises(mdiff.PatchError):
        mdiff.patch(base, mdiff._pack_hunk(5, 6, 0) + mdiff._pack_hunk(2, 3, 0))  # out of order
    with pytest.raises(mdiff.PatchError):
        mdiff.patch(base, mdiff._pack_hunk(0, 1, 10) + b"abc")  # truncated data
    with pytest.raises(mdiff.PatchError):
        mdiff.patch(base, b"\0\0\0")  # truncated header
    assert mdiff.patch(base, mdiff.full_replacement(10, b"new")) == b"new"
    assert mdiff.patch_chain(b"", [mdiff.trivial_header(3) + b"abc", mdiff.textdiff(b"abc", b"abd")]) == b"abd"


def test_store_encoding_examples_from_hg_help():
    # facts documented in `hg help internals.revlogs` and shown by `hg debugindex` on real repos
    enc = lambda p: encode_path(p, fncache=True, dotencode=True)  # noqa: E731
    assert enc(b"data/foo.txt.i") == b"data/foo.txt.i"
    assert enc(b"data/FOO.i") == b"data/_f_o_o.i"
    assert enc(b"data/aux.txt.i") == b"data/au~78.txt.i"
    assert enc(b"data/.hidden.i") == b"data/~2ehidden.i"
    assert enc(b"data/a:b.i") == b"data/a~3ab.i"
    assert enc(b"data/foo.i/bar.i") == b"data/foo.i.hg/bar.i"
    long = b"data/" + b"/".join([b"Directory%02d" % i for i in range(20)]) + b"/file.txt.i"
    hashed = enc(long)
    assert hashed.startswith(b"dh/director/director/") and hashed.endswith(b".i") and len(hashed) <= 120
    assert encode_path(b"data/FOO.i", fncache=False, dotencode=False) == b"data/_f_o_o.i"
    assert decode_dir(encode_dir(b"data/a.i/b.d/c.hg/x.i")) == b"data/a.i/b.d/c.hg/x.i"


def test_store_encoding_matches_mercurial_on_random_paths():
    hgstore = pytest.importorskip("mercurial.store")
    rnd = random.Random(5)
    alphabet = b"abcXYZ_.~: -/\x01\xe9\xff?"
    for _ in range(3000):
        raw = bytes(rnd.choice(alphabet) for _ in range(rnd.choice([5, 40, 110, 125, 250])))
        parts = [p for p in raw.split(b"/") if p]
        if not parts:
            continue
        path = b"data/" + b"/".join(parts) + b".i"
        assert encode_path(path, fncache=True, dotencode=True) == hgstore._pathencode(path)
        assert encode_path(path, fncache=True, dotencode=False) == hgstore._hybridencode(path, False)


def test_changeset_parsing_and_extras():
    extra = {b"branch": b"stable", b"weird": b"a\\b\nc\0d\re", b"close": b"1"}
    text = (b"0123456789abcdef0123456789abcdef01234567\nAlice <a@x>\n1000 -3600 " + encode_extra(extra)
            + b"\nf1\ndir/f2\n\nthe description\n\nmore")
    e = parse_changeset(text)
    assert e.manifest.hex() == "0123456789abcdef0123456789abcdef01234567"
    assert (e.user, e.time, e.tz) == (b"Alice <a@x>", 1000, -3600)
    assert e.extra == extra and e.branch == b"stable" and e.closes_branch
    assert e.files == [b"f1", b"dir/f2"]
    assert e.description == b"the description\n\nmore"
    assert parse_changeset(b"0" * 40 + b"\nu\n0 0\n\n").branch == b"default"
    assert decode_extra(b"") == {b"branch": b"default"}
    with pytest.raises(CorruptRevlog):
        parse_changeset(b"not a changeset")


def test_file_metadata():
    text = pack_meta({b"copy": b"a", b"copyrev": b"0" * 40}, b"data")
    meta, off = parse_meta(text)
    assert meta == {b"copy": b"a", b"copyrev": b"0" * 40} and text[off:] == b"data"
    escaped = pack_meta({}, b"\x01\nlooks like metadata")
    assert parse_meta(escaped)[0] == {} and escaped[parse_meta(escaped)[1]:] == b"\x01\nlooks like metadata"


def test_lfs_pointer_parsing():
    oid = "a" * 64
    good = (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + oid.encode()
            + b"\nsize 12\nx-is-binary 0\nx-hg-copy a.bin\nx-hg-copyrev " + b"1" * 40 + b"\n")
    p = parse_lfs_pointer(good)
    assert (p.oid, p.size) == (oid, 12)
    assert p.copy_source == (b"a.bin", b"\x11" * 20)
    for bad in (good.replace(b"sha256:", b"sha1:"), good.replace(b"size 12", b"size x"),
                good.replace(b"version https", b"version http"), b"just text\n",
                good.replace(b"x-is-binary", b"X-Bad")):
        with pytest.raises(LfsPointerError):
            parse_lfs_pointer(bad)


@pytest.mark.parametrize("engine", ["zstd", "zlib"])
def test_compression_roundtrip(engine):
    c = Compressor(engine)
    for data in (b"", b"x", b"\0starts with nul", b"small", bytes(range(256)) * 40, b"a" * 100000):
        assert decompress(c.compress(data)) == data
    assert decompress(b"u" + b"raw") == b"raw"
    assert decompress(zlib.compress(b"z" * 1000)) == b"z" * 1000
    # zstd frames written without a content size (streaming writers) decode too
    cobj = zstandard.ZstdCompressor().compressobj()
    frame = cobj.compress(b"q" * 5000) + cobj.flush()
    assert decompress(frame) == b"q" * 5000
    with pytest.raises(CorruptRevlog):
        decompress(b"?unknown")


def _random_dag(n: int, rnd: random.Random) -> list[tuple[int, int]]:
    parents = []
    for r in range(n):
        if r == 0 or rnd.random() < 0.05:
            parents.append((-1, -1))
        elif rnd.random() < 0.2 and r > 2:
            a, b = rnd.sample(range(r), 2)
            parents.append((a, b))
        else:
            parents.append((rnd.randrange(max(0, r - 3), r), -1))
    return parents


def _ancestors(parents, revs):
    out, stack = set(), [r for r in revs if r >= 0]
    while stack:
        r = stack.pop()
        if r not in out:
            out.add(r)
            stack.extend(p for p in parents[r] if p >= 0)
    return out


def test_missing_and_heads_against_brute_force():
    rnd = random.Random(2)
    for _ in range(30):
        parents = _random_dag(rnd.randint(1, 80), rnd)
        n = len(parents)
        common = rnd.sample(range(n), min(n, rnd.randint(0, 3)))
        heads = rnd.sample(range(n), min(n, rnd.randint(1, 3)))
        want = sorted(_ancestors(parents, heads) - _ancestors(parents, common))
        assert dagop.missing(parents, common, heads) == want
        children = {p for ps in parents for p in ps if p >= 0}
        assert dagop.heads_of(parents) == [r for r in range(n) if r not in children]
        a, b = rnd.randrange(n), rnd.randrange(n)
        assert dagop.is_ancestor(parents, a, b) == (a in _ancestors(parents, [b]))


def test_phases_roots_roundtrip():
    rnd = random.Random(3)
    for _ in range(30):
        parents = _random_dag(rnd.randint(1, 60), rnd)
        roots = [(rnd.choice([1, 2, 32]), rnd.randrange(len(parents))) for _ in range(rnd.randint(0, 4))]
        arr = phases.compute_phases(parents, roots)
        for r, (p1, p2) in enumerate(parents):
            assert arr[r] >= max(arr[p1] if p1 >= 0 else 0, arr[p2] if p2 >= 0 else 0)
        minimal = phases.roots_for(parents, arr)
        again = phases.compute_phases(parents, [(p, r) for p, rs in minimal.items() for r in rs])
        assert again == arr
    nodes = [b"\x01" * 20, b"\x02" * 20]
    text = phases.format_phaseroots({1: [nodes[1]], 2: [nodes[0]]})
    assert phases.parse_phaseroots(text + b"garbage\n0 " + b"ab" * 20 + b"\n") == [(1, nodes[1]), (2, nodes[0])]


def test_tags_merge_like_hg():
    n = [bytes([i]) * 20 for i in range(1, 6)]
    older = parse_tags(b"%s v1\n%s v2\n" % (n[0].hex().encode(), n[1].hex().encode()))
    # the newer head moves v1 and deletes v2
    newer = parse_tags(b"%s v1\n%s v1\n%s v2\n%s v2\n" % (n[0].hex().encode(), n[2].hex().encode(),
                                                       n[1].hex().encode(), b"0" * 40))
    merged = dict(older)
    merge_tags(merged, newer)
    assert live_tags(merged) == {b"v1": n[2]}
    # an older head that already superseded the newer head's value keeps it
    a = parse_tags(b"%s t\n%s t\n" % (n[3].hex().encode(), n[4].hex().encode()))
    b = parse_tags(b"%s t\n" % n[3].hex().encode())
    merged = dict(a)
    merge_tags(merged, b)
    assert live_tags(merged) == {b"t": n[4]}


def test_verify_progress_line_only_on_a_terminal(monkeypatch, capsys):
    import sys

    from lfsserve.cli import _ProgressLine

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    p = _ProgressLine("repo")
    p("files", 1, 2)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    p = _ProgressLine("repo")
    p("files", 5, 10)
    p.clear()
    err = capsys.readouterr().err
    assert "\rrepo: files" in err and "5/10" in err and "#" * 15 in err
