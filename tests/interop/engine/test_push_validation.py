"""Pushed changegroups are checked before anything is kept: lfsserve accepts only what the real hg
accepts and can read back, never writes outside the store, and refuses with BadChangegroup.

The oracle is hg 7.2.4 itself: `hg unbundle` of the same bundle into an hg-made repository of the
same format, then `hg verify`, `hg log` of every field and `hg update` on what lfsserve wrote.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lfsserve.hg.error import BadChangegroup, BadPath
from lfsserve.hg.manifest import line_aligned
from lfsserve.hg.node import NULLREV
from lfsserve.hg.repository import Repository
from lfsserve.hg.store import Store, audit_path

from .bundles import hg20
from .cgbuild import Changeset, build, node_of

pytestmark = pytest.mark.interop
ENV = {**os.environ, "HGRCPATH": os.devnull, "HGUSER": "test", "HGPLAIN": "1"}

# the store formats lfsserve serves (README): hg 7's default, fncache without dotencode, and
# `store` without fncache (file names encoded reversibly, no fncache file)
FORMATS = {
    "default": [],
    "no-dotencode": ["--config", "format.dotencode=false"],
    "no-fncache": ["--config", "format.usefncache=false"],
}


def run_hg(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["hg", *args], cwd=cwd, env=ENV, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def empty_repos(tmp_path_factory) -> dict[str, Path]:
    """One empty repository per store format, made by hg (copied before each use)."""
    base = tmp_path_factory.mktemp("formats")
    out = {}
    for name, cfg in FORMATS.items():
        run_hg(*cfg, "init", str(base / name)).check_returncode()
        out[name] = base / name
    reqs = (out["no-fncache"] / ".hg" / "store" / "requires").read_text().split()
    assert "store" in reqs and "fncache" not in reqs
    return out


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` (what a refused push must leave exactly as it was)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def lfsserve_apply(repo_path: Path, cg: bytes) -> str | None:
    """None when lfsserve applies the changegroup, else its refusal (BadChangegroup only)."""
    repo = Repository.open(repo_path)
    try:
        with repo.lock(timeout=30), repo.transaction(b"push") as tr:
            repo.add_changegroup(tr, io.BytesIO(cg), "03")
    except BadChangegroup as exc:
        return exc.message
    finally:
        repo.close()
    return None


def hg_reads_back(repo: Path) -> str | None:
    """None when hg reads every changeset, manifest and file of `repo` and checks it out."""
    for cmd in (["--config", "extensions.lfs=", "verify", "-q"],
                ["log", "--debug", "-r", "all()", "-T",
                 "{node} {manifest} {date|hgdate} {date|isodate} {branch} {extras} {files} "
                 "{file_copies} {author} {desc}\n"],
                ["update", "-q", "tip"]):
        res = run_hg(*cmd, cwd=repo)
        if res.returncode:
            return f"hg {cmd[-2] if len(cmd) > 1 else cmd[0]}: {res.stderr.decode(errors='replace')[-300:]}"
    return None


def check_against_hg(tmp: Path, empty: Path, cg: bytes) -> str | None:
    """Apply `cg` with lfsserve into a copy of `empty`; if accepted, hg must accept it too and read
    back what lfsserve wrote; if refused, nothing may have changed anywhere under `tmp`."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    ours = tmp / "ours"
    shutil.copytree(empty, ours)
    before = tree(tmp)
    refusal = lfsserve_apply(ours, cg)
    if refusal is not None:
        assert tree(tmp) == before, refusal
        return refusal
    theirs = tmp / "theirs"
    shutil.copytree(empty, theirs)
    (tmp / "b.hg").write_bytes(hg20([cg], "03"))
    res = run_hg("unbundle", "-q", str(tmp / "b.hg"), cwd=theirs)
    assert res.returncode == 0, f"lfsserve accepted what hg unbundle refuses: {res.stderr[-400:]!r}"
    problem = hg_reads_back(ours)
    assert problem is None, f"lfsserve accepted what hg cannot read back: {problem}"
    return None


# -- the cases of issue 10, each alone ----------------------------------------------------------

