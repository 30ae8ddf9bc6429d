"""Which LFS namespace (repository path) may see which object.

The blob store is shared and deduplicated; this index keeps knowing an oid from being enough to
read another repository's file. An oid becomes visible in a namespace when content matching it
was uploaded through that namespace (the upload proves possession), or when an hg push to that
repository references it and the pusher could already read it elsewhere (see LfsService).
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import time
from collections.abc import Collection

from ..sqlitedb import SqliteDb, select_in

__all__ = ["SCHEMA", "NamespaceIndex"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS visible (
    namespace TEXT NOT NULL,
    oid       TEXT NOT NULL,
    added     REAL NOT NULL,
    PRIMARY KEY (namespace, oid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS visible_by_oid ON visible (oid, namespace);
"""


class NamespaceIndex:
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

