"""check_manifest_delta: a pushed manifest revision checked through its delta against a valid base
must be accepted exactly when check_manifest accepts its whole text (with the same message), and
must report every entry that differs from the base.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lfsserve.hg.error import CorruptRevlog
from lfsserve.hg.manifest import check_manifest, check_manifest_delta, line_aligned, parse_manifest
from lfsserve.hg.mdiff import patch

N1, N2, N3 = b"1" * 40, b"2" * 40, b"a" * 40


def entry(path: bytes, node: bytes = N1, flag: bytes = b"") -> bytes:
    return path + b"\0" + node + flag + b"\n"


BASE = b"".join(entry(p) for p in (b"a", b"b/c", b"b/d", b"e", b"f"))


def delta(*hunks: tuple[int, int, bytes]) -> bytes:
    return b"".join(struct.pack(">lll", s, e, len(d)) + d for s, e, d in hunks)


def full_verdict(text: bytes) -> str | None:
    try:
        check_manifest(text)
    except CorruptRevlog as exc:
        return exc.message
    return None


def delta_verdict(base: bytes, d: bytes) -> str | None:
    """check_manifest_delta's verdict on `d` applied to `base`, after checking it agrees with the
    full check (verdict and message) and, when accepted, reports every entry that changed."""
    text = patch(base, d)
    try:
        changes = check_manifest_delta(text, d)
    except CorruptRevlog as exc:
        assert exc.message == full_verdict(text)
        return exc.message
    assert full_verdict(text) is None
    new, old = parse_manifest(text), parse_manifest(base)
    assert {p: v for p, v in new.items() if old.get(p) != v}.items() <= changes.items()
    assert all(new[p] == v for p, v in changes.items())
    return None


def at(path: bytes, text: bytes = BASE) -> int:
    """Offset of `path`'s line in `text`."""
    return 0 if text.startswith(path + b"\0") else text.index(b"\n" + path + b"\0") + 1


def test_delta_cutting_lines_mid_way_is_checked_on_whole_lines():
    # replace from inside "a"'s node to inside "b/d"'s path: the new text is still valid
    s, e = at(b"a") + 10, at(b"b/d") + 2
    new = patch(BASE, delta((s, e, BASE[s:e].replace(N1, N2))))
    assert delta_verdict(BASE, delta((s, e, BASE[s:e].replace(N1, N2)))) is None
    assert parse_manifest(new)[b"b/c"] == (bytes.fromhex("22" * 20), b"")
    # the same cut, but the bytes rejoin "a"'s line with half of another path: one line, two NULs
    assert "malformed manifest line" in delta_verdict(BASE, delta((s, e, b"")))
    # a hunk ending in a newline, after which the base resumes inside a path: the rest ("c") is a
    # well-formed line, but out of order with the unchanged line after it
    s = at(b"b/c")
    assert delta_verdict(BASE, delta((s, s + 2, entry(b"b/a")))) == \
        "manifest entries not in sorted order at b'b/d'"
    # a cut through a node keeping 39 hex digits
    assert "malformed manifest line" in delta_verdict(BASE, delta((at(b"e") + 5, at(b"e") + 6, b"")))


def test_hunk_breaking_order_only_with_the_neighbour_line():
    # the hunk itself is one valid line, but it sorts before the unchanged line preceding it
    s = at(b"e")
    message = delta_verdict(BASE, delta((s, s + len(entry(b"e")), entry(b"b/a"))))
    assert message == "manifest entries not in sorted order at b'b/a'"
    # ... or after the unchanged line following it
    s = at(b"b/c")
    message = delta_verdict(BASE, delta((s, s + len(entry(b"b/c")), entry(b"z"))))
    assert message == "manifest entries not in sorted order at b'b/d'"
    # a pure deletion joining two lines that were each fine
    assert delta_verdict(BASE, delta((at(b"b/c"), at(b"e"), b""))) is None


def test_bad_line_in_the_middle_of_a_hunk():
    s, e = at(b"b/c"), at(b"f")
    lines = entry(b"b/c", N2) + entry(b"b/cc", N2, b"xl") + entry(b"b/d", N2) + entry(b"e", N2)
    assert delta_verdict(BASE, delta((s, e, lines))) == \
        "malformed manifest line b'b/cc\\x00" + "2" * 40 + "xl'"
    for bad in (entry(b"b/cc", b"2" * 39), entry(b"b/cc", N3.upper()), b"b/cc\n", b"b/cc\0\0" + N2 + b"\n",
                entry(b"b/c\rc"), entry(b"b/cc", N2, b"t")):
        lines = entry(b"b/c", N2) + bad + entry(b"b/d", N2)
        assert "malformed manifest line" in delta_verdict(BASE, delta((s, at(b"e"), lines))), bad


def test_removing_the_final_newline():
    n = len(BASE)
    assert delta_verdict(BASE, delta((n - 1, n, b""))) == "manifest does not end with a newline"
    assert delta_verdict(BASE, delta((n - 1, n, b"x"))) == "manifest does not end with a newline"
    assert delta_verdict(BASE, delta((at(b"f"), n, b""))) is None  # dropping the last line is fine
    assert delta_verdict(BASE, delta((0, n, b""))) is None  # the empty manifest too


