"""What the web pages show, read from the engine: plain data (hgweb's JSON field names), no HTTP.

Everything here is blocking (revlog reads): the pages call it through run_blocking. Values are
shaped as hgweb's JSON style shapes them (`date` is `[seconds, offset]`, nodes are full hex,
`desc`/`user` are text), so the JSON pages return them as they are and the HTML templates use
the same dicts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..hg import dagop, phases
from ..hg.error import HgError, LookupError, UnknownRevision
from ..hg.filelog import Filelog
from ..hg.node import NULLID, NULLREV
from ..hg.repository import AmbiguousRevision, Repository
from ..hg.revlog import E_P1, E_ULEN
from .router import WebError

__all__ = [
    "MAX_FILE_PATH", "Names", "branches", "changeset", "children", "dir_listing", "file_data",
    "file_revs", "graph_rows", "log_revs", "parse_path", "resolve_rev", "text",
]

MAX_REV_ARG = 200
MAX_FILE_PATH = 4096
_PRINTABLE_REV = re.compile(r"[\x21-\x7e\u00a0-\U0010ffff][\x20-\x7e\u00a0-\U0010ffff]*\Z")


def text(value: bytes) -> str:
    """Repository bytes (user, description, paths) as text: UTF-8, as hg's web UI decodes them."""
    return value.decode("utf-8", "replace")


def resolve_rev(repo: Repository, arg: str) -> int:
    """The visible revision a URL names (number, node or prefix, tag, bookmark, branch); WebError
    400 for what cannot be a revision name, 404 for an unknown one."""
    if not arg or len(arg) > MAX_REV_ARG or not _PRINTABLE_REV.match(arg):
        raise WebError(400, f"not a revision name: {arg[:60]!r}")
    try:
        node = repo.lookup(arg.encode("utf-8"))
    except AmbiguousRevision:
        raise WebError(404, f"ambiguous revision prefix {arg!r}: give more digits") from None
    except (UnknownRevision, LookupError):
        raise WebError(404, f"unknown revision {arg!r}") from None
    if node == NULLID:
        return NULLREV
    return repo.changelog.rev(node)


def resolve_changed_rev(repo: Repository, arg: str) -> int:
    """resolve_rev() for pages about a changeset's changes: WebError 404 for the null revision."""
    r = resolve_rev(repo, arg)
    if r == NULLREV:
        raise WebError(404, "the null revision has no changes")
    return r


def parse_path(parts: list[str]) -> str:
    """A file path from URL segments: "" for the root; WebError 400 for "." / ".." / empty
    segments or control characters (manifests never hold them; refusing says so plainly)."""
    parts = [p for p in parts]
    while parts and parts[-1] == "":
        parts.pop()  # a trailing slash names the same directory
    path = "/".join(parts)
    if len(path) > MAX_FILE_PATH:
        raise WebError(400, "file path too long")
    for seg in parts:
        if seg in ("", ".", "..") or any(ord(c) < 0x20 for c in seg):
            raise WebError(400, f"invalid file path segment {seg[:60]!r}")
    return path


@dataclass
class Names:
    """Tags and bookmarks by node, read once per request."""

    tags: dict[bytes, list[str]]
    bookmarks: dict[bytes, list[str]]
    tag_list: list[tuple[str, bytes]]       # (name, node), without "tip"
    bookmark_list: list[tuple[str, bytes]]

    @classmethod
    def read(cls, repo: Repository) -> Names:
        tags: dict[bytes, list[str]] = {}
        tag_list = []
        for name, node in repo.tags().items():
            tags.setdefault(node, []).append(text(name))
            if name != b"tip":
                tag_list.append((text(name), node))
        marks: dict[bytes, list[str]] = {}
        mark_list = []
        for name, node in sorted(repo.bookmarks().items()):
            marks.setdefault(node, []).append(text(name))
            mark_list.append((text(name), node))
        for v in tags.values():
            v.sort(key=lambda t: (t != "tip", t))
        cl = repo.changelog
        # hgweb lists both newest first
        tag_list.sort(key=lambda t: (-cl.rev(t[1]), t[0]))
        mark_list.sort(key=lambda t: (-cl.rev(t[1]), t[0]))
        return cls(tags, marks, tag_list, mark_list)


