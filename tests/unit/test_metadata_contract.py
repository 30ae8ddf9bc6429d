"""One contract for LFS metadata (namespace index, file locks), held against SQLite and PostgreSQL.

Every test runs on both backends through the `meta` fixture; the PostgreSQL runs use a real server
(tests/pgserver.py) and so carry the interop marker. Racing instances are modelled as two handles
on one database (two SqliteDb on one file, two pools on one PostgreSQL database).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lfsserve.lfs import locks as locks_mod
from lfsserve.lfs import namespaces as ns_mod
from lfsserve.lfs.locks import LockExists, LockStore, PgLockStore, SqliteLockStore
from lfsserve.lfs.namespaces import NamespaceIndex, PgNamespaceIndex, SqliteNamespaceIndex
from lfsserve.lfs.service import PG_MIGRATIONS
from lfsserve.pgdb import DatabaseUnavailable, PgDb, SchemaTooNew
from lfsserve.sqlitedb import SqliteDb

from ..support import free_port

OID = [f"{i:064x}" for i in range(2000)]


@dataclass
class Meta:
    namespaces: NamespaceIndex
    locks: LockStore


class Backend:
    """Opens handles (instances) on one database of a backend."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest):
        self.kind = kind
        self._dbs: list[SqliteDb | PgDb] = []
        if kind == "postgresql":
            self.pg = request.getfixturevalue("pg_server")
            self.url = self.pg.create_database()
        else:
            self.path = tmp_path / "meta.sqlite3"

    async def open(self) -> Meta:
        if self.kind == "postgresql":
            pg = PgDb(self.url, PG_MIGRATIONS, max_size=4)
            await pg.astart()
            self._dbs.append(pg)
            return Meta(PgNamespaceIndex(pg), PgLockStore(pg))
        db = SqliteDb(self.path, ns_mod.SCHEMA + locks_mod.SCHEMA)
        await db.astart()
        self._dbs.append(db)
        return Meta(SqliteNamespaceIndex(db), SqliteLockStore(db))

    async def close(self) -> None:
        for db in self._dbs:
            await db.astop()


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.interop)]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    b = Backend(request.param, tmp_path, request)
    yield b
    await b.close()


@pytest.fixture
async def meta(backend: Backend) -> Meta:
    return await backend.open()


# -- namespace index ---------------------------------------------------------------------------

async def test_grant_and_visible(meta: Meta):
    ns = meta.namespaces
    assert await ns.visible("team/app", OID[:3]) == set()
    await ns.grant("team/app", OID[:2])
    await ns.grant("team/app", OID[:2])  # idempotent
    await ns.grant("team/lib", OID[1:3])
    assert await ns.visible("team/app", OID[:3]) == set(OID[:2])
    assert await ns.visible("team/lib", OID[:3]) == set(OID[1:3])
    assert await ns.visible("other", OID[:3]) == set()
    assert await ns.visible("team/app", []) == set()
    await ns.grant("team/app", [])
    where = await ns.namespaces_of(OID[:4])
    assert {k: sorted(v) for k, v in where.items()} == {
        OID[0]: ["team/app"], OID[1]: ["team/app", "team/lib"], OID[2]: ["team/lib"]}
    assert await ns.namespaces_of([]) == {}
    assert sorted(await ns.oids("team/app")) == OID[:2]
    assert await ns.oids("nothing") == []


async def test_grant_from_another_thread(meta: Meta):
    # what a small upload does: the store's thread starts the grant once the content is checked,
    # and the request waits for the commit
    ns = meta.namespaces
    future = await asyncio.to_thread(ns.grant_nowait, "team/app", OID[3:5])
    await asyncio.wrap_future(future)
    assert await ns.visible("team/app", OID[:6]) == set(OID[3:5])


async def test_many_oids_at_once(meta: Meta):
    """More keys than one SQLite statement binds: every backend splits or arrays them."""
    ns = meta.namespaces
    await ns.grant("big", OID[:1500])
    assert await ns.visible("big", OID) == set(OID[:1500])
    assert len(await ns.namespaces_of(OID)) == 1500


