"""A SQLite database owned by one dedicated thread, usable from the event loop and from worker threads.

SQLite connections belong to the thread that made them, and SQLite serialises writers anyway, so
each database gets one thread and one connection (WAL mode, so other processes can read while it
writes). Work is a function `fn(conn) -> result` queued to that thread. Writes that arrive while
the thread is busy are committed together in one transaction, each under its own SAVEPOINT so a
failing one does not undo the others: one fsync covers a burst of concurrent uploads.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

__all__ = ["SqliteDb", "select_in"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_STOP = object()
_MAX_GROUP = 256
_IN_PART = 500  # keys bound per statement, well under SQLite's limit on variables


def select_in(conn: sqlite3.Connection, sql: str, keys: list, params: tuple = ()) -> Iterator[tuple]:
    """The rows of `sql` for all `keys`, where `{}` in `sql` stands for the `?` list of an IN
    clause; `params` bind before the keys. Run in parts, so any number of keys works."""
    for i in range(0, len(keys), _IN_PART):
        part = keys[i:i + _IN_PART]
        yield from conn.execute(sql.format(",".join("?" * len(part))), [*params, *part])


class SqliteDb:
    """One SQLite file, one thread. `schema` is run (idempotently) when the database opens."""

    def __init__(self, path: Path, schema: str, *, durable: bool = True, name: str = "sqlite"):
        self.path = Path(path)
        self._schema = schema
        # FULL: a committed write survives power loss (visibility grants, locks). NORMAL: it may be
        # lost, never corrupted (caches that can be rebuilt).
        self._synchronous = "FULL" if durable else "NORMAL"
        self.durable = durable
        self._name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        # Held by whichever connection of this process is writing (the database's thread or a
        # worker's write_here): they queue on it instead of polling SQLite's busy handler, which
        # sleeps a millisecond or more per try. Other processes still meet the busy timeout.
        self._write_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread and open the database; raises what opening raised."""
        if self._thread is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name=f"lfsserve-{self._name}", daemon=True)
        self._thread.start()
        self._ready.result()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        self._local = threading.local()

    async def astart(self) -> None:
        from .aio import run_blocking  # lazily: hg over SSH uses the *_sync calls only

        await run_blocking(self.start)

    async def astop(self) -> None:
        from .aio import run_blocking

        await run_blocking(self.stop)

    # -- calls ---------------------------------------------------------------------------------
    def _submit(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> concurrent.futures.Future:
        if self._thread is None:
            raise RuntimeError(f"{self.path}: database is not open")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((fn, write, fut))
        return fut

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        import asyncio  # lazily: hg over SSH uses the *_sync calls only

        return await asyncio.wrap_future(self._submit(fn, False))

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn in a transaction; returns once it is committed."""
        import asyncio

        return await asyncio.wrap_future(self._submit(fn, True))

    def read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """From a thread other than the event loop's (it blocks until done)."""
        return self._submit(fn, False).result()

    def read_here(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read in the calling (worker) thread on its own read-only connection.

        For executor jobs that combine file I/O with a lookup: no hop to the database thread.
        WAL lets these readers run alongside the writer; each sees the last committed state.
        """
        return fn(self._thread_conn("conn", "PRAGMA query_only = 1"))

    def _thread_conn(self, attr: str, pragma: str) -> sqlite3.Connection:
        """The calling thread's own connection of kind `attr` (made at first use with `pragma`,
        closed with the database)."""
        conn = getattr(self._local, attr, None)
        if conn is None:
            if self._thread is None:
                raise RuntimeError(f"{self.path}: database is not open")
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute(pragma)
            setattr(self._local, attr, conn)
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def write_here(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a write in the calling (worker) thread, in its own transaction, committed on return.

        For a worker job that must record something before it finishes (a small upload's grant
        or verified stamp): no hop to the database thread and back, at the price of a commit of
        its own. Meant for databases whose commits do not fsync (durable=False: WAL commits at
        synchronous=NORMAL only write the log); on a durable one each call would pay an fsync
        that the database thread shares among the writes arriving together.
        """
        conn = self._thread_conn("wconn", f"PRAGMA synchronous = {self._synchronous}")
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                value = fn(conn)
                conn.execute("COMMIT")
            except BaseException:  # fn's error, or the commit's (disk full...): nothing is kept
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return value

    def write_nowait(self, fn: Callable[[sqlite3.Connection], T]) -> concurrent.futures.Future:
        """Queue a write and return at once (for caches); the future says how it went."""
        return self._submit(fn, True)

    def write_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self._submit(fn, True).result()

    # -- the thread ----------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.executescript(self._schema)
        return conn

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                group = [item]
                stop = False
                while len(group) < _MAX_GROUP:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stop = True
                        break
                    group.append(nxt)
                self._run_group(conn, group)
                if stop:
                    return
        finally:
            conn.close()

    def _run_group(self, conn: sqlite3.Connection, group: list) -> None:
        writes = any(write for _, write, _ in group)
        if writes:
            with self._write_lock:
                self._run_group_in(conn, group, writes)
        else:
            self._run_group_in(conn, group, writes)

    def _run_group_in(self, conn: sqlite3.Connection, group: list, writes: bool) -> None:
        results: list[tuple[concurrent.futures.Future, bool, object]] = []
        try:
            if writes:
                conn.execute("BEGIN IMMEDIATE")
            for i, (fn, write, fut) in enumerate(group):
                if not fut.set_running_or_notify_cancel():
                    continue
                if write:
                    conn.execute(f"SAVEPOINT w{i}")
                try:
                    value = fn(conn)
                except Exception as exc:  # this call's failure is its caller's
                    if write:
                        conn.execute(f"ROLLBACK TO w{i}")
                        conn.execute(f"RELEASE w{i}")
                    results.append((fut, False, exc))
                    continue
                if write:
                    conn.execute(f"RELEASE w{i}")
                results.append((fut, True, value))
            if writes:
                conn.execute("COMMIT")
        except Exception as exc:  # BEGIN/COMMIT failed (disk full, I/O error): nothing was written
            log.error("%s: transaction failed: %s", self.path, exc)
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            for _, _, fut in group:
                if not fut.done():
                    if not fut.running():
                        fut.set_running_or_notify_cancel()
                    fut.set_exception(exc)
            return
        for fut, ok, value in results:
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)  # type: ignore[arg-type]