def changeset(repo: Repository, rev: int, names: Names, *, with_parents: bool = True) -> dict:
    """A changeset as hgweb's JSON shows it in logs (node, date, desc, branch, bookmarks, tags,
    user, phase, parents), plus `rev` for our templates."""
    cl = repo.changelog
    node = cl.node(rev)
    if rev == NULLREV:
        return {"node": NULLID.hex(), "date": [0.0, 0], "desc": "", "branch": "default", "bookmarks": [],
                "tags": [], "user": "", "phase": "public", "parents": [], "rev": -1}
    cs = cl.read(rev)
    out = {
        "node": node.hex(),
        "date": [float(cs.time), cs.tz],
        "desc": text(cs.description),
        "branch": text(cs.branch),
        "bookmarks": names.bookmarks.get(node, []),
        "tags": names.tags.get(node, []),
        "user": text(cs.user),
        "phase": phases.NAMES.get(repo.phase(rev), "public"),
        "rev": rev,
    }
    if with_parents:
        out["parents"] = [cl.node(p).hex() for p in repo.parents_list[rev] if p != NULLREV]
    return out


def children(repo: Repository, rev: int) -> list[bytes]:
    """Visible children of `rev` (hgweb lists them on a changeset)."""
    mask = repo.visible_mask
    parents = repo.parents_list
    cl = repo.changelog
    return [cl.node(r) for r in range(rev + 1, len(parents)) if mask[r] and rev in parents[r]]


def log_revs(repo: Repository, start: int, limit: int, *, branch: str = "", keyword: str = "",
             skip: int = 0) -> tuple[list[int], bool]:
    """Visible revisions from `start` down (ancestors or not, as hgweb's log), filtered by branch
    and by a case-insensitive keyword in the description or user; (page, more after it)."""
    mask = repo.visible_mask
    cl = repo.changelog
    words = keyword.lower().split()
    want_branch = branch.encode("utf-8")
    out: list[int] = []
    skipped = 0
    for r in range(start, -1, -1):
        if not mask[r]:
            continue
        if want_branch and cl.branch_info(r)[0] != want_branch:
            continue
        if words:
            cs = cl.read(r)
            hay = (text(cs.description) + "\n" + text(cs.user) + "\n"
                   + "\n".join(text(f) for f in cs.files)).lower()
            if not all(w in hay for w in words):
                continue
        if skipped < skip:
            skipped += 1
            continue
        if len(out) == limit:
            return out, True
        out.append(r)
    return out, False


def branches(repo: Repository) -> list[dict]:
    """hgweb's branch list: newest branch tip first, status open / inactive (its tip is not a
    repository head) / closed."""
    cl = repo.changelog
    heads = set(repo.head_revs())
    info = repo.branch_of()
    out: list[dict[str, Any]] = []
    for name, nodes in repo.branchmap().items():
        revs = [cl.rev(n) for n in nodes]
        open_revs = [r for r in revs if not info[r][1]]
        tip = max(open_revs) if open_revs else max(revs)
        status = "closed" if not open_revs else ("open" if tip in heads else "inactive")
        cs = cl.read(tip)
        out.append({"branch": text(name), "node": cl.node(tip).hex(), "date": [float(cs.time), cs.tz],
                    "status": status, "rev": tip})
    out.sort(key=lambda b: b["rev"], reverse=True)
    return out


@dataclass
class FileData:
    path: str
    filenode: bytes
    filerev: int
    linkrev: int
    flags: str         # "", "x" or "l"
    data: bytes | None  # the content (None for an LFS file: see `lfs`)
    lfs: tuple[str, int] | None  # (oid, size) of an LFS file
    size: int