async def test_names_sorted_by_code_point_and_forget(meta: Meta):
    ns = meta.namespaces
    for name in ("b/repo", "a/repo", "B/repo", "ä/repo"):
        await ns.grant(name, OID[:2])
    assert await ns.names() == ["B/repo", "a/repo", "b/repo", "ä/repo"]
    assert await ns.forget_namespace("a/repo") == 2
    assert await ns.forget_namespace("a/repo") == 0
    assert await ns.names() == ["B/repo", "b/repo", "ä/repo"]
    assert await ns.visible("a/repo", OID[:2]) == set()


async def test_grants_are_seen_by_another_instance(backend: Backend):
    one, two = await backend.open(), await backend.open()
    await asyncio.gather(*(one.namespaces.grant("team/app", [oid]) for oid in OID[:20]),
                         *(two.namespaces.grant("team/app", [oid]) for oid in OID[10:30]))
    assert await two.namespaces.visible("team/app", OID[:40]) == set(OID[:30])
    assert await one.namespaces.visible("team/app", OID[:40]) == set(OID[:30])


# -- locks -------------------------------------------------------------------------------------

async def test_lock_lifecycle(meta: Meta):
    lk = meta.locks
    a = await lk.create("team/app", "art/hero.psd", "alice")
    assert len(a.id) == 32 and a.locked_at.endswith("Z") and a.owner == "alice"
    with pytest.raises(LockExists) as exc:
        await lk.create("team/app", "art/hero.psd", "carol")
    assert exc.value.lock == a
    other_repo = await lk.create("team/lib", "art/hero.psd", "carol")  # locks are per namespace
    b = await lk.create("team/app", "art/ünïcode ✓.psd", "carol")
    assert b.seq > a.seq

    assert await lk.list("team/app") == ([a, b], None)
    assert await lk.list("team/app", path="art/ünïcode ✓.psd") == ([b], None)
    assert await lk.list("team/app", lock_id=a.id) == ([a], None)
    assert await lk.list("team/app", owner="carol") == ([b], None)
    assert await lk.list("team/app", lock_id=other_repo.id) == ([], None)
    assert await lk.list("nothing") == ([], None)

    with pytest.raises(PermissionError) as perm:
        await lk.delete("team/app", a.id, owner="carol")
    assert perm.value.args[0] == a
    assert await lk.delete("team/app", a.id, owner="alice") == a
    assert await lk.delete("team/app", a.id, owner="alice") is None
    assert await lk.delete("team/lib", b.id, owner=None) is None  # another namespace's id
    assert await lk.delete("team/app", b.id, owner=None) == b  # forced
    assert await lk.list("team/app") == ([], None)
    # released: the path can be locked again
    again = await lk.create("team/app", "art/hero.psd", "carol")
    assert again.id != a.id and again.seq > b.seq


async def test_lock_pages(meta: Meta):
    lk = meta.locks
    made = [await lk.create("ns", f"f{i:02}", "alice") for i in range(7)]
    page, nxt = await lk.list("ns", limit=3)
    assert page == made[:3] and nxt == made[3].seq
    page, nxt = await lk.list("ns", cursor=nxt, limit=3)
    assert page == made[3:6] and nxt == made[6].seq
    page, nxt = await lk.list("ns", cursor=nxt, limit=3)
    assert page == made[6:] and nxt is None
    assert await lk.list("ns", cursor=10**18 - 1) == ([], None)


async def test_forget_namespace_drops_its_locks(meta: Meta):
    await meta.locks.create("gone", "a", "alice")
    await meta.locks.create("gone", "b", "alice")
    kept = await meta.locks.create("kept", "a", "alice")
    assert await meta.locks.forget_namespace("gone") == 2
    assert await meta.locks.list("gone") == ([], None)
    assert await meta.locks.list("kept") == ([kept], None)


