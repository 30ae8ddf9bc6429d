"""Where served repositories live, the one way to open them, and the in-process lock that
serializes pushes to each.

A repository path (already validated by routing) maps to `<repos_dir>/<path>`; that directory is a
repository when it holds `.hg/`. Repositories do not nest: a path below an existing repository is
not a repository, and no repository is created around another one. Symlinks may not lead a path
outside `repos_dir`.

Every front end (wire v1, wire v2, the web pages) and the CLI open repositories through
`RepoRegistry.open`, which applies the server's settings for a repository (publishing, lock
timeout, evolution) and the repository's own `.hg/hgrc` within what the server allows, as a
typed `RepoConfig` (`repo.config`: publishing, evolution, topics, web, hooks), in one place, and
closes what it opened. What they get is a `ServedRepo`: the engine's Repository, or, when a push may create the
repository, an `AbsentRepo` that answers discovery as an empty repository does. Opening and
reading happen in the executor (blocking file I/O).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .hg import hgrc
from .hg.error import RepoNotFound, UnknownRevision
from .hg.hgrc import EvolutionSettings, RepoConfig, TopicSettings, WebSettings
from .hg.node import NULLID
from .hg.repository import DEFAULT_LOCK_TIMEOUT, Repository

if TYPE_CHECKING:
    import asyncio

    from .config import Config

__all__ = [
    "AbsentRepo", "CannotCreate", "EvolutionSettings", "RepoConfig", "RepoPathError", "RepoRegistry", "RepoSettings",
    "ServedRepo", "TopicSettings", "WebSettings", "engine_repo",
    "how_to_create", "make_dirs", "remove_created",
]


class ServedRepo(Protocol):
    """What the wire front ends ask of a repository for discovery and capabilities.

    The engine's Repository implements it, and so does AbsentRepo (a repository a push may
    create). Serving content (changegroups, stream clones) and applying pushes need the engine's
    Repository itself: code that does narrows with `isinstance(repo, Repository)`.
    """

    root: Path
    publishing: bool
    config: RepoConfig
    lock_timeout: float
    has_lfs: bool
    requirements: frozenset[str]

    def heads(self) -> list[bytes]: ...
    def branchmap(self) -> dict[bytes, list[bytes]]: ...
    def known(self, nodes: Iterable[bytes]) -> list[bool]: ...
    def lookup(self, key: bytes) -> bytes: ...
    def listkeys(self, namespace: bytes) -> dict[bytes, bytes]: ...
    def bookmarks(self) -> dict[bytes, bytes]: ...
    def missing(self, common: Iterable[bytes], heads: Iterable[bytes]) -> list[int]: ...
    def between(self, pairs: Iterable[tuple[bytes, bytes]]) -> list[list[bytes]]: ...
    def branches(self, nodes: Iterable[bytes]) -> list[tuple[bytes, bytes, bytes, bytes]]: ...
    def has_secret(self) -> bool: ...
    def close(self) -> None: ...


def engine_repo(repo: ServedRepo) -> Repository:
    """The engine Repository behind a served one, for what only an existing repository can do
    (send changegroups and stream clones, take pushkey); RepoNotFound for an AbsentRepo."""
    if not isinstance(repo, Repository):
        raise RepoNotFound("(not created yet)")
    return repo


@dataclass(frozen=True)
class RepoSettings:
    """The server's settings for every repository it opens (from the `[hg]` config section), and
    what a repository's own `.hg/hgrc` may change (`hg.repo_hgrc`, `hg.repo_evolution`,
    `hg.repo_hooks`)."""

    publishing: bool = True
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    evolution: tuple[str, ...] = ()
    repo_hgrc: bool = True
    repo_evolution: bool = True
    repo_hooks: bool = False

    @classmethod
    def from_config(cls, config: Config) -> RepoSettings:
        hg = config.hg
        return cls(publishing=hg.publishing, lock_timeout=hg.lock_timeout, evolution=tuple(hg.evolution),
                   repo_hgrc=hg.repo_hgrc, repo_evolution=hg.repo_evolution, repo_hooks=hg.repo_hooks)

    def defaults(self) -> RepoConfig:
        """A repository's settings when its hgrc says nothing (and for one not created yet)."""
        return self.resolve(hgrc.EMPTY)

    def resolve(self, rc: hgrc.Hgrc) -> RepoConfig:
        """What the settings of a repository with hgrc `rc` are (HgrcError for a value hg would
        refuse). Cached on `rc`, which hgrc.load() keeps while the file is unchanged."""
        cached = rc.resolved.get(self)
        if cached is not None:
            return cached
        own = rc if self.repo_hgrc else hgrc.EMPTY
        evo_rc = own if self.repo_evolution else hgrc.EMPTY
        evo = hgrc.evolution_options(evo_rc, self.evolution)
        archive = own.get("web", "allow-archive", own.get("web", "allow_archive"))
        config = RepoConfig(
            publishing=own.getbool("phases", "publish", self.publishing),
            evolution=EvolutionSettings(**evo),
            topics=TopicSettings(
                enabled=hgrc.extension_enabled(own, "topic"),
                publish_bare_branch=own.getbool("experimental", "topic.publish-bare-branch", False),
                server_mode=(own.get("experimental", "topic-mode.server") or "ignore").strip(),
                gate_topic_changesets=own.getbool("experimental", "topic.server-gate-topic-changesets", False),
                reject_tns_push=own.getbool("experimental", "tns-reject-push", False),
                allow_publish=own.getbool("experimental", "topic.allow-publish", True)),
            web=WebSettings(name=own.get("web", "name"), description=own.get("web", "description"),
                            contact=own.get("web", "contact"),
                            allow_archive=tuple(hgrc.parse_list(archive)),
                            hidden=own.getbool("web", "hidden", False)),
            hooks=tuple(own.items("hooks")),
            hooks_allowed=self.repo_hooks,
            hgrc=own,
        )
        rc.resolved[self] = config
        return config

    def apply(self, repo: Repository) -> Repository:
        """The one place a served repository gets its settings: the server's, then its own
        `.hg/hgrc` (read once per version of the file)."""
        config = self.resolve(hgrc.load(repo.root) if self.repo_hgrc else hgrc.EMPTY)
        repo.config = config
        repo.publishing = config.publishing
        repo.lock_timeout = self.lock_timeout
        return repo


