"""Which LFS namespace (repository path) may see which object.

The blob store is shared and deduplicated; this index keeps knowing an oid from being enough to
read another repository's file. An oid becomes visible in a namespace when content matching it
was uploaded through that namespace (the upload proves possession), or when an hg push to that
repository references it and the pusher could already read it elsewhere (see LfsService).

Two implementations of one contract (NamespaceIndex): SQLite for a single node, PostgreSQL for
several instances sharing the index (tests/unit/test_metadata_contract.py holds both to it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Protocol

from ..pgdb import PgDb, rowcount
from ..sqlitedb import SqliteDb, select_in

if TYPE_CHECKING:
    import asyncpg

__all__ = ["PG_SCHEMA", "SCHEMA", "NamespaceIndex", "PgNamespaceIndex", "SqliteNamespaceIndex"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS visible (
    namespace TEXT NOT NULL,
    oid       TEXT NOT NULL,
    added     REAL NOT NULL,
    PRIMARY KEY (namespace, oid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS visible_by_oid ON visible (oid, namespace);
"""

# Part of the first PostgreSQL migration (see LfsService.create); later changes are new migrations.
PG_SCHEMA = """
CREATE TABLE lfs_visible (
    namespace TEXT NOT NULL,
    oid       TEXT NOT NULL,
    added     DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (namespace, oid)
);
CREATE INDEX lfs_visible_by_oid ON lfs_visible (oid, namespace);
"""


class NamespaceIndex(Protocol):
    """Which namespace sees which oid: what every backend of the index answers alike."""

    async def visible(self, namespace: str, oids: Collection[str]) -> set[str]:
        """The subset of `oids` visible in `namespace`."""
        ...

    async def grant(self, namespace: str, oids: Collection[str]) -> None:
        """Make `oids` visible in `namespace` (idempotent)."""
        ...

    def grant_nowait(self, namespace: str, oids: Collection[str]) -> concurrent.futures.Future:
        """grant() from any thread, without waiting: the future is done once it is committed."""
        ...

    async def namespaces_of(self, oids: Collection[str]) -> dict[str, list[str]]:
        """For each oid visible anywhere, the namespaces that see it."""
        ...

    async def forget_namespace(self, namespace: str) -> int:
        """Drop every grant of a namespace (the repository was deleted); returns how many."""
        ...

    async def names(self) -> list[str]:
        """Every namespace that sees at least one object, sorted (by code point)."""
        ...

    async def oids(self, namespace: str) -> list[str]:
        """Every oid visible in `namespace` (for usage reports)."""
        ...