HEX = b"0123456789abcdef" * 2 + b"01234567"


def _bad_manifest_node(text: bytes) -> bytes:
    return text[:2] + b"zz" + text[4:]  # "a\0" then a node that is not hex


CASES = {
    "extra without ':'": Changeset({b"a": b"x\n"}, date=b"1700000000 0 noextra"),
    "bad escape in extras": Changeset({b"a": b"x\n"}, date=b"1700000000 0 a:\\x"),
    "date inf": Changeset({b"a": b"x\n"}, date=b"inf 0"),
    "date 1e999": Changeset({b"a": b"x\n"}, date=b"1e999 0"),
    "date nan": Changeset({b"a": b"x\n"}, date=b"nan 0"),
    "date beyond 32 bits": Changeset({b"a": b"x\n"}, date=b"99999999999 0"),
    "two-character flags": Changeset({b"a": b"x\n"}, flags={b"a": b"xl"}),
    "tree flag": Changeset({b"a": b"x\n"}, flags={b"a": b"t"}),
    "non-hex manifest node": Changeset({b"a": b"x\n"}, manifest=_bad_manifest_node),
    "unsorted manifest": Changeset({b"a": b"x\n", b"b": b"y\n"},
                                   manifest=lambda t: b"".join(sorted(t.splitlines(True), reverse=True))),
    "non-hex changeset manifest": Changeset({b"a": b"x\n"}, text=lambda m: b"zz" + m.hex().encode()[2:]
                                            + b"\nu\n1700000000 0\na\n\nd"),
    "unterminated file metadata": Changeset({b"a": b"\x01\ncopy: b\n"}),
    "copy from an unknown revision": Changeset({b"a": b"\x01\ncopy: b\ncopyrev: " + b"1" * 40
                                                + b"\n\x01\ndata"}),
    "copy from the null revision": Changeset({b"a": b"\x01\ncopy: ok\ncopyrev: " + b"0" * 40
                                              + b"\n\x01\ndata"}),
    "copy without copyrev": Changeset({b"a": b"\x01\ncopy: b\n\x01\ndata"}),
    "listed file without history": Changeset({b"a": b"x\n"}, listed=[b"a", b"gone.txt"]),
    "escaping file name": Changeset({b"../../../../../../../ESCAPED": b"x\n"}),
    "file under .hg": Changeset({b".hg/hgrc": b"[hooks]\n"}),
    "file in a nested repository": Changeset({b"sub/.HG/x": b"x\n"}),
    "absolute file name": Changeset({b"/etc/x": b"x\n"}),
    "empty segment": Changeset({b"a//b": b"x\n"}),
}


@pytest.mark.parametrize("what", sorted(CASES))
def test_malformed_pushes_are_refused_and_change_nothing(empty_repos, tmp_path, what):
    cg = build([Changeset({b"ok": b"fine\n"}), CASES[what]])
    for fmt, empty in empty_repos.items():
        refusal = check_against_hg(tmp_path / fmt, empty, cg)
        assert refusal is not None, f"{what} accepted in the {fmt} store"


def test_well_formed_odd_pushes_are_accepted(empty_repos, tmp_path):
    """What hg accepts and reads back is not refused: odd but valid bytes in every field."""
    cg = build([
        Changeset({b"a": b"x\n", b"Dir/UPPER.TXT": b"y\n", b"aux.c": b"z\n", b"caf\xc3\xa9": b"\xff"},
                  flags={b"a": b"x", b"aux.c": b"l"}, user=b"\xff\xfe not utf-8", desc=b"\xc3(",
                  date=b"1700000000 -3600 branch:stable\0close:1\0k:a\\\\b\\0c"),
        Changeset({b"a": b"\x01\ncopy: aux.c\ncopyrev: " + node_of(b"z\n").hex().encode() + b"\n\x01\nmoved\n"},
                  date=b"-5 0", listed=[b"a", b"aux.c"]),
    ])
    for fmt, empty in empty_repos.items():
        assert check_against_hg(tmp_path / fmt, empty, cg) is None, fmt


