"""Where served repositories live, and the in-process lock that serializes pushes to each.

A repository path (already validated by routing) maps to `<repos_dir>/<path>`; that directory is a
repository when it holds `.hg/`. Repositories do not nest: a path below an existing repository is
not a repository, and no repository is created around another one. Symlinks may not lead a path
outside `repos_dir`.

Opening and reading a repository is the engine's business (lfsserve.hg), done in the executor;
this module only answers "which directory" and "may I write now".
"""

from __future__ import annotations

import asyncio
import os
import shutil
import weakref
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CannotCreate", "RepoPathError", "RepoRegistry", "make_dirs", "remove_created"]


class RepoPathError(ValueError):
    """The path cannot hold a repository (outside the root, or inside another repository)."""


class CannotCreate(RepoPathError):
    """No repository may be created at this path (something already exists there)."""


def make_dirs(path: Path) -> list[Path]:
    """Create the missing directories of `path`, top down; returns those this call created
    (a directory another request made meanwhile is not ours)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    made = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        made.append(d)
    return made


def remove_created(path: Path, made: list[Path]) -> None:
    """Undo a failed creation: the `.hg` this request wrote into `path`, then the directories it
    made, deepest first, each only while empty (nothing anyone else put there is removed)."""
    shutil.rmtree(path / ".hg", ignore_errors=True)
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            break  # not empty: someone else's content; its parents are not empty either


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

    def check_creatable(self, name: str) -> Path:
        """The directory where a push may create repository `name` (blocking: use the executor).

        Raises RepoPathError when the path lies inside a repository, and CannotCreate when
        anything is already there other than an empty directory, above all when repositories
        lie below it: creating one there would capture them.
        """
        path = self.path_of(name)
        if not path.exists() and not path.is_symlink():
            return path
        if not path.is_dir() or path.is_symlink():
            raise CannotCreate(f"{name}: exists and is not a directory; no repository can be created there")
        inner = self._first_repo_below(path)
        if inner is not None:
            raise CannotCreate(f"{name}: holds repository {inner}; no repository can be created around it")
        if any(path.iterdir()):
            raise CannotCreate(f"{name}: is a directory that is not empty; no repository can be created there")
        return path

    def _first_repo_below(self, path: Path) -> str | None:
        for dirpath, dirnames, _ in os.walk(path):
            if ".hg" in dirnames:
                return Path(dirpath).relative_to(self.base).as_posix()
            dirnames.sort()
        return None

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
