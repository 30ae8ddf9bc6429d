"""Annotate (blame) a file at a changeset, as `hg annotate -n -c -u -l` sees it.

Each line of the file is attributed to the changeset that introduced it, following copies and
renames back through the file's history. The rules are Mercurial's: the file revision's parents
(with a copy source standing in for a null first parent), matching lines inherited from each
parent in turn (a later parent wins), a file revision attributed to the changeset that introduced
it *in the ancestry of the annotated changeset* (linkrev adjusted past "linkrev shadowing"), and
line numbers counted in the revision that introduced the line.

Pure engine code (no HTTP, no asyncio): run it in an executor. The work is bounded by
`AnnotateLimits` (file revisions visited, bytes compared, changesets walked); past a bound it
raises AnnotateTooExpensive instead of running on.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from .diff import line_blocks, line_keys, split_lines
from .error import HgError, LookupError
from .filelog import Filelog
from .mdiff import PatchError, iter_hunks
from .node import NULLID, NULLREV
from .repository import Repository
from .revlog import E_ULEN

__all__ = ["AnnotateLimits", "AnnotateResult", "AnnotateTooExpensive", "AnnotatedLine", "annotate"]


class AnnotateTooExpensive(HgError):
    def __init__(self, what: str):
        super().__init__(f"annotate too expensive: {what}")


@dataclass(frozen=True)
class AnnotateLimits:
    max_file_revisions: int = 5000  # file revisions (across copies) read and compared
    max_bytes: int = 256 << 20  # sum of the sizes of the texts compared
    max_file_bytes: int = 8 << 20  # the annotated file itself
    max_changesets_walked: int = 200000  # changesets read to place shadowed linkrevs


@dataclass(frozen=True)
class AnnotatedLine:
    rev: int  # the changeset that introduced the line
    node: bytes
    user: bytes
    path: bytes  # the file's path in that changeset (differs after copies/renames)
    lineno: int  # the line's number (1-based) in the file at that changeset
    text: bytes  # the line, with its newline if it has one


@dataclass(frozen=True)
class AnnotateResult:
    path: bytes
    binary: bool  # hg annotate refuses binary files ("binary file"); `lines` is then empty
    lines: list[AnnotatedLine]


_Key = tuple[bytes, bytes]  # (path, file node)


class _Walker:
    """Places file revisions on changesets of the annotated changeset's ancestry."""

    def __init__(self, repo: Repository, top: int, limits: AnnotateLimits):
        self.repo = repo
        self.cl = repo.changelog
        self.parents = repo.parents_list
        self.limits = limits
        self.walked = 0
        # ancestors of `top`, inclusive: where a linkrev may be taken as it is
        self.ancestors = bytearray(top + 1)
        self.ancestors[top] = 1
        for r in range(top, -1, -1):
            if self.ancestors[r]:
                for p in self.parents[r]:
                    if p != NULLREV:
                        self.ancestors[p] = 1

    def intro_rev(self, path: bytes, fnode: bytes, linkrev: int, below: int, inclusive: bool) -> int:
        """The changeset introducing (path, fnode) among the ancestors of `below`."""
        if linkrev < len(self.ancestors) and self.ancestors[linkrev]:
            return linkrev
        # the linkrev names a changeset outside our ancestry (the same file revision was also
        # made elsewhere first): walk down from `below` to the one that made it here
        reach = {below} if inclusive else {p for p in self.parents[below] if p != NULLREV}
        r = below if inclusive else below - 1
        while r >= 0 and reach:
            if r in reach:
                reach.discard(r)
                self.walked += 1
                if self.walked > self.limits.max_changesets_walked:
                    raise AnnotateTooExpensive("too many changesets to walk")
                entry = self.cl.read(r)
                if path in entry.files:
                    found = self.repo.manifestlog.find(entry.manifest, path)
                    if found is not None and found[0] == fnode:
                        return r
                reach.update(p for p in self.parents[r] if p != NULLREV)
            r -= 1
        return linkrev  # not found: as hg, fall back to the linkrev


def _file_parents(repo: Repository, key: _Key) -> list[_Key]:
    path, fnode = key
    fl = repo.file(path)
    rev = fl.rev(fnode)
    p1, p2 = fl.parentrevs(rev)
    out = [(path, fl.node(p)) for p in (p1, p2) if p != NULLREV]
    if p1 == NULLREV:
        # a copy source counts only where the first parent is null, as in hg's filelog.renamed
        copied = fl.copy_info(fnode)
        if copied is not None and copied[1] != NULLID:
            out.insert(0, copied)
    return out