def _manifest(repo: Repository, rev: int) -> dict[bytes, tuple[bytes, bytes]]:
    if rev == NULLREV:
        return {}
    return repo.manifestlog.read(repo.changelog.manifest_node(rev))


def file_size(fl: Filelog, frev: int) -> int:
    """The size hg reports for a file revision: the real size of an LFS file, the data without
    copy metadata otherwise (only a revision without a first parent can carry it)."""
    if fl.is_lfs(frev):
        return fl.lfs_pointer(frev).size
    if fl.index.entries[frev][E_P1] == NULLREV:
        return len(fl.read(fl.node(frev)))
    return fl.index.entries[frev][E_ULEN]


def file_data(repo: Repository, rev: int, path: str, max_size: int) -> FileData | None:
    """The file `path` in revision `rev` (None: no such file there). Content above `max_size` is
    not read (data None, lfs None)."""
    found = None if rev == NULLREV else repo.manifestlog.find(repo.changelog.manifest_node(rev), path.encode())
    if found is None:
        return None
    fnode, flags = found
    fl = repo.file(path.encode())
    frev = fl.rev(fnode)
    size = file_size(fl, frev)
    lfs = None
    data = None
    if fl.is_lfs(frev):
        p = fl.lfs_pointer(frev)
        lfs = (p.oid, p.size)
    elif size <= max_size:
        data = fl.read(fnode)
    return FileData(path, fnode, frev, fl.linkrev(frev), text(flags), data, lfs, size)


def dir_listing(repo: Repository, rev: int, path: str) -> tuple[list[dict], list[dict]] | None:
    """(directories, files) directly in `path` at `rev`, hgweb's fields plus `linkrev` (the
    changeset that last changed a file); None when `path` is not a directory there."""
    prefix = (path + "/").encode() if path else b""
    dirs: dict[bytes, set[bytes]] = {}
    files = []
    man = _manifest(repo, rev)
    for f in sorted(man):
        if not f.startswith(prefix):
            continue
        rest = f[len(prefix):]
        head, sep, tail = rest.partition(b"/")
        if sep:
            dirs.setdefault(head, set()).add(tail)
            continue
        fnode, flags = man[f]
        fl = repo.file(f)
        frev = fl.rev(fnode)
        files.append({"abspath": text(f), "basename": text(rest), "size": file_size(fl, frev),
                      "flags": text(flags), "linkrev": fl.linkrev(frev), "lfs": fl.is_lfs(frev)})
    if not files and not dirs and path:
        return None
    directories = []
    for d, inner in sorted(dirs.items()):
        # hgweb's `emptydirs`: the chain of single subdirectories below, shown as one link
        chain = []
        while len(inner) and all(b"/" in t for t in inner) and len({t.split(b"/", 1)[0] for t in inner}) == 1:
            sub = next(iter(inner)).split(b"/", 1)[0]
            chain.append(sub)
            inner = {t.split(b"/", 1)[1] for t in inner}
        directories.append({"abspath": "/" + text(prefix + d), "basename": text(d),
                            "emptydirs": "/".join(text(c) for c in chain)})
    return directories, files


def file_parent_links(repo: Repository, fl: Filelog, frev: int) -> list[int]:
    """The changesets of a file revision's parents, a copy's source standing for its first
    parent as in hg (filectx.parents)."""
    p1, p2 = fl.parentrevs(frev)
    out = []
    if p1 == NULLREV:
        try:
            copy = fl.copy_info(fl.node(frev))
        except HgError:
            copy = None
        if copy is not None:
            src = repo.file(copy[0])
            srev = src.get_rev(copy[1])
            if srev is not None:
                out.append(src.linkrev(srev))
    else:
        out.append(fl.linkrev(p1))
    if p2 != NULLREV:
        out.append(fl.linkrev(p2))
    return out