def test_store_refuses_names_leaving_it(tmp_path):
    """Defence in depth: whatever reaches the store, an encoded name stays inside it."""
    for reqs in ({"store"}, {"store", "fncache"}, {"store", "fncache", "dotencode"}):
        store = Store(tmp_path, frozenset(reqs))
        for name in (b"data/../../../x.i", b"data/a/../../b.i", b"/etc/passwd", b"data//x.i"):
            if "fncache" in reqs and b"/.." in name:
                continue  # the fncache encodings escape dots: those names stay inside
            with pytest.raises(BadPath):
                store.join(name)
        assert store.join(b"data/a.txt.i").startswith(str(tmp_path / ".hg" / "store"))


@pytest.mark.parametrize("path", [b"", b"a/", b"/a", b"a//b", b"./a", b"a/../b", b"..", b".hg",
                                  b".hg/x", b".HG./x", b".h\xe2\x80\x8cg/x", b"HG~1/x", b"hg8b6c~2/x",
                                  b"a/.hg/b", b"a\nb", b"a\0b", b"a\rb"])
def test_audit_refuses_what_hg_refuses(path):
    with pytest.raises(BadPath):
        audit_path(path)


@pytest.mark.parametrize("path", [b"a", b".hgtags", b".hgignore", b"a/.hgsub", b"hg~x/y", b"a...b",
                                  b"dir/.hgx/y", b"caf\xc3\xa9", b"\xff"])
def test_audit_accepts_ordinary_paths(path):
    audit_path(path)


# -- manifests sent as deltas: checked through what the delta touches (hunks cut lines anywhere) --

_BASE_FILES = {p: p + b"\n" for p in (b"a", b"b/c", b"b/d", b"e", b"f")}
_NEW_C = node_of(b"c2\n", node_of(b"b/c\n")).hex().encode()


def _line(text: bytes, path: bytes) -> tuple[int, int]:
    start = 0 if text.startswith(path + b"\0") else text.index(b"\n" + path + b"\0") + 1
    return start, text.index(b"\n", start) + 1


def _new_c(text: bytes) -> bytes:
    """b/c's line with its new file node."""
    s, e = _line(text, b"b/c")
    return text[s:s + 4] + _NEW_C + text[s + 44:e]


def _mid_line_cut(text: bytes) -> list:
    # from inside a's node to inside b/d's path, rewriting b/c's node on the way
    s, e = _line(text, b"a")[0] + 10, _line(text, b"b/d")[0] + 2
    cs, ce = _line(text, b"b/c")
    return [(s, e, text[s:cs] + _new_c(text) + text[ce:e])]


def _neighbour_order(text: bytes) -> list:
    s, e = _line(text, b"b/c")
    return [(s, e, _new_c(text).replace(b"b/c", b"e/c"))]  # sorts after b/d, the unchanged next line


def _bad_middle_line(text: bytes) -> list:
    s, _ = _line(text, b"b/c")
    _, e = _line(text, b"b/d")
    return [(s, e, _new_c(text) + b"b/cc\0" + _NEW_C + b"xl\n" + text[_line(text, b"b/d")[0]:e])]


def _final_newline(text: bytes) -> list:
    return [(len(text) - 1, len(text), b"")]


def _duplicate_neighbour(text: bytes) -> list:
    s, _ = _line(text, b"b/c")
    return [(s, s, _new_c(text))]  # the new line, then the old b/c line


def _resumes_mid_path(text: bytes) -> list:
    s, _ = _line(text, b"b/c")
    return [(s, s + 2, _new_c(text).replace(b"b/c", b"b/a"))]  # "b/c" keeps its "c": a line "c"


@pytest.mark.parametrize("hunks, refusal", [
    (_neighbour_order, "not in sorted order at b'b/d'"),
    (_bad_middle_line, "malformed manifest line b'b/cc"),
    (_final_newline, "does not end with a newline"),
    (_duplicate_neighbour, "not in sorted order at b'b/c'"),
    (_resumes_mid_path, "not in sorted order at b'b/d'"),
], ids=lambda v: getattr(v, "__name__", "")[1:] or None)
def test_manifest_deltas_are_checked_where_they_cut(empty_repos, tmp_path, hunks, refusal):
    cg = build([Changeset(_BASE_FILES), Changeset({b"b/c": b"c2\n"}, manifest_delta=hunks)])
    message = check_against_hg(tmp_path / "case", empty_repos["default"], cg)
    assert message is not None and refusal in message, message