def how_to_create(create_on_push: bool, name: str) -> str:
    """What a user who found no repository can do about it (404s, the empty index)."""
    if create_on_push:
        return "push to a new repository's URL to create it (hg.create_on_push is on)"
    return (f"create it on the server with `lfsserve init {name or 'NAME'}`, or set "
            "hg.create_on_push = true to create repositories by pushing")


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
    def __init__(self, repos_dir: Path, settings: RepoSettings | None = None):
        self.base = Path(repos_dir).resolve()
        self.settings = settings or RepoSettings()
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
            import asyncio  # lazily: hg over SSH (one session per process) never takes this lock

            lock = asyncio.Lock()
            self._locks[name] = lock
        return lock

    # -- opening: the one way in

    @contextlib.contextmanager
    def open(self, name: str, *, may_create: bool = False) -> Iterator[ServedRepo]:
        """Repository `name`, with this server's settings applied, closed on exit (blocking: run
        in the executor). Raises RepoNotFound when there is none; with `may_create` (a writer
        pushing where hg.create_on_push allows it), yields an AbsentRepo instead."""
        try:
            path = self.path_of(name)
        except RepoPathError as exc:
            raise RepoNotFound(f"{name} ({exc})") from None
        if not (path / ".hg").is_dir():
            if not may_create:
                raise RepoNotFound(name)
            # raises CannotCreate where a repository must not appear (around other repositories)
            yield AbsentRepo(self.check_creatable(name), self.settings)
            return
        repo = self.settings.apply(Repository.open(path))
        try:
            yield repo
        finally:
            repo.close()


# What `hg init` 7.2.4 creates: the answer for a repository that does not exist yet.
DEFAULT_REQUIREMENTS = frozenset({"dotencode", "fncache", "generaldelta", "revlog-compression-zstd",
                                  "revlogv1", "share-safe", "sparserevlog", "store"})


class AbsentRepo:
    """Stands in for a repository that a push may create (hg.create_on_push and a writer asking):
    it answers discovery as an empty repository would, so that `hg push` reaches unbundle."""

    has_lfs = False
    requirements = DEFAULT_REQUIREMENTS

    def __init__(self, root: Path, settings: RepoSettings = RepoSettings()):
        self.root = Path(root)
        self.settings = settings
        self.config = settings.defaults()
        self.publishing = settings.publishing
        self.lock_timeout = settings.lock_timeout
        self._made: list[Path] = []

    def create(self) -> Repository:
        """Create the repository this stands for (a push to a new path, checked creatable by the
        opener), configured as the opener configures every repository. The caller closes it, and
        calls `undo_create` if the push fails."""
        self._made = make_dirs(self.root)
        try:
            repo = Repository.init(self.root)
        except BaseException:
            self.undo_create()
            raise
        return self.settings.apply(repo)

    def undo_create(self) -> None:
        """Remove what create() wrote: its `.hg` and the directories it made (nothing else)."""
        remove_created(self.root, self._made)

    def heads(self) -> list[bytes]:
        return []

    def branchmap(self) -> dict[bytes, list[bytes]]:
        return {}

    def known(self, nodes: Iterable[bytes]) -> list[bool]:
        return [False for _ in nodes]

    def lookup(self, key: bytes) -> bytes:
        if key in (b"tip", b"null", b".", b"0" * 40, b"-1"):
            return NULLID
        raise UnknownRevision(key)

    def listkeys(self, namespace: bytes) -> dict[bytes, bytes]:
        if namespace == b"namespaces":
            return {b"bookmarks": b"", b"namespaces": b"", b"phases": b""}
        if namespace == b"phases":
            return {b"publishing": b"True"} if self.publishing else {}
        return {}

    def bookmarks(self) -> dict[bytes, bytes]:
        return {}

    def missing(self, common: Iterable[bytes], heads: Iterable[bytes]) -> list[int]:
        for h in heads:
            if h != NULLID:
                raise UnknownRevision(h.hex())
        return []

    def between(self, pairs: Iterable[tuple[bytes, bytes]]) -> list[list[bytes]]:
        return [[] for _ in pairs]

    def branches(self, nodes: Iterable[bytes]) -> list[tuple[bytes, bytes, bytes, bytes]]:
        return [(n, NULLID, NULLID, NULLID) for n in nodes]

    def has_secret(self) -> bool:
        return False

    def close(self) -> None:
        pass
