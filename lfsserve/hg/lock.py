"""Mercurial-compatible lock files (`.hg/wlock`, `.hg/store/lock`).

A lock is a symlink whose target is `<host>[/<pid namespace>]:<pid>` (a regular file with that
content where symlinks are unavailable), created atomically. A lock whose owner is a dead
process of this host and pid namespace is stale and may be broken, under a `<lock>.break` lock
so two breakers cannot race. This is the format hg itself uses, so an `hg` process and lfsserve
never write the same repository at once.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from pathlib import Path

from .error import LockTimeout

__all__ = ["Lock", "lock_is_stale", "lock_prefix", "read_lock"]

_prefix: str | None = None


def lock_prefix() -> str:
    """Host name, plus the pid namespace on Linux (as hg writes it)."""
    global _prefix
    if _prefix is None:
        prefix = socket.gethostname()
        try:
            prefix += "/%x" % os.stat("/proc/self/ns/pid").st_ino
        except OSError:
            pass
        _prefix = prefix
    return _prefix


def read_lock(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_is_stale(holder: str | None) -> bool:
    if not holder:
        return False
    host, sep, pid = holder.rpartition(":")
    if not sep or host != lock_prefix():
        return False
    try:
        return not _pid_alive(int(pid))
    except ValueError:
        return False


def _make(path: Path, info: str) -> bool:
    try:
        os.symlink(info, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(info)
    return True


class Lock:
    """One hg-style lock file. Not reentrant: the Repository counts nested use."""

    def __init__(self, path: Path, desc: str = "repository"):
        self.path = Path(path)
        self.desc = desc
        self.held = False
        self._info: str | None = None

    def _try_once(self) -> str | None:
        """Take the lock; None on success, else the current holder."""
        info = f"{lock_prefix()}:{os.getpid()}"
        for _ in range(5):
            if _make(self.path, info):
                self.held = True
                self._info = info
                return None
            holder = read_lock(self.path)
            if holder is None:
                continue  # released between our attempt and the read: try again
            if lock_is_stale(holder):
                self._break(holder)
                continue
            return holder
        return read_lock(self.path) or "(unknown)"

    def _break(self, holder: str) -> None:
        breaker = Lock(self.path.with_name(self.path.name + ".break"))
        if breaker._try_once() is not None:
            return
        try:
            if read_lock(self.path) == holder:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
        finally:
            breaker.release()

    def acquire(self, timeout: float = 0.0) -> None:
        """Take the lock, waiting up to `timeout` seconds; LockTimeout otherwise."""
        start = time.monotonic()
        delay = 0.02
        while True:
            holder = self._try_once()
            if holder is None:
                return
            waited = time.monotonic() - start
            if waited >= timeout:
                raise LockTimeout(self.path, holder, round(waited, 1))
            time.sleep(min(delay, max(0.0, timeout - waited)))
            delay = min(delay * 2, 0.5)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if read_lock(self.path) == self._info:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


# Threads of this process that want the same lock wait on the file like any other process; this
# lock only makes that wait cheaper by queueing them (keyed by lock path).
_local_locks: dict[str, threading.Lock] = {}
_local_guard = threading.Lock()


def local_mutex(path: Path) -> threading.Lock:
    key = os.path.realpath(path)
    with _local_guard:
        m = _local_locks.get(key)
        if m is None:
            m = _local_locks[key] = threading.Lock()
        return m
