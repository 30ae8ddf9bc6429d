"""The webhook delivery queue: one SQLite table in the data directory (<root>/webhooks.sqlite3).

Every database access of the webhooks lives here, behind `WebhookQueue`, so the queue can move to
another database with this one file. A delivery is one event for one URL. It is written before
the push or upload that caused it is acknowledged, and stays until delivered or given up, so a
restart loses none. A worker claims due deliveries by pushing their `next_at` past a lease (a
crashed worker's claims come back when the lease ends), then records the outcome.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ..sqlitedb import SqliteDb

__all__ = ["Delivery", "WebhookQueue", "queue_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    event TEXT NOT NULL,
    repo TEXT NOT NULL,
    url TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    last_status INTEGER,
    last_error TEXT NOT NULL DEFAULT '',
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (status, next_at);
"""

def queue_path(root: Path) -> Path:
    return root / "webhooks.sqlite3"


@dataclass(frozen=True)
class Delivery:
    id: int
    event_id: str
    event: str
    repo: str
    url: str
    payload: bytes
    created: float
    attempts: int
    next_at: float
    status: str          # pending | delivered | failed
    last_status: int | None
    last_error: str
    delivered_at: float | None


_COLUMNS = ("id, event_id, event, repo, url, payload, created, attempts, next_at, status, last_status, "
            "last_error, delivered_at")


def _row(r: tuple) -> Delivery:
    return Delivery(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6], r[7], r[8], r[9], r[10], r[11], r[12])


class WebhookQueue:
    def __init__(self, root: Path):
        self.db = SqliteDb(queue_path(root), _SCHEMA, name="webhooks")

    def start(self) -> None:
        self.db.start()

    def stop(self) -> None:
        self.db.stop()

    def enqueue_sync(self, event_id: str, event: str, repo: str, urls: list[str], payload: bytes) -> None:
        """Queue `payload` for each URL, committed when this returns (from a worker thread)."""
        now = time.time()

        def add(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO webhook_deliveries (event_id, event, repo, url, payload, created, next_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(event_id, event, repo, url, payload, now, now) for url in urls])
        self.db.write_sync(add)

    async def claim(self, limit: int, lease: float) -> list[Delivery]:
        """Up to `limit` due deliveries, leased to the caller for `lease` seconds (a worker that
        dies meanwhile leaves them to be claimed again then)."""
        now = time.time()

        def take(conn: sqlite3.Connection) -> list[Delivery]:
            rows = [_row(r) for r in conn.execute(
                f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE status = 'pending' AND next_at <= ? "
                "ORDER BY next_at, id LIMIT ?", (now, limit))]
            conn.executemany("UPDATE webhook_deliveries SET next_at = ? WHERE id = ?",
                             [(now + lease, d.id) for d in rows])
            return rows
        return await self.db.write(take)

    async def next_due(self) -> float | None:
        """When the next pending delivery is due (a Unix time), or None."""
        def first(conn: sqlite3.Connection) -> float | None:
            row = conn.execute("SELECT MIN(next_at) FROM webhook_deliveries WHERE status = 'pending'").fetchone()
            return row[0]
        return await self.db.read(first)

    async def delivered(self, delivery_id: int, http_status: int) -> None:
        def done(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1, "
                         "last_status = ?, last_error = '', delivered_at = ? WHERE id = ?",
                         (http_status, time.time(), delivery_id))
        await self.db.write(done)

    async def failed(self, delivery_id: int, http_status: int | None, error: str, retry_at: float | None) -> None:
        """Record a failed attempt: retried at `retry_at`, or given up (None)."""
        def fail(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = ?, last_error = ?, "
                         "status = ?, next_at = ? WHERE id = ?",
                         (http_status, error[:500], "pending" if retry_at is not None else "failed",
                          retry_at if retry_at is not None else time.time(), delivery_id))
        await self.db.write(fail)

    async def prune(self, before: float) -> int:
        """Forget delivered and given-up deliveries created before `before`; how many."""
        def forget(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM webhook_deliveries WHERE status != 'pending' AND created < ?",
                                (before,)).rowcount
        return await self.db.write(forget)

    def list_sync(self, limit: int, status: str | None = None) -> list[Delivery]:
        """The newest deliveries first (for the admin command)."""
        def rows(conn: sqlite3.Connection) -> list[Delivery]:
            where, params = ("WHERE status = ?", (status,)) if status else ("", ())
            return [_row(r) for r in conn.execute(
                f"SELECT {_COLUMNS} FROM webhook_deliveries {where} ORDER BY id DESC LIMIT ?", (*params, limit))]
        return self.db.read_sync(rows)

    def get_sync(self, delivery_id: int) -> Delivery | None:
        def row(conn: sqlite3.Connection) -> Delivery | None:
            r = conn.execute(f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE id = ?", (delivery_id,)).fetchone()
            return _row(r) if r else None
        return self.db.read_sync(row)

    def redeliver_sync(self, delivery_id: int) -> bool:
        """Send a delivery again (whatever its state) as soon as a server's worker sees it."""
        def again(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_at = ? "
                               "WHERE id = ?", (time.time(), delivery_id))
            return cur.rowcount == 1
        return self.db.write_sync(again)
