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

from dataclasses import dataclass

from .diff import line_blocks, line_keys, split_lines
from .error import HgError, LookupError
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
    done: dict[_Key, tuple[list[_Key], list[int], list[bytes]]] = {}
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
        data = text if key == base else repo.file(key[0]).read(key[1])
        budget -= len(data)
        if budget < 0:
            raise AnnotateTooExpensive(f"more than {limits.max_bytes} bytes of history to compare")
        lines = line_keys(data)
        owners = [key] * len(lines)
        linenos = list(range(1, len(lines) + 1))
        for p in parents[key]:
            powners, plinenos, plines = done[p]
            for a1, a2, b1, b2 in line_blocks(plines, lines):
                if a2 > a1:
                    owners[b1:b2] = powners[a1:a2]
                    linenos[b1:b2] = plinenos[a1:a2]
        for p in parents[key]:
            needed[p] -= 1
            if not needed[p]:
                del done[p]
        done[key] = (owners, linenos, lines)
    owners, linenos, _ = done[base]
    users: dict[int, bytes] = {}
    out = []
    for owner, lineno, line in zip(owners, linenos, split_lines(text), strict=True):
        rev = revs[owner]
        if rev not in users:
            users[rev] = cl.read(rev).user
        out.append(AnnotatedLine(rev, cl.node(rev), users[rev], owner[0], lineno, line))
    return AnnotateResult(path, False, out)