def _other_node_for_e(text: bytes) -> list:
    at = _line(text, b"e")[0] + 3  # the second hex digit of e's node
    return [(at, at + 1, b"1" if text[at:at + 1] == b"0" else b"0")]


def test_manifest_delta_cutting_lines_mid_way_is_accepted(empty_repos, tmp_path):
    cg = build([Changeset(_BASE_FILES), Changeset({b"b/c": b"c2\n"}, manifest_delta=_mid_line_cut),
                Changeset({b"b/c": b"c3\n", b"b/cz": b"z\n"},
                          manifest_delta=lambda t: [(_line(t, b"b/c")[0] + 3, _line(t, b"b/d")[0],
                                                     b"\0" + node_of(b"c3\n", bytes.fromhex(_NEW_C.decode()))
                                                     .hex().encode() + b"\nb/cz\0" + node_of(b"z\n").hex()
                                                     .encode() + b"x\n")])])
    for fmt, empty in empty_repos.items():
        assert check_against_hg(tmp_path / fmt, empty, cg) is None, fmt
    # what was stored replaces whole lines (hg verify and pulls read stored deltas as entries)
    repo = Repository.open(tmp_path / "default" / "ours")
    try:
        ml = repo.manifestlog.revlog
        for rev in (1, 2):
            base = ml.deltaparent(rev)
            assert base == NULLREV or line_aligned(ml.revision(base), ml.chunk(rev))
    finally:
        repo.close()
    # a file revision named only on a line the delta rewrote mid-way must still be in the push
    cg = build([Changeset(_BASE_FILES), Changeset({b"b/c": b"c2\n"}, manifest_delta=_mid_line_cut),
                Changeset({}, manifest_delta=_other_node_for_e)])
    message = check_against_hg(tmp_path / "missing", empty_repos["default"], cg)
    assert message is not None and "names e revision" in message, message


# -- property: lfsserve accepts only what hg accepts and reads back ------------------------------