class SqliteNamespaceIndex:
    def __init__(self, db: SqliteDb):
        self.db = db

    # Query builders: functions of a connection, run on the database thread.
    @staticmethod
    def _visible(namespace: str, oids: list[str]):
        def q(conn: sqlite3.Connection) -> set[str]:
            return {r[0] for r in select_in(conn, "SELECT oid FROM visible WHERE namespace = ? AND oid IN ({})",
                                            oids, (namespace,))}
        return q

    @staticmethod
    def _grant(namespace: str, oids: list[str]):
        def w(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.executemany("INSERT OR IGNORE INTO visible (namespace, oid, added) VALUES (?, ?, ?)",
                             [(namespace, oid, now) for oid in oids])
        return w

    @staticmethod
    def _namespaces_of(oids: list[str]):
        def q(conn: sqlite3.Connection) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for oid, ns in select_in(conn, "SELECT oid, namespace FROM visible WHERE oid IN ({})", oids):
                out.setdefault(oid, []).append(ns)
            return out
        return q

    async def visible(self, namespace: str, oids: Collection[str]) -> set[str]:
        """The subset of `oids` visible in `namespace`."""
        return await self.db.read(self._visible(namespace, list(oids))) if oids else set()


    def visible_here(self, namespace: str, oid: str) -> bool:
        """Whether `oid` is visible in `namespace`, asked from the calling worker thread (never
        the event loop's): a download's lookup joins the job that reads the object (one hop)."""
        def q(conn: sqlite3.Connection) -> bool:
            return conn.execute("SELECT 1 FROM visible WHERE namespace = ? AND oid = ?",
                                (namespace, oid)).fetchone() is not None
        return self.db.read_here(q)

    async def grant(self, namespace: str, oids: Collection[str]) -> None:
        if oids:
            await self.db.write(self._grant(namespace, list(oids)))

    def grant_nowait(self, namespace: str, oids: Collection[str]) -> concurrent.futures.Future:
        """grant() from any thread, without waiting: the future is done once it is committed."""
        return self.db.write_nowait(self._grant(namespace, list(oids)))


    async def namespaces_of(self, oids: Collection[str]) -> dict[str, list[str]]:
        """For each oid visible anywhere, the namespaces that see it."""
        return await self.db.read(self._namespaces_of(list(oids))) if oids else {}

    async def forget_namespace(self, namespace: str) -> int:
        """Drop every grant of a namespace (the repository was deleted); returns how many."""
        def w(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM visible WHERE namespace = ?", (namespace,)).rowcount
        return await self.db.write(w)


    async def names(self) -> list[str]:
        """Every namespace that sees at least one object, sorted."""
        def q(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute("SELECT DISTINCT namespace FROM visible ORDER BY namespace")]
        return await self.db.read(q)

    async def oids(self, namespace: str) -> list[str]:
        """Every oid visible in `namespace` (for usage reports)."""
        def q(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute("SELECT oid FROM visible WHERE namespace = ?", (namespace,))]
        return await self.db.read(q)



class PgNamespaceIndex:
    """The index in PostgreSQL, shared by every instance using the database. Each call is one
    statement, so instances granting the same oid at once simply both succeed."""

    def __init__(self, db: PgDb):
        self.db = db

    async def visible(self, namespace: str, oids: Collection[str]) -> set[str]:
        if not oids:
            return set()

        async def q(conn: asyncpg.Connection) -> set[str]:
            rows = await conn.fetch("SELECT oid FROM lfs_visible WHERE namespace = $1 AND oid = ANY($2::text[])",
                                    namespace, list(oids))
            return {r[0] for r in rows}
        return await self.db.read(q)

    async def grant(self, namespace: str, oids: Collection[str]) -> None:
        if not oids:
            return

        async def w(conn: asyncpg.Connection) -> None:
            await conn.execute("INSERT INTO lfs_visible (namespace, oid, added) "
                               "SELECT $1, o, $3 FROM unnest($2::text[]) AS o ON CONFLICT DO NOTHING",
                               namespace, list(dict.fromkeys(oids)), time.time())
        await self.db.write(w)

    def grant_nowait(self, namespace: str, oids: Collection[str]) -> concurrent.futures.Future:
        """grant() from another thread (the store's), run on the loop the pool lives on."""
        assert self.db.loop is not None, "the database is started before uploads are taken"
        return asyncio.run_coroutine_threadsafe(self.grant(namespace, list(oids)), self.db.loop)

    async def namespaces_of(self, oids: Collection[str]) -> dict[str, list[str]]:
        if not oids:
            return {}

        async def q(conn: asyncpg.Connection) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for oid, ns in await conn.fetch("SELECT oid, namespace FROM lfs_visible WHERE oid = ANY($1::text[])",
                                            list(oids)):
                out.setdefault(oid, []).append(ns)
            return out
        return await self.db.read(q)

    async def forget_namespace(self, namespace: str) -> int:
        async def w(conn: asyncpg.Connection) -> int:
            return rowcount(await conn.execute("DELETE FROM lfs_visible WHERE namespace = $1", namespace))
        return await self.db.write(w)

    async def names(self) -> list[str]:
        async def q(conn: asyncpg.Connection) -> list[str]:
            # COLLATE "C": code-point order, as SQLite sorts, whatever the database's locale.
            return [r[0] for r in await conn.fetch(
                'SELECT DISTINCT namespace COLLATE "C" AS ns FROM lfs_visible ORDER BY ns')]
        return await self.db.read(q)

    async def oids(self, namespace: str) -> list[str]:
        async def q(conn: asyncpg.Connection) -> list[str]:
            return [r[0] for r in await conn.fetch("SELECT oid FROM lfs_visible WHERE namespace = $1", namespace)]
        return await self.db.read(q)
