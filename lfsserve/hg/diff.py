"""Unified diffs of changesets and files, printed the way `hg diff -c`, `hg diff --git -c` and
`hg export` print them (hg 7.2.4 with default options: 3 lines of context, no function names).

Pure engine code: no HTTP, no asyncio; callers run it in an executor. Work is bounded: a file
whose two sides together exceed `DiffLimits.max_file_bytes` is not diffed (`FileDiff.too_large`,
or DiffTooLarge for the whole-patch functions), and the whole-patch functions stop with
DiffTooLarge once their output would pass `DiffLimits.max_output_bytes`.

Line matching follows Mercurial's rules where they are observable (longest common runs, matches
pushed towards the end of the file); where several minimal diffs exist our choice may differ
from the one bdiff makes in rare ties.
"""

from __future__ import annotations

import bisect
import datetime
import difflib
import hashlib
import itertools
import zlib
from base64 import b85encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .error import HgError
from .filelog import Filelog
from .mdiff import _matching_blocks as _patience_blocks
from .node import NULLID, NULLREV
from .repository import Repository
from .revlog import E_ULEN

__all__ = [
    "DiffLimits",
    "DiffTooLarge",
    "FileChange",
    "FileDiff",
    "Hunk",
    "LfsReader",
    "changed_files",
    "changeset_diff",
    "changeset_file_diffs",
    "diff_files",
    "export_header",
    "export_patch",
    "file_diff",
    "format_date",
    "line_blocks",
    "line_keys",
    "split_lines",
    "unified_hunks",
]

# Reads the real content of an LFS-stored file revision from its pointer text (None: not
# available, the pointer text is shown instead). Supplied by front ends that can reach the blob
# store; the engine itself never touches blobs.
LfsReader = Callable[[bytes, bytes], "bytes | None"]  # (path, pointer text) -> content

# Past this many lines in the part of two texts that differs, matching starts from the lines
# unique on both sides: the longest-match search (bdiff's rule) costs too much in Python there.
_EXACT_LINES = 400
_GIT_MODE = {b"": b"100644", b"x": b"100755", b"l": b"120000"}
_NULLHEX = b"0" * 40
_MISSING_NEWLINE = b"\\ No newline at end of file\n"
_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")


class DiffTooLarge(HgError):
    """The diff would be larger than the configured bound; show a placeholder instead."""

    def __init__(self, what: str, size: int, limit: int):
        super().__init__(f"diff too large: {what} ({size} bytes, the limit is {limit})")
        self.size = size
        self.limit = limit


@dataclass(frozen=True)
class DiffLimits:
    max_file_bytes: int = 8 << 20  # both sides of one file together
    max_output_bytes: int = 32 << 20  # a whole patch


@dataclass(frozen=True)
class FileChange:
    """One entry of a changeset's file list, as `hg status --change` plus copies sees it."""

    path: bytes  # the path after (for removals: the removed path)
    kind: str  # "modified", "added", "removed"
    source: bytes | None = None  # copy/rename source (in the first parent), if any
    renamed: bool = False  # the source was removed in the same changeset (git style says rename)


@dataclass(frozen=True)
class Hunk:
    """`@@ -a_start,a_len +b_start,b_len @@` and its lines, each with its +/-/space and newline."""

    a_start: int
    a_len: int
    b_start: int
    b_len: int
    lines: list[bytes] = field(hash=False)

    def header(self) -> bytes:
        return b"@@ -%d,%d +%d,%d @@\n" % (self.a_start, self.a_len, self.b_start, self.b_len)


