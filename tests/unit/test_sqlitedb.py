"""SqliteDb: one thread per database, grouped writes, reads from worker threads."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from lfsserve.sqlitedb import SqliteDb

SCHEMA = "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER NOT NULL);"


@pytest.fixture
async def db(tmp_path):
    d = SqliteDb(tmp_path / "t.sqlite3", SCHEMA)
    await d.astart()
    yield d
    await d.astop()


def insert(k, v):
    return lambda conn: conn.execute("INSERT INTO t VALUES (?, ?)", (k, v)).rowcount


def count(conn):
    return conn.execute("SELECT count(*) FROM t").fetchone()[0]


async def test_a_failing_write_does_not_undo_its_neighbours(db):
    # Submitted together, they are committed in one transaction; the duplicate fails alone.
    results = await asyncio.gather(db.write(insert("a", 1)), db.write(insert("a", 2)), db.write(insert("b", 3)),
                                   return_exceptions=True)
    assert results[0] == 1 and isinstance(results[1], sqlite3.IntegrityError) and results[2] == 1
    assert await db.read(count) == 2
    assert await db.read(lambda c: c.execute("SELECT v FROM t WHERE k = 'a'").fetchone()[0]) == 1


async def test_worker_threads_read_committed_data_directly(db):
    await db.write(insert("x", 7))
    seen = await asyncio.to_thread(db.read_here, lambda c: c.execute("SELECT v FROM t").fetchall())
    assert seen == [(7,)]
    with pytest.raises(sqlite3.OperationalError):  # read-only connection
        await asyncio.to_thread(db.read_here, insert("y", 1))
    # The sync faces work from any thread but the database's own.
    assert await asyncio.to_thread(db.write_sync, insert("z", 1)) == 1
    assert await asyncio.to_thread(db.read_sync, count) == 2


async def test_data_survives_reopen(tmp_path):
    d = SqliteDb(tmp_path / "t.sqlite3", SCHEMA)
    await d.astart()
    await d.write(insert("k", 1))
    await d.astop()
    d = SqliteDb(tmp_path / "t.sqlite3", SCHEMA)
    await d.astart()
    try:
        assert await d.read(count) == 1
    finally:
        await d.astop()
    assert not any(t.name == "lfsserve-sqlite" for t in threading.enumerate())


async def test_worker_threads_write_in_their_own_transactions(db):
    """write_here commits from the calling thread: what it wrote is there for everyone once it
    returns, a failing call keeps none of its writes, and writers in several threads and the
    database's own thread at once all get through (they queue on one lock)."""
    assert await asyncio.to_thread(db.write_here, insert("w", 1)) == 1
    assert await db.read(lambda c: c.execute("SELECT v FROM t WHERE k = 'w'").fetchone()[0]) == 1

    def half_then_fail(conn):
        conn.execute("INSERT INTO t VALUES ('half', 1)")
        conn.execute("INSERT INTO t VALUES ('w', 2)")  # duplicate key

    with pytest.raises(sqlite3.IntegrityError):
        await asyncio.to_thread(db.write_here, half_then_fail)
    assert await db.read(count) == 1  # 'half' rolled back with it
    assert await asyncio.to_thread(db.write_here, insert("after", 1)) == 1  # the connection still works

    keys = [f"k{i}" for i in range(40)]
    await asyncio.gather(*[asyncio.to_thread(db.write_here, insert(k, 1)) for k in keys[:20]],
                         *[db.write(insert(k, 1)) for k in keys[20:]])
    assert await db.read(count) == 42


async def test_write_here_needs_an_open_database(tmp_path):
    d = SqliteDb(tmp_path / "t.sqlite3", SCHEMA)
    with pytest.raises(RuntimeError):
        d.write_here(insert("k", 1))
