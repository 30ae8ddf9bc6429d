"""A Mercurial repository on disk: its changelog, manifests and filelogs, and the names around them.

A `Repository` is cheap to open and meant for one request on one thread: the parsed indexes it
uses are cached process-wide (see revlog.py), and so is everything derived from a given
changelog index (parents, phases, branches), keyed by that immutable index.

What is served: every changeset whose phase is public or draft. Secret, archived and internal
changesets are invisible (unknown to `known`, `lookup`, `heads`, never in a changegroup), and so
are obsolete ones (named as predecessor by a marker of `.hg/store/obsstore`, and not public)
unless a visible changeset descends from them or a bookmark, the working directory or a local
tag pins them: Mercurial's "served" view.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, TypeVar

from . import branchmap as branchmod
from . import dagop, obsolete, phases
from .bookmarks import BookmarkStore
from .changelog import Changelog, extra_from_text, topic_from_text
from .error import Abort, CorruptRevlog, HgError, LockTimeout, LookupError, PushRaced, RepoNotFound, UnknownRevision
from .filelog import Filelog
from .hgrc import RepoConfig
from .lock import Lock, local_mutex
from .manifest import Manifestlog
from .node import NULLID, NULLREV
from .revlog import FLAG_GENERALDELTA, FLAG_INLINE_DATA, REVLOGV1, Revlog, RevlogWriter
from .store import HG_INIT_REQUIREMENTS, Store, check_requirements, read_requirements
from .tags import live_tags, merge_tags, parse_tags
from .transaction import Transaction, has_journal, rollback_journal

if TYPE_CHECKING:
    from .changegroup import ApplyResult
    from .filelog import LfsPointer

__all__ = ["AmbiguousRevision", "PendingRevlogs", "Repository", "recover_abandoned"]

DEFAULT_LOCK_TIMEOUT = 600.0
_HEX = re.compile(rb"[0-9a-fA-F]+\Z")
# what `hg init` leaves in .hg/00changelog.i so that very old clients refuse the store layout
# the most marker bytes in one `obsolete` pushkey value (hg's, to fit HTTP answers of old servers)
OBS_PUSHKEY_CHUNK = 5300
_DUMMY_CHANGELOG = b"\0\0\xff\xff dummy changelog to prevent using the old repo layout"


class AmbiguousRevision(UnknownRevision):
    def __init__(self, key):
        super().__init__(key)
        self.message = f"ambiguous identifier '{self.key}'"
        self.args = (self.message,)


class PendingRevlogs(Protocol):
    """The revlog writers a transaction has open (changegroup.py's), as the repository sees them."""

    @property
    def changelog(self) -> RevlogWriter: ...

    def publish(self) -> None:
        """Make what was written durable and visible (the changelog last); called at commit."""


W = TypeVar("W", bound=PendingRevlogs)
R = TypeVar("R", bound=Revlog)


class Repository:
    def __init__(self, root: Path, requirements: frozenset[str]):
        self.root = Path(root)
        self.requirements = requirements
        self.store = Store(self.root, requirements)
        self.has_lfs = "lfs" in requirements
        self.publishing = True
        # the repository's settings (its .hg/hgrc within what the server allows); the opener sets them
        self.config = RepoConfig()
        # How long lock() waits for another writer; the server's opener sets it from its config.
        self.lock_timeout = DEFAULT_LOCK_TIMEOUT
        # fsync pushes before acknowledging them (set False only where durability does not matter)
        self.durable = True
        self.compression = "zstd" if "revlog-compression-zstd" in requirements else "zlib"
        self.generaldelta = "generaldelta" in requirements
        self.sparse = "sparserevlog" in requirements
        self._changelog: Changelog | None = None
        self._manifestlog: Manifestlog | None = None
        self._filelogs: dict[bytes, Filelog] = {}
        self._lock_depth = 0
        self._locks: list[Lock] = []
        self._local_mutex = None
        self._tr: Transaction | None = None
        self._phases = phases.PhaseState(self.store.path / "phaseroots")
        if "bookmarksinstore" in requirements:
            self._bookmarks = BookmarkStore(self.store.path / "bookmarks", b"")
        else:
            self._bookmarks = BookmarkStore(self.root / ".hg" / "bookmarks", b"plain")
        self._pending: PendingRevlogs | None = None  # revlog writers of the open transaction
        self._pending_files: set[bytes] = set()  # hg's pending files the open transaction wrote
        self._stream_inodes: dict[bytes, int] = {}  # inode of each file stream_files() listed
        self._new_markers = 0  # obsolescence markers the open transaction added

    # -- opening and creating
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Repository:
        root = Path(path)
        if not (root / ".hg").is_dir():
            raise RepoNotFound(root)
        reqs = read_requirements(root)
        check_requirements(reqs, root)
        return cls(root, reqs)

    @classmethod
    def init(cls, path: str | os.PathLike[str], *, lfs: bool = False) -> Repository:
        """Create a repository as `hg init` of Mercurial 7.2.4 does (plus `lfs` when asked)."""
        root = Path(path)
        hg = root / ".hg"
        if hg.exists():
            raise Abort(f"repository {root} already exists")
        root.mkdir(parents=True, exist_ok=True)
        hg.mkdir()
        (hg / "cache").mkdir()
        (hg / "wcache").mkdir()
        (hg / "store").mkdir()
        (hg / "00changelog.i").write_bytes(_DUMMY_CHANGELOG)
        reqs = set(HG_INIT_REQUIREMENTS) | ({"lfs"} if lfs else set())
        (hg / "store" / "requires").write_bytes(b"".join(r.encode() + b"\n" for r in sorted(reqs)))
        # written last: a directory with .hg/requires is a repository
        (hg / "requires").write_bytes(b"share-safe\n")
        return cls.open(root)

    def close(self) -> None:
        for rl in [self._changelog, self._manifestlog.revlog if self._manifestlog else None,
                   *self._filelogs.values()]:
            if rl is not None:
                rl.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- revlogs
    def revlog_header(self) -> int:
        """The header a revlog created in this repository starts with."""
        return REVLOGV1 | FLAG_INLINE_DATA | (FLAG_GENERALDELTA if self.generaldelta else 0)

    def open_revlog(self, cls: type[R], index_name: bytes, **kw) -> R:
        """Open the store's revlog `index_name` (e.g. b"data/f.i") as a `cls` (a Revlog class)."""
        data_name = index_name[:-2] + b".d"
        return cls(self.store.join(index_name), self.store.join(data_name), index_name.decode("utf-8", "replace"),
                   default_header=self.revlog_header(), **kw)

    @property
    def changelog(self) -> Changelog:
        if self._changelog is None:
            self._changelog = self.open_revlog(Changelog, b"00changelog.i")
        return self._changelog

    @property
    def manifestlog(self) -> Manifestlog:
        if self._manifestlog is None:
            # the changelog is read first: every manifest it names is then on disk
            self.changelog  # noqa: B018 - the property loads it
            self._manifestlog = Manifestlog(self.open_revlog(Revlog, b"00manifest.i"))
        return self._manifestlog

    def file(self, path: bytes) -> Filelog:
        fl = self._filelogs.get(path)
        if fl is None:
            self.changelog  # noqa: B018 - read first, as above
            fl = self.open_revlog(Filelog, Store.filelog_name(path), path=path)
            if len(self._filelogs) > 256:
                for old in list(self._filelogs.values())[:128]:
                    old.close()
                self._filelogs = dict(list(self._filelogs.items())[128:])
            self._filelogs[path] = fl
        return fl

    def invalidate(self) -> None:
        """Forget loaded revlogs (after this instance wrote)."""
        self.close()
        self._changelog = None
        self._manifestlog = None
        self._filelogs = {}
        self._bookmarks.invalidate()
        self._phases.reset()

    # -- DAG
    def _derived(self, key: str, compute):
        d = self.changelog.index.derived
        try:
            return d[key]
        except KeyError:
            value = d[key] = compute()
            return value

    @property
    def parents_list(self) -> list[tuple[int, int]]:
        return self._derived("parents", lambda: [(e[5], e[6]) for e in self.changelog.index.entries])

    # -- phases
    @property
    def phase_array(self) -> bytearray:
        """Phase of every changeset (as the open transaction sees them, if any)."""
        return self._phases.array(self.changelog.index, self.parents_list)

    def phase(self, rev: int) -> int:
        if rev == NULLREV:
            return phases.PUBLIC
        return self.phase_array[rev]

    @property
    def visible_mask(self) -> bytearray:
        """1 for each served revision: not secret (or higher), not hidden as obsolete."""
        base = self._phases.visible_mask(self.changelog.index, self.parents_list)
        obs = self.obsstore
        if not obs:
            return base
        pinned = self._pinned_nodes()
        if self._phases.pending is None:
            got = obs.visible
            if got is not None and got[0] is base and got[1] == pinned:
                return got[2]
        mask = self._hide_obsolete(base, obs, pinned)
        if self._phases.pending is None:
            obs.visible = (base, pinned, mask)
        return mask

    @property
    def obsstore(self) -> obsolete.ObsStore:
        """The obsolescence markers (`.hg/store/obsstore`), as on disk now."""
        return obsolete.load(self.store.path / "obsstore")

    def _pinned_nodes(self) -> frozenset[bytes]:
        """What keeps an obsolete changeset visible in hg (repoview.pinnedrevs): bookmarks, the
        working directory's parent, local tags."""
        pinned = set(self._bookmarks.read().values())
        pinned.add(self._working_parent())
        try:
            pinned.update(n for n, _ in parse_tags((self.root / ".hg" / "localtags").read_bytes()).values())
        except (FileNotFoundError, ValueError, TypeError):
            pass
        pinned.discard(NULLID)
        return frozenset(pinned)

    def _hide_obsolete(self, base: bytearray, obs: obsolete.ObsStore, pinned: frozenset[bytes]) -> bytearray:
        """`base` without the revisions hg's "visible" filter hides (repoview.computehidden):
        obsolete ones, except pinned ones and ancestors of the non-public revisions left visible."""
        arr = self.phase_array
        parents, nodes = self._tr_dag()
        n = min(len(arr), len(nodes), len(base))
        rev_of = {node: r for r, node in enumerate(nodes)} if self._pending is not None else None
        hidden = set()
        for node in obs.successors:
            r = rev_of.get(node) if rev_of is not None else self.changelog.get_rev(node)
            if r is not None and 0 <= r < n and arr[r] != phases.PUBLIC and node not in pinned:
                hidden.add(r)
        if not hidden:
            return base
        mutable_visible = [r for r in range(n) if arr[r] != phases.PUBLIC and r not in hidden]
        revealed = dagop.ancestors_mask(parents, mutable_visible, n)
        mask = bytearray(base)
        for r in hidden:
            if not revealed[r]:
                mask[r] = 0
        return mask

    def obsolete_revs(self) -> list[int]:
        """Revisions that are obsolete (hidden or not): non-public predecessors of some marker."""
        obs = self.obsstore
        arr = self.phase_array
        out = []
        for node in obs.successors:
            r = self.changelog.get_rev(node)
            if r is not None and 0 <= r < len(arr) and arr[r] != phases.PUBLIC:
                out.append(r)
        return sorted(out)

    def instabilities(self) -> dict[str, frozenset[int]]:
        """hg's obsolescence sets: `obsolete`, and the troubled visible-or-not changesets
        `orphan` (descends from an obsolete one), `phase-divergent` (rewrites a changeset that is
        public), `content-divergent` (its predecessor was rewritten more than one way)."""
        obs = self.obsstore
        empty: frozenset[int] = frozenset()
        if not obs:
            return {"obsolete": empty, "orphan": empty, "phase-divergent": empty, "content-divergent": empty}
        cl = self.changelog
        arr = self.phase_array
        parents = self.parents_list
        obs_revs = frozenset(self.obsolete_revs())
        orphan: set[int] = set()
        first = min((r for r, p in enumerate(arr) if p != phases.PUBLIC), default=len(arr))
        for r in range(first, len(arr)):
            if arr[r] == phases.PUBLIC or r in obs_revs:
                continue
            if any(p != NULLREV and (p in obs_revs or p in orphan) for p in parents[r]):
                orphan.add(r)

        def is_final(node: bytes) -> bool:
            return node not in obs.successors and cl.get_rev(node) is not None

        memo: dict[bytes, list[frozenset[bytes]]] = {}
        phase_div, content_div = set(), set()
        for node in obs.predecessors:
            rev = cl.get_rev(node)
            if rev is None or not 0 <= rev < len(arr) or arr[rev] == phases.PUBLIC or rev in obs_revs:
                continue
            seen = {node}
            todo = [node]
            while todo:
                cur = todo.pop()
                for m in obs.predecessors.get(cur, ()):
                    prec = m[0]
                    if prec in seen:
                        continue
                    seen.add(prec)
                    todo.append(prec)
                    pr = cl.get_rev(prec)
                    if pr is not None and 0 <= pr < len(arr) and arr[pr] == phases.PUBLIC and not m[2] & 1:
                        phase_div.add(rev)  # (flag 1: the marker itself fixes a phase-divergence)
                    if len([x for x in obs.successor_sets(prec, is_final, memo) if x]) > 1:
                        content_div.add(rev)
        return {"obsolete": obs_revs, "orphan": frozenset(orphan), "phase-divergent": frozenset(phase_div),
                "content-divergent": frozenset(content_div)}

    def has_hidden(self) -> bool:
        """True when some changeset is not served (secret, archived, internal or hidden obsolete)."""
        arr = self.phase_array
        if bool(arr) and max(arr) >= phases.HIDDEN_FROM:
            return True
        return bool(self.obsstore) and 0 in self.visible_mask

    has_secret = has_hidden

    def is_visible(self, rev: int, mask: bytearray | None = None) -> bool:
        """Whether `rev` is served. Loops pass `mask` (self.visible_mask, taken once): getting
        it checks the phaseroots file on disk."""
        if rev == NULLREV:
            return True
        if mask is None:
            mask = self.visible_mask
        return 0 <= rev < len(mask) and bool(mask[rev])

    def visible_rev(self, node: bytes, mask: bytearray | None = None) -> int | None:
        rev = self.changelog.get_rev(node)
        if rev is None or not self.is_visible(rev, mask):
            return None
        return rev

    def public_heads(self) -> list[bytes]:
        arr = self.phase_array
        public = bytearray(1 if p == phases.PUBLIC else 0 for p in arr)
        return [self.changelog.node(r) for r in dagop.heads_of(self.parents_list, public)]

    def draft_roots(self) -> list[bytes]:
        arr = self.phase_array
        parents = self.parents_list
        out = []
        for r, p in enumerate(arr):
            if p == phases.DRAFT:
                p1, p2 = parents[r]
                if (p1 == NULLREV or arr[p1] == phases.PUBLIC) and (p2 == NULLREV or arr[p2] == phases.PUBLIC):
                    out.append(self.changelog.node(r))
        return out

    # -- heads and branches
    def head_revs(self) -> list[int]:
        """Visible heads, ascending."""
        visible = self.visible_mask
        if self._phases.pending is not None:
            return dagop.heads_of(self.parents_list, visible)
        cache = self.changelog.index.derived
        got = cache.get("heads")
        if got is None or got[0] is not visible:
            got = cache["heads"] = (visible, dagop.heads_of(self.parents_list, visible))
        return list(got[1])

    def all_head_revs(self) -> list[int]:
        """Heads of all changesets, secret ones included, ascending."""
        return list(self._derived("all_heads", lambda: dagop.heads_of(self.parents_list)))

    def heads(self) -> list[bytes]:
        """Visible heads, newest first (the order `hg heads` and the wire protocol use)."""
        cl = self.changelog
        revs = self.head_revs()
        if not revs:
            return [NULLID]
        return [cl.node(r) for r in reversed(revs)]

    def branch_of(self) -> list[tuple[bytes, bool]]:
        """(branch, closes branch) of every changeset."""
        return branchmod.branch_info(self.changelog)

    def branchmap(self) -> dict[bytes, list[bytes]]:
        """Every head of every named branch (closed ones included), each list ascending by rev."""
        cl = self.changelog
        heads = branchmod.branch_heads(self.branch_of(), self.parents_list, self.visible_mask)
        return {branch: [cl.node(r) for r in revs] for branch, revs in heads.items()}

    def branchmap_tns(self) -> dict[bytes, list[bytes]]:
        """The branch map of the topic extension (`branchmaptns`): heads by fully qualified branch
        name, where a draft changeset with a topic belongs to `branch//[namespace/]topic`."""
        cl = self.changelog
        arr = self.phase_array
        topics = branchmod.topic_info(cl)
        info = [(branchmod.fqbn(b, *topics[r]) if topics[r][1] and arr[r] != phases.PUBLIC else b, closed)
                for r, (b, closed) in enumerate(self.branch_of())]
        heads = branchmod.branch_heads(info, self.parents_list, self.visible_mask)
        return {name: [cl.node(r) for r in revs] for name, revs in heads.items()}

    def heads_without_topics(self) -> list[bytes]:
        """Visible heads once the changesets with a topic that are not public, and what descends
        from them, are left out: what hg-evolve's `topic.server-gate-topic-changesets` serves
        to clients without the topic extension (its `served-no-topic` view). Newest first."""
        visible = self.visible_mask
        arr = self.phase_array
        topics = branchmod.topic_info(self.changelog)
        parents = self.parents_list
        served = bytearray(visible)
        gated = bytearray(len(served))
        for r in range(len(served)):
            if not visible[r] or arr[r] == phases.PUBLIC:
                continue
            p1, p2 = parents[r]
            if topics[r][1] or (p1 != NULLREV and gated[p1]) or (p2 != NULLREV and gated[p2]):
                gated[r] = 1
                served[r] = 0
        revs = dagop.heads_of(parents, served)
        return [self.changelog.node(r) for r in reversed(revs)] or [NULLID]

    def tr_extra(self, node: bytes) -> dict[bytes, bytes]:
        """The extras of a changeset of this repository or of the open transaction."""
        rev = self._resolve_tr_rev(node)
        if rev is None:
            return {}
        if self._pending is not None and rev >= len(self.changelog):
            return extra_from_text(self._pending.changelog.revision(rev))
        return extra_from_text(self.changelog.revision(rev))

    def tr_phase(self, node: bytes) -> int | None:
        """The phase of a changeset as the open transaction sees it (None: unknown)."""
        rev = self._resolve_tr_rev(node)
        if rev is None:
            return None
        arr = self.phase_array
        return arr[rev] if rev < len(arr) else phases.DRAFT

    def tr_published(self) -> list[bytes]:
        """The changesets the open transaction makes public (hg's `tr.changes['phases']` moves to
        public), oldest first."""
        pending = self._phases.pending
        if pending is None:
            return []
        self._phases.pending = None
        try:
            before = self._phases.array(self.changelog.index, self.parents_list)
        finally:
            self._phases.pending = pending
        _, nodes = self._tr_dag()
        return [nodes[r] for r, p in enumerate(pending)
                if p == phases.PUBLIC and (r >= len(before) or before[r] != phases.PUBLIC)]

    def topic_of(self, node: bytes) -> bytes:
        """The topic of a changeset of this repository or of the open transaction (b"": none)."""
        rev = self._resolve_tr_rev(node)
        if rev is None:
            return b""
        if self._pending is not None and rev >= len(self.changelog):
            return topic_from_text(self._pending.changelog.revision(rev))[1]
        return branchmod.topic_info(self.changelog)[rev][1]

    def branch_tip(self, branch: bytes) -> bytes | None:
        info = self.branch_of()
        heads = branchmod.branch_heads(info, self.parents_list, self.visible_mask).get(branch, [])
        tip = branchmod.branch_tip(info, heads)
        return None if tip is None else self.changelog.node(tip)

    # -- names
    def bookmarks(self) -> dict[bytes, bytes]:
        """Bookmarks pointing at visible changesets."""
        mask = self.visible_mask
        return {name: node for name, node in self._bookmarks.read().items()
                if self.visible_rev(node, mask) is not None}

    def tags(self) -> dict[bytes, bytes]:
        """Global tags (.hgtags of every head, merged as hg does), local tags and `tip`."""
        cl = self.changelog
        heads = self.head_revs()
        key = tuple(heads)
        cache = cl.index.derived
        got = cache.get("tags")
        if got is None or got[0] != key:
            hist: dict = {}
            seen = set()
            ml = self.manifestlog
            for r in heads:
                found = ml.find(cl.manifest_node(r), b".hgtags")
                if found is None or found[0] in seen:
                    continue
                seen.add(found[0])
                try:
                    data = self.file(b".hgtags").read(found[0])
                except LookupError:
                    continue
                merge_tags(hist, parse_tags(data))
            got = (key, live_tags(hist))
            cache["tags"] = got
        tags = dict(got[1])
        try:
            local = parse_tags((self.root / ".hg" / "localtags").read_bytes())
            tags.update(live_tags(local))
        except FileNotFoundError:
            pass
        mask = self.visible_mask
        tags = {name: node for name, node in tags.items() if self.visible_rev(node, mask) is not None}
        tip = self._visible_tip()
        tags[b"tip"] = cl.node(tip)
        return tags

    def _visible_tip(self) -> int:
        visible = self.visible_mask
        for r in range(len(visible) - 1, -1, -1):
            if visible[r]:
                return r
        return NULLREV

    def _working_parent(self) -> bytes:
        try:
            with open(self.root / ".hg" / "dirstate", "rb") as f:
                head = f.read(64)
        except FileNotFoundError:
            return NULLID
        if head.startswith(b"dirstate-v2\n"):
            return head[12:32]
        return head[:20] if len(head) >= 20 else NULLID

    def lookup(self, key: bytes | str) -> bytes:
        """Resolve a name as `hg lookup` does: rev number, full hex, bookmark, tag, branch, hex prefix."""
        if isinstance(key, str):
            key = key.encode("utf-8")
        cl = self.changelog
        if key == b"null":
            return NULLID
        if key == b"tip":
            return cl.node(self._visible_tip())
        if key == b".":
            node = self._working_parent()
            if node != NULLID and self.visible_rev(node) is None:
                raise UnknownRevision(key)
            return node
        try:
            rev = int(key)
            if b"%d" % rev == key:
                if rev < 0:
                    rev += len(cl)
                if 0 <= rev < len(cl):
                    if not self.is_visible(rev):
                        raise UnknownRevision(key)
                    return cl.node(rev)
        except ValueError:
            pass
        if len(key) == 40 and _HEX.match(key):
            node = bytes.fromhex(key.decode())
            if self.visible_rev(node) is not None:
                return node
        marks = self.bookmarks()
        if key in marks:
            return marks[key]
        tags = self.tags()
        if key in tags:
            return tags[key]
        tip = self.branch_tip(key)
        if tip is not None:
            return tip
        if _HEX.match(key) and len(key) <= 40:
            found = self._resolve_prefix(key.lower())
            if found is not None:
                return found
        raise UnknownRevision(key)

    def _resolve_prefix(self, prefix: bytes) -> bytes | None:
        cl = self.changelog
        visible = self.visible_mask
        found = None
        text = prefix.decode()
        for r, e in enumerate(cl.index.entries):
            if visible[r] and e[7].hex().startswith(text):
                if found is not None:
                    raise AmbiguousRevision(prefix)
                found = e[7]
        if found is None and NULLID.hex().startswith(text):
            return NULLID
        return found

    def known(self, nodes: Iterable[bytes]) -> list[bool]:
        mask = self.visible_mask
        return [self.visible_rev(n, mask) is not None for n in nodes]

    # -- discovery helpers
    def missing(self, common: Iterable[bytes], heads: Iterable[bytes]) -> list[int]:
        cl = self.changelog
        mask = self.visible_mask
        common_revs = [r for r in (self.visible_rev(n, mask) for n in common) if r is not None]
        head_revs = []
        for n in heads:
            if n == NULLID:
                continue
            r = self.visible_rev(n, mask)
            if r is None:
                raise UnknownRevision(n.hex())
            head_revs.append(r)
        del cl
        return dagop.missing(self.parents_list, common_revs, head_revs)

    def between(self, pairs: Iterable[tuple[bytes, bytes]]) -> list[list[bytes]]:
        """For each (top, bottom): nodes at distance 1, 2, 4, 8... from top along first parents,
        stopping before bottom (or the null revision).

        Walking each pair would cost pairs x history (a client can send thousands of pairs over a
        long history); instead the first-parent depth of each revision and a skew-binary jump
        pointer (Myers) are computed once per request for the revisions the pairs reach, so the
        whole request is linear in history plus pairs x log^2(history). Ancestors of a visible
        changeset are visible (phases only grow towards descendants), so only the tops are checked.
        """
        cl = self.changelog
        mask = self.visible_mask
        depth: dict[int, int] = {}
        jump: dict[int, int] = {}
        parent: dict[int, int] = {}

        def ensure(rev: int) -> None:
            pending = []
            while rev != NULLREV and rev not in depth:
                pending.append(rev)
                rev = cl.parentrevs(rev)[0]
            for v in reversed(pending):
                p = cl.parentrevs(v)[0]
                parent[v] = p
                if p == NULLREV:
                    depth[v], jump[v] = 0, v
                    continue
                depth[v] = depth[p] + 1
                j = jump[p]
                jump[v] = jump[j] if depth[p] - depth[j] == depth[j] - depth[jump[j]] else p

        def ancestor_at(rev: int, d: int) -> int:
            while depth[rev] > d:
                rev = parent[rev] if depth[jump[rev]] < d else jump[rev]
            return rev

        out: list[list[bytes]] = []
        for top, bottom in pairs:
            if top in (bottom, NULLID):
                out.append([])
                continue
            trev = self.visible_rev(top, mask)
            if trev is None:
                raise UnknownRevision(top.hex())
            ensure(trev)
            end = depth[trev] + 1  # distance of the null revision
            brev = cl.get_rev(bottom) if bottom != NULLID else None
            if brev is not None:
                ensure(brev)
                if depth[brev] <= depth[trev] and ancestor_at(trev, depth[brev]) == brev:
                    end = depth[trev] - depth[brev]
            found = []
            dist = 1
            while dist < end:
                found.append(cl.node(ancestor_at(trev, depth[trev] - dist)))
                dist *= 2
            out.append(found)
        return out

    def branches(self, nodes: Iterable[bytes]) -> list[tuple[bytes, bytes, bytes, bytes]]:
        """For each node: (node, first ancestor along first parents that is a merge or a root, its parents)."""
        cl = self.changelog
        nodes = list(nodes) or [cl.node(self._visible_tip())]
        mask = self.visible_mask
        # the stop revision of every revision walked: tops sharing a first-parent line walk it
        # once, so a request costs at most the history's length, not nodes x history
        stop: dict[int, int] = {}
        out = []
        for top in nodes:
            rev = self.visible_rev(top, mask)
            if rev is None:
                raise UnknownRevision(top.hex())
            path = []
            while rev not in stop:
                p1, p2 = cl.parentrevs(rev)
                if p2 != NULLREV or p1 == NULLREV:
                    stop[rev] = rev
                    break
                path.append(rev)
                rev = p1  # ancestors of a visible changeset are visible
            end = stop[rev]
            for r in path:
                stop[r] = end
            p1, p2 = cl.parentrevs(end)
            out.append((top, cl.node(end), cl.node(p1), cl.node(p2)))
        return out

    # -- pushkey namespaces
    def listkeys(self, namespace: bytes | str) -> dict[bytes, bytes]:
        if isinstance(namespace, str):
            namespace = namespace.encode()
        if namespace == b"namespaces":
            names = {b"bookmarks": b"", b"namespaces": b"", b"phases": b""}
            if self.config.evolution.exchange:
                names[b"obsolete"] = b""
            return names
        if namespace == b"obsolete":
            return self._obsolete_keys() if self.config.evolution.exchange else {}
        if namespace == b"bookmarks":
            return {name: node.hex().encode() for name, node in self.bookmarks().items()}
        if namespace == b"phases":
            keys = {node.hex().encode(): b"1" for node in self.draft_roots()}
            if self.publishing:
                keys[b"publishing"] = b"True"
            return keys
        return {}

    def _obsolete_keys(self) -> dict[bytes, bytes]:
        """The `obsolete` pushkey namespace of old clients: every marker in format 0, in base85
        chunks `dump0`, `dump1`... of at most ~5300 bytes each (hg's limit for an HTTP answer)."""
        chunks: list[list[bytes]] = []
        size = OBS_PUSHKEY_CHUNK
        for m in obsolete.sorted_markers(self.obsstore.markers):
            data = obsolete.encode_markers([m], 0, header=False)
            if size + len(data) > OBS_PUSHKEY_CHUNK:
                chunks.append([])
                size = 0
            chunks[-1].append(data)
            size += len(data)
        return {b"dump%d" % i: base64.b85encode(b"\0" + b"".join(part))
                for i, part in enumerate(reversed(chunks))}

    # -- obsolescence markers
    def add_markers(self, tr: Transaction, markers: list[obsolete.Marker]) -> int:
        """Add `markers` to the obsstore in `tr` (those it has already are skipped); returns how
        many are new. Refused unless the repository creates markers, and on a publishing
        repository for markers that would obsolete a public changeset."""
        self.check_transaction(tr)
        if not self.config.evolution.createmarkers:
            raise Abort("creating obsolete markers is not enabled on this repo")
        obs = self.obsstore
        new = obs.new_markers(markers)
        if not new:
            return 0
        if self.publishing:
            arr = self._edit_phases()[0] if self._phases.pending is not None else self.phase_array
            for m in new:
                r = self._resolve_tr_rev(m[0])
                if r is not None and 0 <= r < len(arr) and arr[r] == phases.PUBLIC:
                    raise Abort(f"cannot obsolete public changeset: {m[0].hex()[:12]}",
                                hint="see 'hg help phases' for details")
        try:
            size = os.path.getsize(self.store.join(b"obsstore"))
        except FileNotFoundError:
            size = 0
        version = obs.version if size else obsolete.DEFAULT_FORMAT
        tr.append_file(b"obsstore", obsolete.encode_markers(new, version, header=size == 0))
        self._new_markers += len(new)
        return len(new)

    # -- stream clones
    def stream_files(self) -> list[tuple[bytes, int]]:
        """Store files of a stream clone with their sizes: filelogs, then the manifest, then the
        changelog (so the changelog never names data the copy lacks). Sizes are read under the
        lock; read each file only up to its size, through open_store_file()."""
        with self.lock():
            names = [*self.store.data_files(), b"00manifest.d", b"00manifest.i", b"00changelog.d",
                     b"00changelog.i"]
            out = []
            self._stream_inodes = {}
            for name in names:
                try:
                    st = os.stat(self.store.join(name))
                except FileNotFoundError:
                    continue
                self._stream_inodes[name] = st.st_ino
                out.append((name, st.st_size))
        return out

    def open_store_file(self, name: bytes) -> BinaryIO:
        """Open a store file by its unencoded name (for stream clones)."""
        if b"\0" in name or name.startswith(b"/") or b".." in name.split(b"/"):
            raise Abort(f"invalid store file name {name!r}")
        fh = open(self.store.join(name), "rb")  # noqa: SIM115 - returned to the caller, who closes it
        expected = self._stream_inodes.get(name)
        if expected is not None and os.fstat(fh.fileno()).st_ino != expected:
            # appends are fine (we read up to the listed size), but a push that split an inline
            # revlog replaced this file: its first bytes are no longer what was listed
            fh.close()
            raise Abort(f"{name.decode('utf-8', 'replace')} was rewritten while being streamed",
                        hint="a push changed the repository; clone again")
        return fh

    def read_store_file(self, name: bytes, size: int, chunk: int) -> Iterator[bytes]:
        """The first `size` bytes of a store file (as listed for a stream clone), in `chunk`s."""
        with self.open_store_file(name) as fh:
            left = size
            while left > 0:
                data = fh.read(min(chunk, left))
                if not data:
                    raise CorruptRevlog(f"store file {os.fsdecode(name)} is shorter than its listed size {size}"
                                        " (it shrank while being streamed)")
                left -= len(data)
                yield data

    # -- locking and transactions
    @contextlib.contextmanager
    def lock(self, timeout: float | None = None) -> Iterator[None]:
        """Hold `.hg/wlock` then `.hg/store/lock` (hg's order). Reentrant within this instance.

        Waits at most `timeout` seconds (default: this instance's `lock_timeout`) for another writer.

        On first acquisition, an abandoned transaction (journal left by a crash) is rolled back.
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        if timeout is None:
            timeout = self.lock_timeout
        mutex = local_mutex(self.root / ".hg")
        start = time.monotonic()
        acquired = mutex.acquire(timeout=timeout) if timeout > 0 else mutex.acquire(blocking=False)
        if not acquired:
            raise LockTimeout(self.root / ".hg" / "store" / "lock", "another thread of this server",
                              round(time.monotonic() - start, 1))
        locks = []
        try:
            for path, desc in ((self.root / ".hg" / "wlock", "working directory"),
                               (self.store.path / "lock", "repository")):
                lk = Lock(path, desc)
                lk.acquire(max(0.0, timeout - (time.monotonic() - start)))
                locks.append(lk)
            self._lock_depth = 1
            # whatever was read before the lock may be stale now
            self.invalidate()
            self.recover()
            yield
        finally:
            self._lock_depth = 0
            for lk in reversed(locks):
                lk.release()
            mutex.release()

    def recover(self) -> bool:
        """Roll back an abandoned transaction; True if there was one. Needs the lock."""
        if not self._lock_depth:
            with self.lock():
                return False  # lock() already recovered
        if has_journal(self.store):
            rollback_journal(self.store)
            self._after_rollback()
            return True
        return False

    def _after_rollback(self) -> None:
        self.invalidate()
        # hg's own branch and tag caches revalidate themselves against the changelog tip; drop
        # them anyway after a rollback so nothing derived from rolled-back data survives
        cache = self.root / ".hg" / "cache"
        for name in ("branch2-served", "branch2-visible", "branch2-immutable", "branch2-base",
                     "branch2-served.hidden", "branch2-visible-hidden", "tags2-served", "tags2-visible",
                     "tags2", "branch3-served", "branch3-visible", "branch3-base", "branch3-immutable"):
            try:
                os.unlink(cache / name)
            except FileNotFoundError:
                pass

    @contextlib.contextmanager
    def transaction(self, desc: bytes = b"push") -> Iterator[Transaction]:
        """A journaled transaction (requires the lock). Rolled back if the block raises."""
        if not self._lock_depth:
            raise Abort("a transaction needs the repository lock (use `with repo.lock():`)")
        if self._tr is not None:
            yield self._tr
            return
        tr = Transaction(self.store, desc, durable=self.durable)
        self._tr = tr
        self._new_markers = 0
        self._phases.reset()
        try:
            yield tr
            self._write_pending_state(tr)
            tr.close()
        except BaseException:
            tr.abort()
            self._after_rollback()
            raise
        finally:
            self._tr = None
            self._pending = None
            self._pending_files = set()
            self._phases.reset()
        self._remove_undo()
        self.invalidate()

    def _remove_undo(self) -> None:
        # hg's `rollback` would undo hg's last transaction from offsets that predate ours,
        # taking our push with it: remove that stale undo information.
        for p in (self.store.path / "undo", self.store.path / "undo.backupfiles",
                  self.root / ".hg" / "undo.desc"):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def _write_pending_state(self, tr: Transaction) -> None:
        """Write phaseroots and bookmarks, then publish the revlogs (the changelog last)."""
        parents, nodes = self._tr_dag()
        self._phases.write(tr, parents, nodes)
        self._bookmarks.write(tr)
        if self._pending is not None:
            self._pending.publish()

    def write_pending(self, tr: Transaction) -> bool:
        """Make what `tr` wrote so far readable by Mercurial run with HG_PENDING=<root> (a
        pretxn* hook): `00changelog.i.a` (the changelog index with the new revisions, whose data
        is already in 00changelog.d), `phaseroots.pending`, `bookmarks.pending` — hg's pending
        files. They are temporary files of `tr`, gone when it ends either way. True when there
        is something pending."""
        self.check_transaction(tr)
        written = False
        if self._pending is not None:
            if b"00changelog.i.a" not in self._pending_files:
                tr.registertmp(b"00changelog.i.a")
                self._pending_files.add(b"00changelog.i.a")
            written = self._pending.changelog.write_pending_index(self.store.join(b"00changelog.i.a"))
        parents, nodes = self._tr_dag()
        for name, location, data in ((b"phaseroots.pending", b"", self._phases.pending_roots(parents, nodes)),
                                     (b"bookmarks.pending", self._bookmarks.location, self._bookmarks.pending_data())):
            if data is None:
                continue
            if name not in self._pending_files:
                tr.registertmp(name, location)
                self._pending_files.add(name)
            with open(tr.path(name, location), "wb") as fh:
                fh.write(data)
            written = True
        return written

    def _tr_dag(self) -> tuple[list, list]:
        """(parents, nodes) of the changelog including revisions added by the open transaction."""
        cl = self.changelog
        parents = list(self.parents_list)
        nodes = [e[7] for e in cl.index.entries]
        if self._pending is not None:
            entries = self._pending.changelog.entries
            for r in range(len(parents), len(entries)):
                e = entries[r]
                parents.append((e[5], e[6]))
                nodes.append(e[7])
        return parents, nodes

    def _edit_phases(self) -> tuple[bytearray, list]:
        """The open transaction's phases, covering the revisions it added, and its DAG."""
        parents, _ = self._tr_dag()
        return self._phases.edit(self.phase_array, len(parents)), parents

    # -- writing (see changegroup.py for the changegroup itself)
    def add_changegroup(self, tr: Transaction, source: BinaryIO, version: str, *,
                        on_lfs_pointer: Callable[[LfsPointer], None] | None = None,
                        on_file_revision: Callable[[bytes, bytes, int], None] | None = None) -> ApplyResult:
        """Apply a changegroup of `version` read from `source` inside `tr` (see changegroup.apply)."""
        from .changegroup import apply

        return apply(self, tr, source, version, on_lfs_pointer=on_lfs_pointer,
                     on_file_revision=on_file_revision)

    def revlog_writers(self, tr: Transaction, open_writers: Callable[[], W]) -> W:
        """The revlog writers of the open transaction `tr`, opened by `open_writers()` on first
        use (one set per transaction, whatever the number of changegroups it applies). The
        revisions they hold count as the repository's for the rest of the transaction (phases,
        bookmarks, pushkey); they are published when `tr` commits, after phases and bookmarks."""
        self.check_transaction(tr)
        if self._pending is None:
            self._pending = open_writers()
        return self._pending  # type: ignore[return-value]  # the object open_writers() made

    def mark_new_drafts(self, tr: Transaction, first: int, count: int) -> None:
        """Changesets first..first+count-1, added by `tr`, are draft (or secret under a secret parent)."""
        self.check_transaction(tr)
        arr, parents = self._edit_phases()
        phases.mark_new_drafts(arr, parents, first, count)

    def _resolve_tr_rev(self, node: bytes) -> int | None:
        if self._pending is not None:
            return self._pending.changelog.rev(node)
        return self.changelog.get_rev(node)

    def phases_advance(self, tr: Transaction, phase: int, nodes: Iterable[bytes]) -> None:
        """Move `nodes` and their ancestors to `phase` or lower (public = 0)."""
        self.check_transaction(tr)
        revs = []
        for n in nodes:
            r = self._resolve_tr_rev(n)
            if r is None:
                raise LookupError(n, "00changelog.i")
            revs.append(r)
        arr, parents = self._edit_phases()
        phases.advance(arr, parents, revs, phase)

    def phases_retract(self, tr: Transaction, phase: int, nodes: Iterable[bytes]) -> None:
        """Move `nodes` and their descendants to `phase` or higher."""
        self.check_transaction(tr)
        revs = [r for r in (self._resolve_tr_rev(n) for n in nodes) if r is not None]
        arr, parents = self._edit_phases()
        phases.retract(arr, parents, revs, phase)

    def set_bookmarks(self, tr: Transaction, changes: dict[bytes, bytes | None]) -> None:
        """Set (node) or delete (None) bookmarks in `tr`; every node must be known."""
        self.check_transaction(tr)
        for node in changes.values():
            if node is not None and self._resolve_tr_rev(node) is None:
                raise LookupError(node, "00changelog.i")
        self._bookmarks.change(changes)

    def pushkey(self, tr: Transaction, namespace: bytes | str, key: bytes | str, old: bytes | str,
                new: bytes | str) -> bool:
        """hg's pushkey for 'bookmarks' and 'phases'; False when the old value does not match."""
        self.check_transaction(tr)
        ns = namespace.encode() if isinstance(namespace, str) else namespace
        key, old, new = (v.encode() if isinstance(v, str) else v for v in (key, old, new))
        if ns == b"bookmarks":
            current = self._bookmarks.read().get(key)
            current_hex = current.hex().encode() if current else b""
            if current_hex != old:
                return False
            if new == b"":
                self.set_bookmarks(tr, {key: None})
                return True
            node = self._node_from_hex(new)
            if node is None:
                return False
            self.set_bookmarks(tr, {key: node})
            return True
        if ns == b"obsolete":
            if not key.startswith(b"dump") or old or not self.config.evolution.exchange:
                return False
            try:
                data = base64.b85decode(new)
            except ValueError:
                return False
            self.add_markers(tr, obsolete.decode_markers(data)[1])
            return True
        if ns == b"phases":
            node = self._node_from_hex(key)
            if node is None:
                return False
            try:
                old_phase, new_phase = abs(int(old)), abs(int(new))
            except ValueError:
                return False
            rev = self._resolve_tr_rev(node)
            arr = self.phase_array
            current_phase = arr[rev] if rev is not None and rev < len(arr) else phases.DRAFT
            if current_phase == old_phase and new_phase < old_phase:
                self.phases_advance(tr, new_phase, [node])
                return True
            return current_phase == new_phase
        return False

    def _node_from_hex(self, value: bytes) -> bytes | None:
        if len(value) != 40 or not _HEX.match(value):
            return None
        node = bytes.fromhex(value.decode())
        rev = self._resolve_tr_rev(node)
        if rev is None or rev == NULLREV:
            return None
        arr = self.phase_array
        if rev < len(arr) and arr[rev] >= phases.HIDDEN_FROM:
            return None
        return node

    def check_heads(self, expected: Iterable[bytes | str] | bytes | str) -> None:
        """Raise PushRaced unless `expected` is [b"force"], the current heads, or
        [b"hashed", sha1 of the sorted current heads] (hg's unbundle convention)."""
        expected = list(expected) if not isinstance(expected, (bytes, str)) else [expected]
        if expected == [b"force"] or expected == ["force"]:
            return
        heads = self.heads()
        if sorted(expected) == sorted(heads):
            return
        if len(expected) == 2 and expected[0] in (b"hashed", "hashed"):
            if expected[1] == hashlib.sha1(b"".join(sorted(heads))).digest():
                return
        raise PushRaced()

    def check_transaction(self, tr: Transaction) -> None:
        """Abort unless `tr` is this repository's open transaction."""
        if tr is not self._tr or not tr.active:
            raise Abort("not inside this repository's open transaction")


def recover_abandoned(paths: Iterable, timeout: float = 5.0) -> list[Path]:
    """Roll back the abandoned transactions of these repositories (a server calls this at
    start-up after a crash). Returns the repositories that had one; repositories that cannot be
    opened or locked are skipped (the next push will recover them)."""
    recovered = []
    for path in paths:
        path = Path(path)
        if not (path / ".hg" / "store" / "journal").exists():
            continue
        try:
            repo = Repository.open(path)
            with repo.lock(timeout=timeout):
                pass  # taking the lock rolls the journal back
        except (HgError, OSError):
            continue
        recovered.append(path)
    return recovered