_Block = tuple[int, int, int, int]


def _line_count(text: bytes) -> int:
    return text.count(b"\n") + (1 if text and not text.endswith(b"\n") else 0)


def _delta_blocks(fl: Filelog, rev: int, prev: int, base: bytes, base_lines: int, base_counts: dict[bytes, int],
                  *, consume: bool = False) -> tuple[list[_Block], dict[bytes, int]] | None:
    """The matching line runs between file revisions `prev` and `rev` read off the delta the
    revlog stores for `rev`, when that delta is against `prev` and is a line diff: hunks on
    line boundaries, no removed line still in the new text nor added line already in the old
    one, no insertion or deletion that could slide down over equal lines. Such a delta is the line diff the
    longest-match search finds, and reading it costs a few `count`s per
    hunk instead of hashing and comparing every line of both texts, which is what annotating a
    long history of small edits spends its time on. None: match the lines instead.
    `base` is the raw text of `prev` (no copy metadata), `base_lines` its number of lines,
    `base_counts` how many times each of its lines (line_keys) occurs. Returns the blocks (the
    last one ends at the number of lines of `rev`) and the lines of `rev` counted the same way,
    made from `base_counts` in a few steps, not by hashing every line of `rev` (with `consume`,
    `base_counts` itself is changed into them, or left changed when the answer is None: for a
    base no other revision compares with)."""
    if fl.deltaparent(rev) != prev or fl.is_lfs(rev):
        return None
    try:
        hunks = list(iter_hunks(fl.chunk(rev)))
    except (PatchError, HgError):
        return None
    nl = 0x0A
    na = len(base)
    blocks: list[_Block] = []
    removed: list[bytes] = []
    added: list[bytes] = []
    a_line = b_line = 0
    last = 0
    for start, end, mv in hunks:
        data = bytes(mv)
        if end > na or (start and base[start - 1] != nl) or (end > start and end < na and base[end - 1] != nl):
            return None  # not on line boundaries
        if data and data[-1] != nl and end != na:
            return None
        same = base.count(b"\n", last, start)
        if same:
            blocks.append((a_line, a_line + same, b_line, b_line + same))
        a_line += same
        b_line += same
        old = base[start:end]
        n_old, n_new = _line_count(old), _line_count(data)
        if not n_old and not n_new:
            last = end
            continue
        if not n_old or not n_new:
            # a pure insertion or deletion slides down while the line after it repeats its first
            moved = data if n_new else old
            if moved[:moved.find(b"\n") + 1 or len(moved)] == base[end:base.find(b"\n", end) + 1 or na]:
                return None
        removed.append(old)
        added.append(data)
        a_line += n_old
        b_line += n_new
        last = end
    # A line removed that the new text still has, or added that the old text had, makes the
    # alignment a matter of tie rules (which copy of a repeated line matches): leave it to the
    # search. Without such lines every common subsequence of the two texts is made of the lines
    # outside the hunks, and the delta's alignment of them is the only one.
    gone = line_keys(b"".join(removed))
    new = line_keys(b"".join(added))
    if any(k in base_counts for k in new):
        return None
    counts = base_counts if consume else dict(base_counts)  # the new text's lines, counted from the old one's
    for k in gone:
        if counts[k] == 1:
            del counts[k]
        else:
            counts[k] -= 1
    if any(k in counts for k in gone):
        return None
    for k in new:
        counts[k] = counts.get(k, 0) + 1
    same = base_lines - a_line
    blocks.append((a_line, a_line + same, b_line, b_line + same))
    return blocks, counts