async def test_racing_instances_create_one_lock(backend: Backend):
    """Two instances, many clients locking one path at once: exactly one lock, the others see it."""
    one, two = await backend.open(), await backend.open()
    tries = [(one if i % 2 else two).locks.create("team/app", "shared.psd", f"user{i}") for i in range(16)]
    results = await asyncio.gather(*tries, return_exceptions=True)
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, LockExists)]
    assert len(won) == 1 and len(lost) == 15, results
    assert all(exc.lock == won[0] for exc in lost)
    assert await one.locks.list("team/app") == await two.locks.list("team/app") == (won, None)

    releases = [(one if i % 2 else two).locks.delete("team/app", won[0].id, owner=None) for i in range(8)]
    released = await asyncio.gather(*releases)
    assert [r for r in released if r is not None] == won  # released exactly once


# -- PostgreSQL only: schema migration and outages ------------------------------------------------

pg_only = pytest.mark.interop


@pg_only
async def test_instances_starting_at_once_migrate_once(pg_server):
    url = pg_server.create_database()
    dbs = [PgDb(url, PG_MIGRATIONS, max_size=2) for _ in range(4)]
    await asyncio.gather(*(db.astart() for db in dbs))
    try:
        async def versions(conn) -> list[int]:
            return [r[0] for r in await conn.fetch("SELECT version FROM lfsserve_schema ORDER BY version")]
        assert await dbs[0].read(versions) == list(range(1, len(PG_MIGRATIONS) + 1))
        # a later migration is applied by the next start, once
        newer = PgDb(url, [*PG_MIGRATIONS, "CREATE TABLE later (x int)"], max_size=1)
        await newer.astart()
        assert await newer.read(versions) == list(range(1, len(PG_MIGRATIONS) + 2))
        await newer.astop()
        # and an lfsserve that knows fewer migrations than the database refuses to start
        older = PgDb(url, PG_MIGRATIONS, max_size=1)
        with pytest.raises(SchemaTooNew, match="newer than this lfsserve knows"):
            await older.astart()
    finally:
        for db in dbs:
            await db.astop()


@pg_only
async def test_unreachable_database_fails_cleanly_then_recovers(pg_server):
    url = pg_server.create_database()
    db = PgDb(url, PG_MIGRATIONS, max_size=3)
    await db.astart()
    meta = Meta(PgNamespaceIndex(db), PgLockStore(db))
    try:
        await meta.namespaces.grant("ns", OID[:1])
        # every pooled connection in use once, so that all of them die with the server
        await asyncio.gather(*(meta.namespaces.visible("ns", OID[:1]) for _ in range(3)))
        pg_server.stop()
        with pytest.raises(DatabaseUnavailable):
            await meta.namespaces.visible("ns", OID[:1])
        with pytest.raises(DatabaseUnavailable):
            await meta.locks.create("ns", "f", "alice")
        pg_server.start()
        # back without reopening anything: the pool reconnects by itself
        assert await meta.namespaces.visible("ns", OID[:1]) == {OID[0]}
        lock = await meta.locks.create("ns", "f", "alice")
        assert await meta.locks.list("ns") == ([lock], None)
        # a server restart between two calls is not even noticed, by a read or by a write
        await asyncio.gather(*(meta.namespaces.visible("ns", OID[:1]) for _ in range(3)))
        pg_server.restart()
        assert await meta.namespaces.visible("ns", OID[:1]) == {OID[0]}
        await asyncio.gather(*(meta.namespaces.visible("ns", OID[:1]) for _ in range(3)))
        pg_server.restart()
        assert await meta.locks.delete("ns", lock.id, owner="alice") == lock
        await meta.namespaces.grant("ns", OID[1:2])
    finally:
        if pg_server.pid is None:
            pg_server.start()
        await db.astop()


async def test_unreachable_at_start():
    db = PgDb(f"postgresql://nobody@127.0.0.1:{free_port()}/none", PG_MIGRATIONS)
    with pytest.raises(DatabaseUnavailable, match="cannot connect"):
        await db.astart()


def test_admin_command_says_database_is_unreachable(tmp_path: Path, monkeypatch, capsys):
    from lfsserve.cli import main

    (tmp_path / "lfs").mkdir()
    monkeypatch.setenv("LFSSERVE_DATABASE_URL", f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    assert main(["gc", "--root", str(tmp_path)]) == 1
    assert "lfs-meta: cannot connect" in capsys.readouterr().err