@dataclass
class FileDiff:
    """The diff of one file: what a page shows, and `text()` as hg prints it."""

    path1: bytes  # path on the old side (the copy source for copies)
    path2: bytes
    op: str  # "modified", "added", "removed", "copied", "renamed"
    header: list[bytes]  # hg's header lines, no newlines (`diff ...`, `--- a/...`, `+++ b/...`)
    hunks: list[Hunk]
    binary: bool = False
    too_large: bool = False
    old_mode: bytes | None = None  # git modes when they changed, or for added/removed files
    new_mode: bytes | None = None
    body: bytes = b""  # the text after the header when it is not hunks (binary marker, git binary patch)

    def text(self) -> bytes:
        """The bytes hg prints for this file (empty when hg prints nothing)."""
        out = [b"".join(h.header() + b"".join(h.lines) for h in self.hunks), self.body]
        text = b"".join(out)
        if self.header and (text or len(self.header) > 1):
            return b"\n".join(self.header) + b"\n" + text
        return text


def format_date(when: int, tz: int) -> bytes:
    """A changeset date as hg prints it: `Thu Jan 01 00:00:00 1970 +0000` (tz: seconds west)."""
    local = max(-0x80000000, min(0x7FFFFFFF, when - tz))
    t = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=local)
    hours, minutes = divmod(abs(tz) // 60, 60)
    return b"%s %s %02d %02d:%02d:%02d %d %c%02d%02d" % (
        _DAYS[t.weekday()], _MONTHS[t.month - 1], t.day, t.hour, t.minute, t.second, t.year,
        b"-"[0] if tz > 0 else b"+"[0], hours, minutes)


def split_lines(text: bytes) -> list[bytes]:
    """Lines cut after each `\\n` only (a CR is data), the last one possibly without newline."""
    lines = text.split(b"\n")
    last = lines.pop()
    out = [line + b"\n" for line in lines]
    if last:
        out.append(last)
    return out


def line_keys(text: bytes) -> list[bytes]:
    """Stand-ins for split_lines(text) that compare the same way, made without a loop in Python:
    the lines without their newline, except a last line without newline, which gets one (no
    other piece can hold a newline, so it equals only another text's unterminated last line)."""
    pieces = text.split(b"\n")
    if pieces[-1]:
        pieces[-1] += b"\n"
    else:
        pieces.pop()
    return pieces


def _unique_runs(a: list[bytes], b: list[bytes]) -> list[tuple[int, int, int]] | None:
    """The runs of equal lines when every line is unique on its side and the lines both sides
    share come in the same order (None otherwise). Then the longest-match search can only end up
    matching exactly the shared lines, so they are found with set operations and slices (C speed,
    no loop over the lines): the common case of a revision that edits a few lines of a file, which
    annotate meets hundreds of times."""
    sa, sb = set(a), set(b)
    if len(sa) != len(a) or len(sb) != len(b):
        return None
    # positions of the lines only one side has (few, in the common case)
    pa = sorted(a.index(x) for x in sa - sb)
    pb = sorted(b.index(x) for x in sb - sa)
    if _without(a, pa) != _without(b, pb):
        return None  # shared lines moved: let the search decide
    n = len(a) - len(pa)
    # where each side's removed lines cut the shared sequence, in shared-sequence positions
    cuts_a = [p - r for r, p in enumerate(pa)]
    cuts_b = [q - r for r, q in enumerate(pb)]
    bounds = sorted({0, n, *cuts_a, *cuts_b})
    runs = []
    for lo, hi in itertools.pairwise(bounds):
        if hi > lo:
            runs.append((lo + bisect.bisect_right(cuts_a, lo), lo + bisect.bisect_right(cuts_b, lo), hi - lo))
    return runs


def _without(lines: list[bytes], drop: list[int]) -> list[bytes]:
    out: list[bytes] = []
    prev = 0
    for p in drop:
        out += lines[prev:p]
        prev = p + 1
    out += lines[prev:]
    return out


def _common_prefix(a: list[bytes], b: list[bytes]) -> int:
    """How many leading lines are equal, by comparing slices (C speed), not line by line."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while hi - lo > 1:  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo if a[lo:hi] != b[lo:hi] else hi


def line_blocks(a: list[bytes], b: list[bytes]) -> list[tuple[int, int, int, int]]:
    """Matching runs (a1, a2, b1, b2) of equal lines, ascending, ending with (len a, len a, len b, len b).

    Longest runs first, then each run pushed as far towards the end as equal lines allow, as
    Mercurial's diffs and annotate see them.
    """
    na, nb = len(a), len(b)
    head = _common_prefix(a, b)
    tail = _common_prefix(a[:head - 1:-1] if head else a[::-1], b[:head - 1:-1] if head else b[::-1])
    runs: list[tuple[int, int, int]] = []
    if head:
        runs.append((0, 0, head))
    if head < na - tail and head < nb - tail:
        mid_a, mid_b = a[head:na - tail], b[head:nb - tail]
        unique = _unique_runs(mid_a, mid_b)
        if unique is not None:
            runs.extend((head + i, head + j, n) for i, j, n in unique)
        elif len(mid_a) + len(mid_b) <= _EXACT_LINES:
            sm = difflib.SequenceMatcher(None, mid_a, mid_b, autojunk=False)
            runs.extend((head + i, head + j, n) for i, j, n in sm.get_matching_blocks() if n)
        else:
            # a large region: anchor on lines unique on both sides first (patience matching,
            # near-linear; regions between anchors are matched as above), which finds the same
            # runs as the longest-match search in all but contrived cases (moved blocks)
            runs.extend((head + i, head + j, n) for i, j, n in _patience_blocks(mid_a, mid_b))
    if tail:
        runs.append((na - tail, nb - tail, tail))
    # merge touching runs, then push each gap towards the end while the lines after it match
    merged: list[list[int]] = []
    for i, j, n in runs:
        if merged and merged[-1][0] + merged[-1][2] == i and merged[-1][1] + merged[-1][2] == j:
            merged[-1][2] += n
        else:
            merged.append([i, j, n])
    for k in range(len(merged) - 1):
        cur, nxt = merged[k], merged[k + 1]
        ae, be = cur[0] + cur[2], cur[1] + cur[2]
        if ae != nxt[0] and be != nxt[1]:
            continue  # a replacement: nothing to slide
        shift = 0
        while shift < nxt[2] and a[ae + shift] == b[be + shift]:
            shift += 1
        cur[2] += shift
        nxt[0] += shift
        nxt[1] += shift
        nxt[2] -= shift
    out = [(i, i + n, j, j + n) for i, j, n in merged if n]
    out.append((na, na, nb, nb))
    return out


def unified_hunks(t1: bytes, t2: bytes, context: int = 3) -> list[Hunk]:
    """The hunks of a unified diff of two texts, with hg's `\\ No newline at end of file` markers."""
    l1, l2 = split_lines(t1), split_lines(t2)
    raw: list[list] = []  # [a_start, a_end, b_start, b_end, lines] before trailing context
    prev_a = prev_b = 0
    for a1, a2, b1, b2 in line_blocks(l1, l2):
        if prev_a != a1 or prev_b != b1:
            old_a, old_b = prev_a, prev_b  # the changed region is l1[old_a:a1] / l2[old_b:b1]
            if raw and max(old_a - context, 0) < raw[-1][1] + context + 1:
                hunk = raw[-1]
                start = hunk[1]
            else:
                start = max(old_a - context, 0)
                hunk = [start, 0, max(old_b - context, 0), 0, []]
                raw.append(hunk)
            hunk[4].extend(b" " + x for x in l1[start:old_a])
            hunk[4].extend(b"-" + x for x in l1[old_a:a1])
            hunk[4].extend(b"+" + x for x in l2[old_b:b1])
            hunk[1], hunk[3] = a1, b1
        prev_a, prev_b = a2, b2
    out: list[Hunk] = []
    for astart, a2, bstart, b2, lines in raw:
        aend = min(a2 + context, len(l1))
        alen = aend - astart
        blen = b2 - bstart + aend - a2
        lines = lines + [b" " + x for x in l1[a2:aend]]
        # an empty range names the line before it, as diff(1) does
        done = Hunk(astart + 1 if alen else astart, alen, bstart + 1 if blen else bstart, blen, lines)
        _mark_missing_newlines(done, t1, t2, len(l1), len(l2))
        out.append(done)
    return out


def _mark_missing_newlines(hunk: Hunk, t1: bytes, t2: bytes, n1: int, n2: int) -> None:
    lines = hunk.lines
    shared = False
    if t1 and not t1.endswith(b"\n") and hunk.a_start + hunk.a_len == n1 + 1:
        for i in range(len(lines) - 1, -1, -1):
            if lines[i][:1] in (b"-", b" "):
                # the last line of both texts, equal and unterminated: one marker serves both
                shared = lines[i][:1] == b" "
                lines[i] += b"\n"
                lines.insert(i + 1, _MISSING_NEWLINE)
                break
    if not shared and t2 and not t2.endswith(b"\n") and hunk.b_start + hunk.b_len == n2 + 1:
        for i in range(len(lines) - 1, -1, -1):
            if lines[i][:1] == b"+":
                lines[i] += b"\n"
                lines.insert(i + 1, _MISSING_NEWLINE)
                break


def _whole_hunk(text: bytes, sign: bytes, added: bool) -> Hunk:
    lines = split_lines(text)
    body = [sign + x for x in lines]
    if not text.endswith(b"\n"):
        body[-1] += b"\n"
        body.append(_MISSING_NEWLINE)
    n = len(lines)
    return Hunk(0, 0, 1, n, body) if added else Hunk(1, n, 0, 0, body)


def _git_index(data: bytes | None) -> bytes:
    h = hashlib.sha1(b"blob %d\0" % len(data or b""))
    h.update(data or b"")
    return h.hexdigest().encode()


def _git_binary(new: bytes) -> bytes:
    """A git `literal` binary patch of the new content (as hg writes it: no deltas)."""
    out = [b"GIT binary patch\n", b"literal %d\n" % len(new)]
    packed = zlib.compress(new)
    for i in range(0, len(packed), 52):
        piece = packed[i:i + 52]
        n = len(piece)
        out.append(bytes([ord("A") + n - 1 if n <= 26 else ord("a") + n - 27]) + b85encode(piece, pad=True) + b"\n")
    out.append(b"\n")
    return b"".join(out)


# -- files of a changeset ---------------------------------------------------------------------

class _Side:
    """One changeset as a side of a diff: its manifest and date."""

    def __init__(self, repo: Repository, node: bytes):
        self.repo = repo
        self.node = node
        if node == NULLID:
            self.manifest: dict[bytes, tuple[bytes, bytes]] = {}
            self.date = format_date(0, 0)
        else:
            cl = repo.changelog
            entry = cl.read(cl.rev(node))
            self.manifest = repo.manifestlog.read(entry.manifest)
            self.date = format_date(entry.time, entry.tz)


def _trace_copy(repo: Repository, path: bytes, fnode: bytes, base: dict[bytes, tuple[bytes, bytes]],
                budget: int = 10000) -> bytes | None:
    """The path in `base` an added file was copied from: the first ancestor of its file revision
    (following copies) that `base` holds at that very revision, as hg's path copies find it.
    Gives up (None) after `budget` file revisions."""
    seen = {(path, fnode)}
    todo = [(path, fnode)]
    while todo and budget > 0:
        p, n = todo.pop(0)
        budget -= 1
        fl = repo.file(p)
        rev = fl.get_rev(n)
        if rev is None:
            continue
        parents = [(p, fl.node(r)) for r in fl.parentrevs(rev) if r != NULLREV]
        copied = fl.copy_info(n)
        if copied is not None:
            parents.insert(0, copied)
        for q in parents:
            if q in seen:
                continue
            if base.get(q[0], (None,))[0] == q[1]:
                return q[0]
            seen.add(q)
            todo.append(q)
    return None


def changed_files(repo: Repository, node1: bytes, node2: bytes, *, copies: bool = True) -> list[FileChange]:
    """Files that differ between two changesets (node1 the old side), sorted by path, with the
    copies hg's `diff --git` would show (sources present in node1)."""
    return _changes(_Side(repo, node1), _Side(repo, node2), copies)


def _changes(s1: _Side, s2: _Side, copies: bool) -> list[FileChange]:
    m1, m2 = s1.manifest, s2.manifest
    modified, added, removed = [], [], []
    for path, entry in m2.items():
        old = m1.get(path)
        if old is None:
            added.append(path)
        elif old != entry:
            modified.append(path)
    removed = [p for p in m1 if p not in m2]
    copy: dict[bytes, bytes] = {}
    if copies:
        for path in added:
            src = _trace_copy(s2.repo, path, m2[path][0], m1)
            if src is not None and src != path:
                copy[path] = src
    removed_set = set(removed)
    renamed_sources: set[bytes] = set()
    out = []
    for path in sorted(modified + added + removed):
        if path in removed_set:
            out.append(FileChange(path, "removed"))
        elif path in copy:
            src = copy[path]
            rename = src in removed_set and src not in renamed_sources
            if rename:
                renamed_sources.add(src)
            out.append(FileChange(path, "added", src, rename))
        else:
            out.append(FileChange(path, "modified" if path in m1 else "added"))
    return out


def _file_data(repo: Repository, path: bytes, entry: tuple[bytes, bytes], lfs: LfsReader | None) -> bytes:
    fl: Filelog = repo.file(path)
    rev = fl.rev(entry[0])
    data = fl.read(entry[0])
    if fl.is_lfs(rev) and lfs is not None:
        real = lfs(path, data)
        if real is not None:
            return real
    return data


def _file_size(repo: Repository, path: bytes, entry: tuple[bytes, bytes]) -> int:
    fl = repo.file(path)
    return fl.index.entries[fl.rev(entry[0])][E_ULEN]  # the revision's full size, from the index


def diff_files(s1: _Side, s2: _Side, changes: list[FileChange], *, git: bool, limits: DiffLimits,
               lfs: LfsReader | None = None) -> Iterator[FileDiff]:
    """The FileDiff of each change, in hg's order; removals of renamed files fold into the rename."""
    repo = s2.repo
    hexes = [s1.node.hex()[:12].encode(), s2.node.hex()[:12].encode()]
    sources_copied = {c.source for c in changes if c.source is not None}
    for ch in changes:
        f1: bytes | None
        f2: bytes | None
        if ch.kind == "removed":
            if git and ch.path in sources_copied:
                continue  # shown as the rename/copy of its destination
            f1, f2 = ch.path, None
        elif ch.kind == "added":
            f1, f2 = (ch.source if git else None), ch.path
        else:
            f1, f2 = ch.path, ch.path
        yield _file_diff(repo, s1, s2, f1, f2, ch, git, hexes, limits, lfs)


def _file_diff(repo: Repository, s1: _Side, s2: _Side, f1: bytes | None, f2: bytes | None,
               ch: FileChange, git: bool, hexes: list[bytes], limits: DiffLimits,
               lfs: LfsReader | None) -> FileDiff:
    e1 = s1.manifest[f1] if f1 is not None else None
    e2 = s2.manifest[f2] if f2 is not None else None
    path1 = f1 if f1 is not None else f2
    path2 = f2 if f2 is not None else f1
    assert path1 is not None and path2 is not None
    if f1 is None:
        op = "added"
    elif f2 is None:
        op = "removed"
    elif f1 != f2:
        op = "renamed" if ch.renamed else "copied"
    else:
        op = "modified"
    header: list[bytes] = []
    old_mode = new_mode = None
    if git:
        header.append(b"diff --git a/%s b/%s" % (path1, path2))
        if e1 is None:
            assert e2 is not None
            new_mode = _GIT_MODE.get(e2[1], b"100644")
            header.append(b"new file mode %s" % new_mode)
        elif e2 is None:
            old_mode = _GIT_MODE.get(e1[1], b"100644")
            header.append(b"deleted file mode %s" % old_mode)
        else:
            m1, m2 = _GIT_MODE.get(e1[1], b"100644"), _GIT_MODE.get(e2[1], b"100644")
            if m1 != m2:
                old_mode, new_mode = m1, m2
                header += [b"old mode %s" % m1, b"new mode %s" % m2]
            if op in ("copied", "renamed"):
                word = b"rename" if op == "renamed" else b"copy"
                header += [b"%s from %s" % (word, path1), b"%s to %s" % (word, path2)]
    else:
        header.append(b"diff -r %s -r %s %s" % (hexes[0], hexes[1], path1))
    size = ((_file_size(repo, f1, e1) if f1 is not None and e1 is not None else 0)
            + (_file_size(repo, f2, e2) if f2 is not None and e2 is not None else 0))
    if size > limits.max_file_bytes:
        return FileDiff(path1, path2, op, header, [], too_large=True, old_mode=old_mode, new_mode=new_mode)
    a = _file_data(repo, f1, e1, lfs) if f1 is not None and e1 is not None else None
    b = _file_data(repo, f2, e2, lfs) if f2 is not None and e2 is not None else None
    binary = (a is not None and b"\0" in a) or (b is not None and b"\0" in b)
    fd = FileDiff(path1, path2, op, header, [], binary=binary, old_mode=old_mode, new_mode=new_mode)
    if binary:
        if git:
            if (a or b"") != (b or b""):
                header.append(b"index %s..%s" % (_git_index(a) if e1 is not None else _NULLHEX,
                                                 _git_index(b) if e2 is not None else _NULLHEX))
                fd.body = _git_binary(b or b"")
        elif not (a and b and a == b):
            fd.body = b"Binary file %s has changed\n" % path1
        return fd
    if not a and not b:
        return fd
    if git:
        tag1 = b"\t" if b" " in path1 else b""
        tag2 = b"\t" if b" " in path2 else b""
        null_tag = b""
    else:
        tag1, tag2 = b"\t" + s1.date, b"\t" + s2.date
        null_tag = b"\t" + format_date(0, 0)
    if not a:
        assert b is not None
        header.append(b"--- /dev/null" + null_tag if a is None else b"--- a/%s%s" % (path1, tag1))
        header.append(b"+++ b/%s%s" % (path2, tag2))
        fd.hunks = [_whole_hunk(b, b"+", True)]
    elif not b:
        header.append(b"--- a/%s%s" % (path1, tag1))
        header.append(b"+++ /dev/null" + null_tag if b is None else b"+++ b/%s%s" % (path2, tag2))
        fd.hunks = [_whole_hunk(a, b"-", False)]
    else:
        fd.hunks = unified_hunks(a, b)
        if fd.hunks:
            header += [b"--- a/%s%s" % (path1, tag1), b"+++ b/%s%s" % (path2, tag2)]
    return fd


def changeset_file_diffs(repo: Repository, node: bytes, *, git: bool = False,
                         limits: DiffLimits = DiffLimits(), lfs: LfsReader | None = None) -> list[FileDiff]:
    """The diff of changeset `node` against its first parent, file by file (for pages).

    Files over `limits.max_file_bytes` come back with `too_large` set and no hunks.
    """
    p1 = repo.changelog.parents(node)[0]
    s1, s2 = _Side(repo, p1), _Side(repo, node)
    return list(diff_files(s1, s2, _changes(s1, s2, git), git=git, limits=limits, lfs=lfs))


def _bounded(chunks: Iterator[FileDiff], limits: DiffLimits, what: str) -> Iterator[bytes]:
    total = 0
    for fd in chunks:
        if fd.too_large:
            raise DiffTooLarge(f"{what}: {fd.path2.decode('utf-8', 'replace')}", 0, limits.max_file_bytes)
        text = fd.text()
        total += len(text)
        if total > limits.max_output_bytes:
            raise DiffTooLarge(what, total, limits.max_output_bytes)
        if text:
            yield text


def changeset_diff(repo: Repository, node: bytes, *, git: bool = False, limits: DiffLimits = DiffLimits(),
                   lfs: LfsReader | None = None) -> bytes:
    """`hg diff -c node` (`--git` when `git`) as bytes; DiffTooLarge past the limits."""
    p1 = repo.changelog.parents(node)[0]
    s1, s2 = _Side(repo, p1), _Side(repo, node)
    files = diff_files(s1, s2, _changes(s1, s2, git), git=git, limits=limits, lfs=lfs)
    return b"".join(_bounded(files, limits, f"changeset {node.hex()[:12]}"))


def file_diff(repo: Repository, node1: bytes, node2: bytes, path: bytes, *, git: bool = False,
              limits: DiffLimits = DiffLimits(), lfs: LfsReader | None = None) -> FileDiff | None:
    """The diff of one file between two changesets (`hg diff -r node1 -r node2 path`), None when
    it did not change. A file added in node2 as a copy shows its source in git style."""
    s1, s2 = _Side(repo, node1), _Side(repo, node2)
    if path not in s1.manifest and path not in s2.manifest:
        return None
    e1, e2 = s1.manifest.get(path), s2.manifest.get(path)
    if e1 == e2:
        return None
    if e1 is None:
        src = _trace_copy(repo, path, s2.manifest[path][0], s1.manifest) if git else None
        ch = FileChange(path, "added", src if src != path else None, False)
    elif e2 is None:
        ch = FileChange(path, "removed")
    else:
        ch = FileChange(path, "modified")
    out = list(diff_files(s1, s2, [ch], git=git, limits=limits, lfs=lfs))
    return out[0] if out else None


def export_header(repo: Repository, node: bytes) -> bytes:
    """The `# HG changeset patch` header and description `hg export` prints before the diff."""
    cl = repo.changelog
    rev = cl.rev(node)
    entry = cl.read(rev)
    parents = [p for p in cl.parents(node) if p != NULLID]
    out = [b"# HG changeset patch\n", b"# User %s\n" % entry.user,
           b"# Date %d %d\n" % (entry.time, entry.tz), b"#      %s\n" % format_date(entry.time, entry.tz)]
    if entry.branch != b"default":
        out.append(b"# Branch %s\n" % entry.branch)
    out.append(b"# Node ID %s\n" % node.hex().encode())
    out.append(b"# Parent  %s\n" % (parents[0] if parents else NULLID).hex().encode())
    if len(parents) > 1:
        out.append(b"# Parent  %s\n" % parents[1].hex().encode())
    out.append(entry.description.rstrip() + b"\n\n")
    return b"".join(out)


def export_patch(repo: Repository, node: bytes, *, git: bool = False, limits: DiffLimits = DiffLimits(),
                 lfs: LfsReader | None = None) -> Iterator[bytes]:
    """`hg export node` in pieces (header, then one piece per file); DiffTooLarge past the limits,
    checked for every file's size before the first piece is produced."""
    p1 = repo.changelog.parents(node)[0]
    s1, s2 = _Side(repo, p1), _Side(repo, node)
    changes = _changes(s1, s2, git)
    total = 0
    for ch in changes:
        for side, name in ((s1, ch.source or ch.path), (s2, ch.path)):
            entry = side.manifest.get(name)
            if entry is not None:
                total += _file_size(repo, name, entry)
    if total > limits.max_output_bytes:
        raise DiffTooLarge(f"changeset {node.hex()[:12]}", total, limits.max_output_bytes)
    yield export_header(repo, node)
    yield from _bounded(diff_files(s1, s2, changes, git=git, limits=limits, lfs=lfs), limits,
                        f"changeset {node.hex()[:12]}")