def test_duplicating_a_neighbour_path():
    for path in (b"b/c", b"e"):  # the duplicate lands after / before the unchanged line
        s = at(path)
        assert delta_verdict(BASE, delta((s, s, entry(path, N2)))) == \
            f"manifest entries not in sorted order at {path!r}"
    s = at(b"b/d")  # replacing a line by a copy of its predecessor's path
    assert delta_verdict(BASE, delta((s, s + len(entry(b"b/d")), entry(b"b/c", N3)))) == \
        "manifest entries not in sorted order at b'b/c'"


def test_several_hunks_and_edges():
    # hunks at the very start, in the middle and at the very end; one adds a flag mid-line
    n = len(BASE)
    d = delta((0, 0, entry(b"0")), (at(b"b/d") + 44, at(b"b/d") + 44, b"x"), (n, n, entry(b"g", N2, b"l")))
    assert delta_verdict(BASE, d) is None
    # "a" is reported too: the first hunk ends where its line starts (the base may resume mid-line)
    assert check_manifest_delta(patch(BASE, d), d) == {
        b"0": (bytes.fromhex("11" * 20), b""), b"a": (bytes.fromhex("11" * 20), b""),
        b"b/d": (bytes.fromhex("11" * 20), b"x"),
        b"g": (bytes.fromhex("22" * 20), b"l")}
    # the second of two hunks is the one that breaks the order with a line between them
    d = delta((at(b"a"), at(b"a"), entry(b"0")), (at(b"e"), at(b"e"), entry(b"b/c")))
    assert delta_verdict(BASE, d) == "manifest entries not in sorted order at b'b/c'"
    # an empty delta, a no-op hunk, a full text against the empty base
    assert delta_verdict(BASE, b"") is None
    assert delta_verdict(BASE, delta((7, 7, b""))) is None
    assert delta_verdict(b"", delta((0, 0, BASE))) is None
    assert delta_verdict(b"", delta((0, 0, BASE[::-1]))) is not None


# -- differential property: the delta check agrees with the full check on a valid base ----------

_PATHS = st.sampled_from([b"a", b"ab", b"a/b", b"a/c", b"a.b", b"b", b"c/d/e", b"caf\xc3\xa9", b"z", b"\xff"])
_NODES = st.sampled_from([N1, N2, N3])
_FLAGS = st.sampled_from([b"", b"", b"x", b"l"])


@st.composite
def manifests(draw) -> bytes:
    paths = sorted(draw(st.sets(_PATHS, max_size=7)))
    return b"".join(entry(p, draw(_NODES), draw(_FLAGS)) for p in paths)


@st.composite
def fragments(draw, base: bytes) -> bytes:
    """Bytes a hunk writes: whole entries (mostly valid), a slice of the base (cut anywhere), or junk."""
    kind = draw(st.sampled_from(["entries", "entries", "slice", "junk", "empty"]))
    if kind == "entries":
        paths = draw(st.lists(_PATHS, min_size=1, max_size=3))
        flags = st.sampled_from([b"", b"x", b"l"] * 5 + [b"xl", b"t", b"X"])
        return b"".join(entry(p, draw(_NODES), draw(flags)) for p in sorted(paths))
    if kind == "slice":
        i = draw(st.integers(0, len(base)))
        return base[i:i + draw(st.integers(0, 120))]
    if kind == "junk":
        return draw(st.binary(max_size=6) | st.lists(st.sampled_from([b"\0", b"\n", b"a", b"1", b"x", b"\r"]),
                                                      max_size=8).map(b"".join))
    return b""


def offset(draw, base: bytes, low: int) -> int:
    """A base offset >= low: a line boundary most of the time (as hg's deltas), else any byte."""
    bounds = [i for i in range(low, len(base) + 1) if i == 0 or base[i - 1:i] == b"\n"]
    if bounds and draw(st.integers(0, 3)):
        return draw(st.sampled_from(bounds))
    return draw(st.integers(low, len(base)))


@st.composite
def based_deltas(draw) -> tuple[bytes, bytes]:
    base = draw(manifests())
    hunks, pos = [], 0
    for _ in range(draw(st.integers(0, 3))):
        start = offset(draw, base, pos)
        end = offset(draw, base, start)
        hunks.append((start, end, draw(fragments(base))))
        pos = end
    return base, delta(*hunks)


@settings(max_examples=600, deadline=None, derandomize=True, database=None)
@given(based_deltas())
def test_delta_check_agrees_with_full_check(case):
    base, d = case
    check_manifest(base)
    delta_verdict(base, d)  # asserts the agreement


@pytest.mark.parametrize("cut", range(len(BASE) + 1))
def test_every_single_cut_of_the_base(cut):
    """Deleting any one byte, or inserting a newline or NUL anywhere, is judged as the full check does."""
    if cut < len(BASE):
        delta_verdict(BASE, delta((cut, cut + 1, b"")))
    for byte in (b"\n", b"\0", b"0"):
        delta_verdict(BASE, delta((cut, cut, byte)))


def test_line_aligned():
    """What lfsserve may store as received: hunks replacing whole lines with whole lines."""
    s, e = at(b"b/c"), at(b"e")
    assert line_aligned(BASE, delta((s, e, entry(b"b/c", N2)), (len(BASE), len(BASE), entry(b"g"))))
    assert line_aligned(BASE, delta((0, 0, b""), (s, s, b""))) and line_aligned(BASE, b"")
    assert not line_aligned(BASE, delta((s + 1, e, entry(b"b/c", N2))))  # starts mid-line
    assert not line_aligned(BASE, delta((s, e - 1, entry(b"b/c", N2))))  # ends mid-line
    assert not line_aligned(BASE, delta((s, e, entry(b"b/c", N2)[:-1])))  # writes a partial line