def annotate(repo: Repository, node: bytes, path: bytes, *, limits: AnnotateLimits = AnnotateLimits(),
             follow: bool = True) -> AnnotateResult:
    """Blame `path` as of changeset `node`. LookupError if the file is not in that changeset;
    AnnotateTooExpensive past `limits`. `follow=False` stops at copies and renames."""
    cl = repo.changelog
    top = cl.rev(node)
    entry = cl.read(top)
    found = repo.manifestlog.find(entry.manifest, path)
    if found is None:
        raise LookupError(node, path.decode("utf-8", "replace"), "file not in this changeset")
    base: _Key = (path, found[0])
    fl = repo.file(path)
    if fl.index.entries[fl.rev(found[0])][E_ULEN] > limits.max_file_bytes:
        raise AnnotateTooExpensive(f"the file is larger than {limits.max_file_bytes} bytes")
    text = fl.read(found[0])
    if b"\0" in text:
        return AnnotateResult(path, True, [])
    walker = _Walker(repo, top, limits)

    def linkrev(key: _Key) -> int:
        f = repo.file(key[0])
        return f.linkrev(f.rev(key[1]))

    # which changeset each file revision is shown as: placed from the child that reached it
    revs: dict[_Key, int] = {base: walker.intro_rev(path, base[1], linkrev(base), top, True)}
    # 1: the graph of file revisions to visit, and how many children need each one
    parents: dict[_Key, list[_Key]] = {}
    needed: dict[_Key, int] = {base: 1}
    todo = [base]
    while todo:
        key = todo.pop()
        if key in parents:
            continue
        if len(parents) >= limits.max_file_revisions:
            raise AnnotateTooExpensive(f"more than {limits.max_file_revisions} file revisions")
        pl = _file_parents(repo, key)
        if not follow:
            pl = [p for p in pl if p[0] == key[0]]
        parents[key] = pl
        for p in pl:
            needed[p] = needed.get(p, 0) + 1
            if p not in revs:
                revs[p] = walker.intro_rev(p[0], p[1], linkrev(p), revs[key], False)
            if p not in parents:
                todo.append(p)
    # 2: annotate parents before children, keeping only what a pending child still needs
    # per file revision: owners, line numbers, whether its stored text is the file's (no copy
    # metadata), its text, its line keys (made when first needed), its number of lines, how many
    # times each line occurs (made when first needed)
    done: dict[_Key, list] = {}
    budget = limits.max_bytes
    stack = [base]
    while stack:
        key = stack[-1]
        if key in done:
            stack.pop()
            continue
        pending = [p for p in parents[key] if p not in done]
        if pending:
            stack.extend(pending)
            continue
        stack.pop()
        kfl = repo.file(key[0])
        krev = kfl.rev(key[1])
        raw = kfl.revision(krev)
        plain = not kfl.is_lfs(krev) and not raw.startswith(b"\x01\n")  # the raw text is the file's
        data = raw if plain else kfl.read(key[1])
        budget -= len(data)
        if budget < 0:
            raise AnnotateTooExpensive(f"more than {limits.max_bytes} bytes of history to compare")
        lines: list[bytes] | None = None
        counts: dict[bytes, int] | None = None
        matches: list[tuple[list, list[_Block]]] = []
        for p in parents[key]:
            pdone = done[p]
            blocks: list[_Block] | None = None
            if plain and pdone[2] and p[0] == key[0]:
                if pdone[6] is None:
                    pdone[6] = collections.Counter(pdone[4] if pdone[4] is not None else line_keys(pdone[3]))
                last_use = needed[p] == 1 and parents[key].count(p) == 1  # a linear history: no copy
                from_delta = _delta_blocks(kfl, krev, kfl.rev(p[1]), pdone[3], pdone[5], pdone[6], consume=last_use)
                if last_use:
                    pdone[6] = None
                if from_delta is not None:
                    blocks, counts = from_delta
            if blocks is None:
                if lines is None:
                    lines = line_keys(data)
                if pdone[4] is None:
                    pdone[4] = line_keys(pdone[3])
                blocks = line_blocks(pdone[4], lines)
            matches.append((pdone, blocks))
        # a diff's last block ends at the end of both texts: no need to count this one's lines
        nlines = matches[0][1][-1][3] if matches else _line_count(data)
        owners = [key] * nlines
        linenos = list(range(1, nlines + 1))
        for pdone, blocks in matches:
            powners, plinenos = pdone[0], pdone[1]
            for a1, a2, b1, b2 in blocks:
                if a2 > a1:
                    owners[b1:b2] = powners[a1:a2]
                    linenos[b1:b2] = plinenos[a1:a2]
        for p in parents[key]:
            needed[p] -= 1
            if not needed[p]:
                del done[p]
        done[key] = [owners, linenos, plain, data, lines, nlines, counts]
    owners, linenos = done[base][:2]
    users: dict[int, bytes] = {}
    out = []
    for owner, lineno, line in zip(owners, linenos, split_lines(text), strict=True):
        rev = revs[owner]
        if rev not in users:
            users[rev] = cl.read(rev).user
        out.append(AnnotatedLine(rev, cl.node(rev), users[rev], owner[0], lineno, line))
    return AnnotateResult(path, False, out)
