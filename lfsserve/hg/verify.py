"""Integrity check of a repository: every revision of every revlog, and the links between them.

Checks, per revlog: the index is consistent (parents and delta bases point backwards, data
ranges do not overlap, linkrevs name existing changesets), every revision rebuilds, its hash
matches its node (lfs revisions: the pointer parses instead). Across revlogs: each changeset's
manifest exists, each manifest names file revisions that exist, copy sources exist, linkrevs of
manifests and file revisions point at changesets that use them, and the fncache lists every
filelog. Problems are returned in the order found, so the first one names the first broken
revlog and revision.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from .changelog import parse_changeset
from .error import HgError
from .filelog import LfsPointerError, parse_lfs_pointer, parse_meta
from .manifest import changed_entries, parse_manifest
from .node import NULLID, NULLREV
from .revlog import E_BASE, E_CLEN, E_LINK, E_OFFSET_FLAGS, E_P1, E_P2, REVIDX_EXTSTORED, Revlog

__all__ = ["Problem", "VerifyStats", "verify"]

Progress = Callable[[str, int, int], None]
MAX_PER_REVLOG = 20


@dataclass(frozen=True)
class Problem:
    revlog: str  # store name, e.g. "data/a.txt.i"
    rev: int | None
    message: str

    def __str__(self) -> str:
        where = self.revlog if self.rev is None else f"{self.revlog} revision {self.rev}"
        return f"{where}: {self.message}"


@dataclass
class VerifyStats:
    changesets: int = 0
    manifests: int = 0
    files: int = 0
    revisions: int = 0


class _Collector:
    def __init__(self):
        self.problems: list[Problem] = []
        self._per: dict[str, int] = {}

    def add(self, revlog: str, rev: int | None, message: str) -> None:
        n = self._per.get(revlog, 0)
        self._per[revlog] = n + 1
        if n < MAX_PER_REVLOG:
            self.problems.append(Problem(revlog, rev, message))
        elif n == MAX_PER_REVLOG:
            self.problems.append(Problem(revlog, None, "more problems not shown"))


def _check_index(rl: Revlog, out: _Collector, nchangesets: int | None) -> bool:
    """Structure of the index; False when it is too broken to read revisions."""
    ok = True
    entries = rl.index.entries
    end = 0
    for rev, e in enumerate(entries):
        start = e[E_OFFSET_FLAGS] >> 16
        if start < end and e[E_CLEN] > 0:
            out.add(rl.name, rev, f"data overlaps the previous revision (offset {start} < {end})")
            ok = False
        end = max(end, start + e[E_CLEN])
        for what, p in (("first parent", e[E_P1]), ("second parent", e[E_P2])):
            if p < NULLREV or p >= rev:
                out.add(rl.name, rev, f"{what} {p} is not an earlier revision")
                ok = False
        base = e[E_BASE]
        if base < 0 or base > rev:
            out.add(rl.name, rev, f"delta base {base} is not an earlier revision")
            ok = False
        if nchangesets is not None and not (0 <= e[E_LINK] < nchangesets):
            out.add(rl.name, rev, f"linkrev {e[E_LINK]} is not a changeset")
    if rl.index.trailing:
        out.add(rl.name, None, f"{rl.index.trailing} bytes after the last complete revision")
    if not rl.index.inline and entries:
        try:
            size = os.path.getsize(rl.data_path)
        except FileNotFoundError:
            out.add(rl.name, None, "data file is missing")
            return False
        if size < end:
            out.add(rl.name, None, f"data file is truncated ({size} bytes, the index needs {end})")
    return ok


def _texts(rl: Revlog, out: _Collector, stats: VerifyStats):
    """Yield (rev, raw text) for every revision that rebuilds and checks; report the others."""
    for rev in rl:
        stats.revisions += 1
        try:
            text = rl.revision(rev)
            if rl.flags(rev) & REVIDX_EXTSTORED:
                try:
                    parse_lfs_pointer(text)
                except LfsPointerError as exc:
                    out.add(rl.name, rev, f"lfs pointer does not parse: {exc}")
                    continue
            else:
                rl.check_hash(rev, text)
        except HgError as exc:
            msg = exc.message
            prefix = f"{rl.name}: "
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
            out.add(rl.name, rev, msg)
            continue
        yield rev, text


def verify(repo, progress: Progress | None = None) -> list[Problem]:
    """Check everything; returns the problems found (empty: the repository is sound)."""
    problems, _ = verify_with_stats(repo, progress)
    return problems


def verify_with_stats(repo, progress: Progress | None = None) -> tuple[list[Problem], VerifyStats]:
    out = _Collector()
    stats = VerifyStats()
    report = progress or (lambda stage, done, total: None)
    if (repo.store.path / "journal").exists():
        out.add("journal", None, "an interrupted transaction was not rolled back yet (the next "
                                 "push does it, or run 'hg recover'); what follows may be its leftovers")
    cl = repo.changelog
    ml = repo.manifestlog.revlog
    ncl = len(cl)
    stats.changesets = ncl

    # changesets
    manifest_users: dict[bytes, list[int]] = {}  # manifest node -> changesets naming it
    _check_index(cl, out, None)
    for rev, e in enumerate(cl.index.entries):
        if e[E_LINK] != rev:
            out.add(cl.name, rev, f"linkrev {e[E_LINK]} should be {rev}")
    for rev, text in _texts(cl, out, stats):
        if rev % 256 == 0:
            report("changesets", rev, ncl)
        try:
            entry = parse_changeset(text, f"{cl.name} revision {rev}")
        except HgError as exc:
            out.add(cl.name, rev, exc.message)
            continue
        manifest_users.setdefault(entry.manifest, []).append(rev)
    report("changesets", ncl, ncl)

    # manifests
    nml = len(ml)
    stats.manifests = nml
    _check_index(ml, out, ncl)
    for mnode, naming in manifest_users.items():
        if mnode != NULLID and ml.get_rev(mnode) is None:
            out.add(cl.name, naming[0], f"names manifest {mnode.hex()[:12]}, which {ml.name} lacks")
    file_users: dict[bytes, dict[bytes, int]] = {}  # path -> file node -> first changeset naming it
    good_manifests = set()
    for rev, text in _texts(ml, out, stats):
        if rev % 256 == 0:
            report("manifests", rev, nml)
        node = ml.node(rev)
        users = manifest_users.get(node)
        if users is None:
            out.add(ml.name, rev, "no changeset names this manifest")
            continue
        if ml.linkrev(rev) not in users:
            out.add(ml.name, rev, f"linkrev {ml.linkrev(rev)} is not a changeset using this manifest")
        good_manifests.add(rev)
        try:
            entries = _entries_vs_parents(ml, rev, text)
        except HgError as exc:
            out.add(ml.name, rev, exc.message)
            continue
        link = min(users)
        for path, (fnode, _flags) in entries.items():
            seen = file_users.setdefault(path, {})
            if fnode not in seen or link < seen[fnode]:
                seen[fnode] = link
    report("manifests", nml, nml)

    # files: every revision named by a manifest exists; every revision checks
    listed = set(repo.store.read_fncache()) if repo.store.fncache else None
    stored = repo.store.data_files() if listed is None else [n for n in listed if n.startswith(b"data/")]
    paths = sorted(set(file_users) | {n[5:-2] for n in stored if n.endswith(b".i")})
    stats.files = len(paths)
    for i, path in enumerate(paths):
        report("files", i, len(paths))
        fl = repo.file(path)
        name = fl.name
        exists = os.path.exists(fl.index_path)
        if listed is not None and exists and repo.store.filelog_name(path) not in listed:
            out.add(name, None, "missing from the fncache")
        if not exists:
            if path in file_users:
                fnode, link = next(iter(file_users[path].items()))
                out.add(name, None, f"missing, but changeset {link} names its revision {fnode.hex()[:12]}")
            continue
        try:
            fl.index  # noqa: B018 - parse it
        except HgError as exc:
            out.add(name, None, exc.message)
            continue
        if not _check_index(fl, out, ncl):
            continue
        wanted = file_users.get(path, {})
        for fnode, link in wanted.items():
            if fl.get_rev(fnode) is None:
                out.add(name, None, f"revision {fnode.hex()[:12]} named by changeset {link} is missing")
        for rev, text in _texts(fl, out, stats):
            node = fl.node(rev)
            if node not in wanted:
                out.add(name, rev, "no manifest names this file revision")
            if not fl.flags(rev) & REVIDX_EXTSTORED:
                meta, _ = parse_meta(text)
                if b"copy" in meta:
                    _check_copy(repo, fl, rev, meta, out)
        fl.close()
    report("files", len(paths), len(paths))
    return out.problems, stats


def _entries_vs_parents(ml: Revlog, rev: int, text: bytes) -> dict:
    p1, p2 = ml.parentrevs(rev)
    base = ml.deltaparent(rev)
    if base != NULLREV and base in (p1, p2):
        return changed_entries(ml.chunk(rev))
    mine = parse_manifest(text, f"{ml.name} revision {rev}")
    if p1 == NULLREV:
        return mine
    theirs = parse_manifest(ml.revision(p1), ml.name)
    return {p: v for p, v in mine.items() if theirs.get(p) != v}


def _check_copy(repo, fl, rev: int, meta: dict[bytes, bytes], out: _Collector) -> None:
    src = meta[b"copy"]  # the caller checked it is there
    try:
        srcnode = bytes.fromhex(meta.get(b"copyrev", b"").decode("ascii"))
    except ValueError:
        srcnode = b""
    if len(srcnode) != 20:
        out.add(fl.name, rev, "copy metadata has a malformed copyrev")
        return
    other = repo.file(src)
    if not os.path.exists(other.index_path) or other.get_rev(srcnode) is None:
        out.add(fl.name, rev, f"copy source {src.decode('utf-8', 'replace')} revision "
                              f"{srcnode.hex()[:12]} is missing")