def mostly(valid: list, invalid: list):
    """One of `valid` nine times in ten, else one of `invalid` (most examples stay acceptable,
    so the property is tested on accepted pushes too, not only on refusals)."""
    return st.sampled_from(valid * max(1, 9 * len(invalid) // len(valid)) + invalid)


_PATHS = mostly([b"a", b"b.txt", b"dir/c", b"Dir/UP.TXT", b"sp ace", b"caf\xc3\xa9", b"aux", b"x.i/y",
                 b"\xff\xfe", b"hg~x", b"a.d/b.i"],
                [b"../x", b"a//b", b"a/", b"/abs", b".hg/x", b".HG/x", b"d/.hg/x", b"HG~1/x", b"./a"])
_TEXTS = st.one_of(st.binary(max_size=12), mostly([
    b"\x01\ncopy: a\ncopyrev: " + b"0" * 40 + b"\n\x01\nX", b"\x01\n\x01\n\x01\n", b"plain\n"], [
    b"\x01\ncopy: a\n\x01\n", b"\x01\nno colon\n\x01\n", b"\x01\nunterminated",
    b"\x01\ncopy: ../a\ncopyrev: " + b"1" * 40 + b"\n\x01\n"]))
_FLAGS = mostly([b"", b"", b"x", b"l"], [b"xl", b"lx", b"t", b"X"])
_TIMES = st.one_of(st.integers(-2**31, 2**31 - 1).map(lambda n: b"%d" % n),
                   mostly([b"1700000000", b"0", b"-1", b"1700000000.5"],
                          [b"inf", b"-inf", b"nan", b"1e999", b"1e3", b"1_000", b"99999999999", b" 17",
                           b"", b"0x10"]))
_ZONES = st.one_of(st.integers(-50400, 43200).map(lambda n: b" %d" % n),
                   mostly([b" 0", b" -3600"], [b"", b" x", b" 99999999999", b" 1.5"]))
_EXTRAS = st.lists(mostly([b"branch:stable", b"close:1", b"a:\\x41", b"k:v\\\\0", b"a:\\0b",
                           b"p1copies:junk", b"filesadded:9", b"k:\\q", b"k:", b"caf\xc3\xa9:\xff"],
                          [b"branch:", b"noextra", b"a:\\x", b"a:\\x4", b"a:b\\", b"branch:a\\nb"]),
                   max_size=3)
_USERS = st.sampled_from([b"test", b"test", b"", b"\xff\xfe", b"caf\xc3\xa9 <c@x>"])
_MANIFEST = mostly([None], ["unsorted", "duplicate", "upper", "nonhex", "short", "no newline",
                            "extra nul"])
_LISTED = mostly([None], [[b"other"], [b"a\rb"], [b"x\0y"]])


def _mutate(how: str | None):
    if how is None:
        return None

    def mutate(text: bytes) -> bytes:
        lines = text.splitlines(True)
        if how == "unsorted":
            return b"".join(reversed(lines)) if len(lines) > 1 else b"zz" + text
        if how == "duplicate":
            return b"".join(sorted(lines + lines[:1]))
        if how == "upper":
            return text.upper()
        if how == "nonhex":
            return text.replace(b"\0", b"\0g", 1)[:-2] + b"\n"
        if how == "short":
            return text[:-3] + b"\n"
        if how == "no newline":
            return text[:-1]
        return text.replace(b"\0", b"\0\0", 1)
    return mutate


@st.composite
def changesets(draw) -> Changeset:
    files = draw(st.dictionaries(_PATHS, _TEXTS, min_size=1, max_size=2))
    extras = draw(_EXTRAS)
    date = draw(_TIMES) + draw(_ZONES)
    if extras:
        date += b" " + b"\0".join(extras)
    return Changeset(files, flags={p: draw(_FLAGS) for p in files}, user=draw(_USERS), date=date,
                     listed=draw(_LISTED), desc=draw(st.binary(max_size=6)),
                     manifest=_mutate(draw(_MANIFEST)))


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(history=st.lists(changesets(), min_size=1, max_size=2), fmt=st.sampled_from(sorted(FORMATS)))
def test_lfsserve_accepts_only_what_hg_accepts(empty_repos, tmp_path, history, fmt):
    refusal = check_against_hg(tmp_path / "case", empty_repos[fmt], build(history))
    event("accepted" if refusal is None else "refused: " + refusal[:90])


# -- mutation fuzz: any byte damage is a BadChangegroup (or another engine error), never a crash --

_SEED_HISTORY = [
    Changeset({b"a": b"x\n", b"d/b": b"\x01\ncopy: a\ncopyrev: " + node_of(b"x\n").hex().encode()
               + b"\n\x01\ny"}, flags={b"a": b"x"}),
    Changeset({b"a": b"x2\n"}, date=b"1700000000 0 branch:st\0close:1"),
]


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), version=st.sampled_from(["02", "03"]))
def test_damaged_changegroups_raise_only_engine_errors(empty_repos, tmp_path, data, version):
    from lfsserve.hg.error import HgError
    cg = bytearray(build(_SEED_HISTORY, version))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(cg) - 1))
        how = data.draw(st.sampled_from(["byte", "cut", "insert", "length"]))
        if how == "byte":
            cg[pos] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del cg[pos:pos + data.draw(st.integers(1, 8))]
        elif how == "insert":
            cg[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            cg[pos:pos + 4] = data.draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff",
                                                          b"\0\0\0\0", b"\0\0\0\x05"]))
    target = tmp_path / "fuzz"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(empty_repos["no-fncache"], target)
    before = tree(target)
    repo = Repository.open(target)
    try:
        with repo.lock(timeout=30), repo.transaction(b"push") as tr:
            repo.add_changegroup(tr, io.BytesIO(bytes(cg)), version)
    except HgError:
        assert tree(target) == before
    finally:
        repo.close()