def file_revs(repo: Repository, rev: int, path: str, limit: int) -> tuple[list[tuple[int, list[int]]], bool] | None:
    """Changesets (newest first) that changed `path`, among the ancestors of `rev`, each with
    the changesets of the file revision's parents (what hgweb's file log calls `parents`);
    None when the file never existed there."""
    fl = repo.file(path.encode())
    if len(fl) == 0:
        return None
    mask = repo.visible_mask
    ancestors = dagop.ancestors_mask(repo.parents_list, [rev])
    out: list[tuple[int, list[int]]] = []
    for frev in range(len(fl) - 1, -1, -1):
        link = fl.linkrev(frev)
        if link < len(ancestors) and ancestors[link] and mask[link]:
            if len(out) == limit:
                return out, True
            out.append((link, file_parent_links(repo, fl, frev)))
    if not out:
        return None
    return out, False


def files_status(repo: Repository, rev: int) -> list[dict]:
    """Files a changeset touched, with hgweb's status (added, removed, modified) and, for a copy
    or rename, where it came from (`source`)."""
    cl = repo.changelog
    cs = cl.read(rev)
    ml = repo.manifestlog
    p1 = repo.parents_list[rev][0]
    pnode = cl.manifest_node(p1) if p1 != NULLREV else None
    out = []
    for f in sorted(set(cs.files)):
        # a lookup in each manifest's text, not a parse of its thousands of lines
        entry = ml.find(cs.manifest, f)
        if entry is None:
            status = "removed"
        elif pnode is None or ml.find(pnode, f) is None:
            status = "added"
        else:
            status = "modified"
        item = {"file": text(f), "status": status}
        if entry is not None and status == "added":  # as hg status: only added files show a source
            try:
                copy = repo.file(f).copy_info(entry[0])
            except (LookupError, HgError):
                copy = None
            if copy is not None:
                item["source"] = text(copy[0])
        out.append(item)
    return out


def graph_rows(repo: Repository, revs: list[int]) -> Iterator[dict]:
    """Lay out `revs` (descending) as a graph: each row's column, and the lines from this row's
    lanes to the next row's (edges: (from column, to column, colour)). Parents outside `revs`
    keep their lane to the bottom of the page."""
    parents = repo.parents_list
    mask = repo.visible_mask
    lanes: list[int] = []     # the revision each lane waits for
    colors: list[int] = []
    next_color = 1
    for r in revs:
        if r not in lanes:
            lanes.append(r)
            colors.append(next_color)
            next_color += 1
        col = lanes.index(r)
        color = colors[col]
        ps = [p for p in parents[r] if p != NULLREV and mask[p]]
        new_lanes = list(lanes)
        new_colors = list(colors)
        # the revision's own lane continues to its first parent; other parents get a lane
        if ps:
            new_lanes[col] = ps[0]
            for p in ps[1:]:
                if p not in new_lanes:
                    new_lanes.insert(col + 1, p)
                    new_colors.insert(col + 1, next_color)
                    next_color += 1
        else:
            del new_lanes[col]
            del new_colors[col]
        # two lanes waiting for the same revision merge into the first
        edges = []
        for i, waited in enumerate(lanes):
            if i == col:
                for p in ps:
                    edges.append((col, new_lanes.index(p), color if p == ps[0] else new_colors[new_lanes.index(p)]))
            else:
                edges.append((i, new_lanes.index(waited), colors[i]))
        dedup_lanes, dedup_colors = [], []
        for lane, c in zip(new_lanes, new_colors, strict=True):
            if lane not in dedup_lanes:
                dedup_lanes.append(lane)
                dedup_colors.append(c)
        edges = [(a, dedup_lanes.index(new_lanes[b]), c) for a, b, c in edges]
        yield {"rev": r, "col": col, "color": color, "edges": edges,
               "width": max(len(lanes), len(dedup_lanes), 1)}
        lanes, colors = dedup_lanes, dedup_colors
