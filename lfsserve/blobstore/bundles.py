"""Storage of generated clone bundles: named, immutable files plus one small index per repository.

Unlike LFS objects these are not addressed by a client-supplied oid: the server names them
(`<repo>/.clonebundles/<name>`; a repository path segment never starts with a dot, so these keys
cannot collide with a repository's). A bundle is installed whole, atomically, before any index
names it, so a crash mid-build leaves at most an unreferenced temporary file.

Every method blocks (file or network I/O): call them from worker threads. A backend that can let
clients fetch a file directly (S3: a presigned URL) overrides `presigned_url`; the local store
cannot, and the server serves its files itself (sendfile, Range).
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["BundleStore", "BundleStoreBusy", "LocalBundleStore", "bundle_key"]

_DIR = ".clonebundles"


def bundle_key(repo: str, name: str) -> str:
    """The store key of bundle file (or index) `name` of repository `repo`."""
    if "/" in name or name.startswith(".") or not name:
        raise ValueError(f"bad bundle name {name!r}")
    return f"{repo}/{_DIR}/{name}"


class BundleStoreBusy(Exception):
    """Another process or thread is building this repository's bundles right now."""


class BundleStore(abc.ABC):
    """Named immutable files for clone bundles. Methods block; safe to call from several threads."""

    @abc.abstractmethod
    def temp_dir(self, repo: str) -> Path:
        """A local directory to build `repo`'s bundle files in before `install` (only its build,
        under `exclusive(repo)`, writes there)."""

    @abc.abstractmethod
    def install(self, key: str, src: Path) -> None:
        """Make the finished local file `src` the content of `key`, atomically and durably; `src`
        is consumed (moved or deleted)."""

    @abc.abstractmethod
    def local_path(self, key: str) -> Path | None:
        """A local file with the content of `key` the server may send itself; None when absent
        or when the backend is remote."""

    def exists(self, key: str) -> bool:
        """Whether `key` is stored."""
        return self.local_path(key) is not None

    def open_read(self, key: str) -> tuple[BinaryIO, int] | None:
        """(a readable file object, its size) for `key`, or None when absent. The caller closes it."""
        path = self.local_path(key)
        if path is None:
            return None
        try:
            fh = open(path, "rb")  # noqa: SIM115 (the caller closes it)
        except FileNotFoundError:
            return None
        return fh, os.fstat(fh.fileno()).st_size

    def presigned_url(self, key: str, expires_in: int) -> str | None:
        """A URL a client may GET `key` from without passing through lfsserve, valid for
        `expires_in` seconds; None when the backend cannot offer one (then lfsserve serves it)."""
        return None

    @abc.abstractmethod
    def read_small(self, key: str) -> bytes | None:
        """The content of a small file (an index), or None when absent."""

    @abc.abstractmethod
    def write_small(self, key: str, data: bytes) -> None:
        """Replace a small file atomically and durably."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; absent is fine."""

    @abc.abstractmethod
    def names(self, repo: str) -> list[tuple[str, float]]:
        """(name, modification time) of every file stored for `repo`."""

    @abc.abstractmethod
    def exclusive(self, repo: str) -> contextlib.AbstractContextManager[None]:
        """Hold the build lock of `repo` (across processes where the backend can); raise
        BundleStoreBusy at once when someone else holds it."""


class LocalBundleStore(BundleStore):
    """Bundles as files under `root` (`<server root>/clonebundles`)."""

    def __init__(self, root: Path | str, *, durable: bool = True):
        self.root = Path(root)
        self.durable = durable

    def _path(self, key: str) -> Path:
        path = self.root / key
        # keys come from validated repository paths and server-made names; refuse anything else
        if ".." in Path(key).parts or Path(key).is_absolute():
            raise ValueError(f"bad bundle key {key!r}")
        return path

    def temp_dir(self, repo: str) -> Path:
        tmp = self._path(f"{repo}/{_DIR}")
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp

    def _sync_dir(self, path: Path) -> None:
        if not self.durable:
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def install(self, key: str, src: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.durable:
            with open(src, "rb") as fh:
                os.fsync(fh.fileno())
        try:
            os.replace(src, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # the temporary directory is on another file system: copy beside, then rename
            tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
            with open(src, "rb") as inp, open(tmp, "wb") as out:
                while chunk := inp.read(1 << 20):
                    out.write(chunk)
                out.flush()
                if self.durable:
                    os.fsync(out.fileno())
            os.replace(tmp, dest)
            os.unlink(src)
        self._sync_dir(dest.parent)

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def read_small(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write_small(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if self.durable:
                os.fsync(fh.fileno())
        os.replace(tmp, dest)
        self._sync_dir(dest.parent)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def names(self, repo: str) -> list[tuple[str, float]]:
        out = []
        try:
            with os.scandir(self._path(f"{repo}/{_DIR}")) as it:
                for entry in it:
                    if not entry.name.startswith(".") and entry.is_file():
                        with contextlib.suppress(FileNotFoundError):
                            out.append((entry.name, entry.stat().st_mtime))
        except (FileNotFoundError, NotADirectoryError):
            pass
        return out

    @contextlib.contextmanager
    def exclusive(self, repo: str) -> Iterator[None]:
        path = self._path(f"{repo}/{_DIR}/lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                # flock: released by the kernel if the process dies mid-build, so a crash never
                # leaves the repository locked
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BundleStoreBusy(f"{repo}: clone bundles are being built by another process") from None
            yield
        finally:
            os.close(fd)
