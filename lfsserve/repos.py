"""Where served repositories live, and the in-process lock that serializes pushes to each.

A repository path (already validated by routing) maps to `<repos_dir>/<path>`; that directory is a
repository when it holds `.hg/`. Repositories do not nest: a path below an existing repository is
not a repository. Symlinks may not lead a path outside `repos_dir`.

Opening and reading a repository is the engine's business (lfsserve.hg), done in the executor;
this module only answers "which directory" and "may I write now".
"""

from __future__ import annotations

import asyncio
import os
import weakref
from pathlib import Path
from typing import Iterator

from .hg.error import UnknownRevision
from .hg.node import NULLID

__all__ = ["AbsentRepo", "RepoRegistry", "RepoPathError"]


class RepoPathError(ValueError):
    """The path cannot hold a repository (outside the root, or inside another repository)."""


class RepoRegistry:
    def __init__(self, repos_dir: Path):
        self.base = Path(repos_dir).resolve()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def path_of(self, name: str) -> Path:
        """The directory of repository `name` (which need not exist yet).

        Raises RepoPathError when the path would leave `repos_dir` through a symlink or lies
        inside another repository.
        """
        path = self.base / name
        real = path.resolve()
        if real != self.base and self.base not in real.parents:
            raise RepoPathError(f"{name}: leads outside the repositories directory")
        parent = path.parent
        while parent != self.base and self.base in parent.parents:
            if (parent / ".hg").is_dir():
                raise RepoPathError(f"{name}: lies inside repository {parent.relative_to(self.base)}")
            parent = parent.parent
        return path

    def exists(self, name: str) -> bool:
        try:
            return (self.path_of(name) / ".hg").is_dir()
        except RepoPathError:
            return False

    def names(self) -> Iterator[str]:
        """Every repository under the root, as sorted "/"-separated paths (blocking: use the executor)."""
        if not self.base.is_dir():
            return
        for dirpath, dirnames, _ in os.walk(self.base):
            if ".hg" in dirnames:
                rel = Path(dirpath).relative_to(self.base)
                if str(rel) != ".":
                    yield rel.as_posix()
                dirnames[:] = []  # no nesting: do not look inside a repository
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))

    def write_lock(self, name: str) -> asyncio.Lock:
        """The lock a push to `name` holds: pushes to one repository run one at a time.

        (The engine also takes Mercurial's on-disk store lock, which keeps an `hg` process and
        lfsserve apart; this one keeps lfsserve's own pushes queued without polling that lock.)
        """
        lock = self._locks.get(name)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[name] = lock
        return lock


# What `hg init` 7.2.4 creates: the answer for a repository that does not exist yet.
DEFAULT_REQUIREMENTS = frozenset({"dotencode", "fncache", "generaldelta", "revlog-compression-zstd",
                                  "revlogv1", "share-safe", "sparserevlog", "store"})


class AbsentRepo:
    """Stands in for a repository that a push may create (hg.create_on_push and a writer asking):
    it answers discovery as an empty repository would, so that `hg push` reaches unbundle."""

    has_lfs = False
    requirements = DEFAULT_REQUIREMENTS

    def __init__(self, publishing: bool):
        self.publishing = publishing

    def heads(self) -> list[bytes]:
        return []

    def branchmap(self) -> dict:
        return {}

    def known(self, nodes):
        return [False for _ in nodes]

    def lookup(self, key: bytes) -> bytes:
        if key in (b"tip", b"null", b".", b"0" * 40, b"-1"):
            return NULLID
        raise UnknownRevision(key)

    def listkeys(self, namespace: bytes) -> dict:
        if namespace == b"namespaces":
            return {b"bookmarks": b"", b"namespaces": b"", b"phases": b""}
        if namespace == b"phases":
            return {b"publishing": b"True"} if self.publishing else {}
        return {}

    def bookmarks(self) -> dict:
        return {}

    def missing(self, common, heads) -> list[int]:
        for h in heads:
            if h != NULLID:
                raise UnknownRevision(h.hex())
        return []

    def between(self, pairs):
        return [[] for _ in pairs]

    def branches(self, nodes):
        return [(n, NULLID, NULLID, NULLID) for n in nodes]
