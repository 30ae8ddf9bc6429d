"""Transactions with Mercurial's journal format, so `hg recover` and lfsserve can each undo the other's.

`.hg/store/journal` lists `<store file>\\0<size before>` for every file appended to (size 0: the
file is new and is deleted on rollback). `.hg/store/journal.backupfiles` starts with the format
version `2`, then `<location>\\0<file>\\0<backup>\\0<cache flag>` lines: a copy of a file replaced
during the transaction (location `` = the store, `plain` = `.hg`), or, with an empty file name, a
temporary file to delete. Rolling back restores backups, truncates appended files, deletes new and
temporary files, then removes the journal; committing removes the journal (the commit point).

Everything the journal names is an unencoded store name (`data/a.txt.i`), encoded on use.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import threading
from collections.abc import Callable

from .error import Abort
from .store import Store

__all__ = ["Transaction", "has_journal", "rollback_journal"]

JOURNAL_VERSION = b"2"
_STORE_LOCATIONS = (b"", b"store")


def _split(name: bytes) -> tuple[bytes, bytes]:
    d, _, f = name.rpartition(b"/")
    return d, f


class _Places:
    """Maps (location, name) to a file system path."""

    def __init__(self, store: Store):
        self.store = store
        self.hg = store.root / ".hg"

    def lookup(self, location: bytes, name: bytes) -> str | None:
        """The path, or None for a location we do not know (a journal written by another hg)."""
        if location in _STORE_LOCATIONS:
            return self.store.join(name)
        if location == b"plain":
            return os.path.join(self.hg, os.fsdecode(name))
        return None

    def path(self, location: bytes, name: bytes) -> str:
        """The path of a file in a known location (checked with lookup() where it may not be)."""
        path = self.lookup(location, name)
        if path is None:
            raise ValueError(f"unknown journal location {location!r}")
        return path


def has_journal(store: Store) -> bool:
    return (store.path / "journal").exists()


def _copy_atomic(src: str, dst: str) -> None:
    tmp = dst + ".lfsserve-restore"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def rollback_journal(store: Store, report: Callable[[str], None] | None = None) -> bool:
    """Undo the transaction described by `.hg/store/journal` (ours or hg's); False if there is none.

    The caller must hold the store lock. Idempotent: an interrupted rollback can simply run again.
    """
    report = report or (lambda msg: None)
    places = _Places(store)
    journal = store.path / "journal"
    backups_file = store.path / "journal.backupfiles"
    try:
        lines = journal.read_bytes().splitlines()
    except FileNotFoundError:
        return False
    entries: dict[bytes, int] = {}
    for line in lines:
        name, sep, off = line.partition(b"\0")
        if not sep:
            report(f"ignoring unreadable journal entry {line[:80]!r}")
            continue
        try:
            entries.setdefault(name, int(off))
        except ValueError:
            report(f"ignoring unreadable journal entry {line[:80]!r}")
    backups: list[tuple[bytes, bytes, bytes, bool]] = []
    try:
        blines = backups_file.read_bytes().split(b"\n")
    except FileNotFoundError:
        blines = []
    if blines and blines[0]:
        if blines[0] != JOURNAL_VERSION:
            raise Abort(f"journal backup list has unknown version {blines[0][:10]!r}",
                        hint="run 'hg recover' with the Mercurial that wrote it")
        for line in blines[1:]:
            if not line:
                continue
            parts = line.split(b"\0")
            if len(parts) != 4:
                report(f"ignoring unreadable backup entry {line[:80]!r}")
                continue
            backups.append((parts[0], parts[1], parts[2], bool(parts[3]) and parts[3] != b"0"))

    store_backup = {f: (loc, f, b, c) for loc, f, b, c in backups if loc in _STORE_LOCATIONS and f and b}
    done = set()
    for name in sorted(entries):
        offset = entries[name]
        path = places.store.join(name)
        if name in store_backup:
            loc, f, b, c = store_backup[name]
            bpath = places.path(loc, b)
            if os.path.exists(bpath):
                _copy_atomic(bpath, path)
            done.add((loc, f, b, c))
        if offset:
            try:
                size = os.path.getsize(path)
            except FileNotFoundError:
                raise Abort(f"cannot roll back {name.decode(errors='replace')}: the file is missing") from None
            if size < offset:
                raise Abort(f"cannot roll back {name.decode(errors='replace')}: it has {size} bytes, "
                            f"fewer than the {offset} it had before the transaction")
            if size > offset:
                with open(path, "r+b") as fh:
                    fh.truncate(offset)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    for entry in backups:
        if entry in done:
            continue
        loc, f, b, cache = entry
        if places.lookup(loc, b or f) is None:
            report(f"ignoring backup entry with unknown location {loc!r}")
            continue
        try:
            if f and b:
                bpath = places.path(loc, b)
                if os.path.exists(bpath):
                    _copy_atomic(bpath, places.path(loc, f))
                elif not cache:
                    raise Abort(f"cannot roll back {f.decode(errors='replace')}: its backup is missing")
            else:
                try:
                    os.unlink(places.path(loc, f or b))
                except FileNotFoundError:
                    pass
        except OSError:
            if not cache:
                raise
    # the journal goes last: until then, running this again finishes the job
    for loc, f, b, _ in backups:
        kept = places.lookup(loc, b) if f and b else None
        if kept is not None:
            try:
                os.unlink(kept)
            except FileNotFoundError:
                pass
    try:
        os.unlink(backups_file)
    except FileNotFoundError:
        pass
    os.unlink(journal)
    return True


def _fsync_path(path: str, directory: bool = False) -> bool:
    """fsync a directory, or fdatasync a file, if it exists; False when it does not."""
    try:
        fd = os.open(path, (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if directory else os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        if directory or not hasattr(os, "fdatasync"):
            os.fsync(fd)
        else:
            os.fdatasync(fd)  # sizes are flushed too; mtimes do not matter
    finally:
        os.close(fd)
    return True


_sync_pool = None
_sync_pool_lock = threading.Lock()


def _sync_all(paths: list[str], directory: bool = False) -> list[bool]:
    """Sync many files at once: concurrent syncs share the file system's journal commits, so
    forty files cost about what one does."""
    global _sync_pool
    if len(paths) <= 1:
        return [_fsync_path(p, directory) for p in paths]
    with _sync_pool_lock:
        if _sync_pool is None:
            _sync_pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="lfsserve-fsync")
    return list(_sync_pool.map(lambda p: _fsync_path(p, directory), paths))


class Transaction:
    """An open transaction on a store (the caller holds the lock). Use through Repository.transaction()."""

    def __init__(self, store: Store, desc: bytes = b"", *, durable: bool = True):
        self.store = store
        self.desc = desc
        # fsync what the transaction wrote before its commit point, and the commit itself, so
        # an acknowledged push survives a power failure (hg itself does not fsync)
        self.durable = durable
        self._touched: set[str] = set()
        self._places = _Places(store)
        self._journal_path = store.path / "journal"
        self._backups_path = store.path / "journal.backupfiles"
        if self._journal_path.exists():
            raise Abort("abandoned transaction found", hint="run 'hg recover' or reopen the repository for writing")
        # both stay open for the transaction's life; close() and abort() close them
        self._journal = open(self._journal_path, "xb")  # noqa: SIM115
        self._backups_fh = open(self._backups_path, "wb")  # noqa: SIM115
        self._backups_fh.write(JOURNAL_VERSION + b"\n")
        self._backups_fh.flush()
        self.offsets: dict[bytes, int] = {}
        self._backed_up: set[tuple[bytes, bytes]] = set()
        self._tmp: list[tuple[bytes, bytes]] = []
        self._after_close: list[Callable[[], None]] = []
        self._on_abort: list[Callable[[], None]] = []
        self.active = True

    # -- journaling
    def add(self, name: bytes, offset: int) -> None:
        """Record the size of a store file before we append to it (0: we create it)."""
        self._check_active()
        if name in self.offsets:
            return
        self.offsets[name] = offset
        self._journal.write(b"%s\0%d\n" % (name, offset))
        self._journal.flush()
        self._touched.add(self._places.path(b"", name))


    def addbackup(self, name: bytes, location: bytes = b"", for_offset: bool = False) -> None:
        """Copy a file aside so a rollback restores it (an absent file is deleted on rollback)."""
        self._check_active()
        key = (location, name)
        if key in self._backed_up:
            return
        if location in _STORE_LOCATIONS and name in self.offsets and not for_offset:
            return  # appended to already: truncation restores it
        self._backed_up.add(key)
        src = self._places.path(location, name)
        d, f = _split(name)
        backup = (d + b"/" if d else b"") + b"journal.backup." + f + b".bck"
        if os.path.exists(src):
            dst = self._places.path(location, backup)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)
        else:
            backup = b""
        self._write_backup_entry(location, name, backup)

    def registertmp(self, name: bytes, location: bytes = b"") -> None:
        """A temporary file, deleted when the transaction ends either way."""
        self._check_active()
        self._tmp.append((location, name))
        self._write_backup_entry(location, b"", name)

    def _write_backup_entry(self, location: bytes, name: bytes, backup: bytes) -> None:
        self._backups_fh.write(b"%s\0%s\0%s\0%d\n" % (location, name, backup, 0))
        self._backups_fh.flush()

    # -- helpers for small files
    def path(self, name: bytes, location: bytes = b"") -> str:
        return self._places.path(location, name)

    def replace_file(self, name: bytes, data: bytes, location: bytes = b"") -> None:
        """Atomically replace a small file (phaseroots, bookmarks), backed up first."""
        self.addbackup(name, location)
        path = self._places.path(location, name)
        tmp = path + ".lfsserve-tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        self._touched.add(path)

    def append_file(self, name: bytes, data: bytes) -> None:
        """Append to a store file (fncache), journaled by its size."""
        path = self._places.path(b"", name)
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            size = 0
        self.add(name, size)
        with open(path, "ab") as fh:
            fh.write(data)

    # -- life cycle

    def add_after_close(self, callback: Callable[[], None]) -> None:
        self._after_close.append(callback)

    def add_on_abort(self, callback: Callable[[], None]) -> None:
        self._on_abort.append(callback)

    def _check_active(self) -> None:
        if not self.active:
            raise Abort("transaction is closed")

    def sync(self, skip: tuple[str, ...] = ()) -> None:
        """fsync the journal and every file written so far (and their directories), except `skip`."""
        if not self.durable:
            return
        paths = [p for p in sorted(self._touched) if p not in skip]
        self._touched.difference_update(paths)
        done = _sync_all([str(self._journal_path), str(self._backups_path), *paths])
        dirs = {str(self.store.path)} | {os.path.dirname(p) for p, ok in zip(paths, done[2:], strict=True) if ok}
        _sync_all(sorted(dirs), directory=True)

    def close(self) -> None:
        self._check_active()
        self.sync()
        # commit point: without a journal, nothing is rolled back any more
        self._journal.close()
        self._backups_fh.close()
        self.active = False
        for location, name in self._tmp:
            try:
                os.unlink(self._places.path(location, name))
            except FileNotFoundError:
                pass
        backups = [(loc, name) for loc, name in self._backed_up]
        os.unlink(self._journal_path)
        if self.durable:
            _fsync_path(str(self.store.path), directory=True)  # the commit itself
        for loc, name in backups:
            d, f = _split(name)
            bname = (d + b"/" if d else b"") + b"journal.backup." + f + b".bck"
            try:
                os.unlink(self._places.path(loc, bname))
            except FileNotFoundError:
                pass
        try:
            os.unlink(self._backups_path)
        except FileNotFoundError:
            pass
        for cb in self._after_close:
            cb()

    def abort(self) -> None:
        if not self.active:
            return
        self.active = False
        for cb in self._on_abort:
            try:
                cb()
            except Exception:
                pass
        self._journal.close()
        self._backups_fh.close()
        rollback_journal(self.store)
