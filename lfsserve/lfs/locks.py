"""Git LFS file locking: create, list, verify and release locks, kept per namespace.

    POST {lfs}/locks                 create (needs write; one lock per path; 409 if taken)
    GET  {lfs}/locks?path=&id=&cursor=&limit=   list (needs read)
    POST {lfs}/locks/verify          the caller's locks and everyone else's (needs write; git-lfs
                                     asks before every push)
    POST {lfs}/locks/{id}/unlock     release: the owner, or anyone with write access with "force"

A lock's owner is the authenticated user name ("anonymous" when anonymous writes are allowed).
Locks apply to the whole repository; the `ref` field clients send is accepted and ignored.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from ..auth import Permission, Principal
from ..pgdb import PgDb, rowcount
from ..reqkeys import PRINCIPAL, REQUEST_ID
from ..routing import Target
from ..sqlitedb import SqliteDb
from .errors import LfsError, endpoint, json_response
from .keys import LFS_SERVICE
from .request import check_ref, read_json

if TYPE_CHECKING:
    import asyncpg

__all__ = ["PG_SCHEMA", "SCHEMA", "Lock", "LockExists", "LockStore", "PgLockStore", "SqliteLockStore",
           "handle_locks"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS locks (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    id        TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    path      TEXT NOT NULL,
    owner     TEXT NOT NULL,
    locked_at TEXT NOT NULL,
    UNIQUE (namespace, path)
);
"""

# Part of the first PostgreSQL migration (see LfsService.create).
PG_SCHEMA = """
CREATE TABLE lfs_locks (
    seq       BIGSERIAL PRIMARY KEY,
    id        TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    path      TEXT NOT NULL,
    owner     TEXT NOT NULL,
    locked_at TEXT NOT NULL,
    UNIQUE (namespace, path)
);
"""

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_PATH = 4096
ANONYMOUS_OWNER = "anonymous"


@dataclass(frozen=True)
class Lock:
    id: str
    path: str
    owner: str
    locked_at: str
    seq: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "locked_at": self.locked_at, "owner": {"name": self.owner}}


class LockExists(Exception):
    def __init__(self, lock: Lock):
        super().__init__(f"{lock.path} is already locked by {lock.owner}")
        self.lock = lock


def _row(r) -> Lock:
    return Lock(id=r[0], path=r[1], owner=r[2], locked_at=r[3], seq=r[4])


_COLUMNS = "id, path, owner, locked_at, seq"


def _new_lock(path: str, owner: str) -> Lock:
    return Lock(id=secrets.token_hex(16), path=path, owner=owner,
                locked_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


class LockStore(Protocol):
    """The locks of every namespace: what every backend answers alike. Creating and releasing
    are atomic, also between server instances sharing the store: of two racing creates of one
    path exactly one wins, and a lock is released at most once."""

    async def create(self, namespace: str, path: str, owner: str) -> Lock:
        """Lock `path`; raises LockExists carrying the current lock if someone holds it."""
        ...

    async def list(self, namespace: str, *, path: str | None = None, lock_id: str | None = None,
                   cursor: int = 0, limit: int = DEFAULT_LIMIT, owner: str | None = None
                   ) -> tuple[list[Lock], int | None]:
        """Locks in creation order from `cursor` on; returns (locks, next cursor or None)."""
        ...

    async def delete(self, namespace: str, lock_id: str, *, owner: str | None) -> Lock | None:
        """Release a lock and return it; None when there is no such lock. With `owner` set, only
        that user's lock is released: another's raises PermissionError carrying the lock."""
        ...

    async def forget_namespace(self, namespace: str) -> int:
        """Drop every lock of a namespace; returns how many."""
        ...


class SqliteLockStore:
    def __init__(self, db: SqliteDb):
        self.db = db

    async def create(self, namespace: str, path: str, owner: str) -> Lock:
        lock = _new_lock(path, owner)

        def w(conn: sqlite3.Connection) -> Lock | LockExists:
            try:
                cur = conn.execute("INSERT INTO locks (id, namespace, path, owner, locked_at) VALUES (?,?,?,?,?)",
                                   (lock.id, namespace, path, owner, lock.locked_at))
            except sqlite3.IntegrityError:
                existing = conn.execute(f"SELECT {_COLUMNS} FROM locks WHERE namespace = ? AND path = ?",
                                        (namespace, path)).fetchone()
                if existing is None:  # an id collision: astronomically unlikely
                    raise
                return LockExists(_row(existing))
            assert cur.lastrowid is not None  # set by the INSERT that just succeeded
            return Lock(lock.id, path, owner, lock.locked_at, cur.lastrowid)

        result = await self.db.write(w)
        if isinstance(result, LockExists):
            raise result
        return result

    async def list(self, namespace: str, *, path: str | None = None, lock_id: str | None = None,
                   cursor: int = 0, limit: int = DEFAULT_LIMIT, owner: str | None = None
                   ) -> tuple[list[Lock], int | None]:
        def q(conn: sqlite3.Connection):
            sql = f"SELECT {_COLUMNS} FROM locks WHERE namespace = ? AND seq >= ?"
            args: list[Any] = [namespace, cursor]
            if path is not None:
                sql += " AND path = ?"
                args.append(path)
            if lock_id is not None:
                sql += " AND id = ?"
                args.append(lock_id)
            if owner is not None:
                sql += " AND owner = ?"
                args.append(owner)
            sql += " ORDER BY seq LIMIT ?"
            args.append(limit + 1)
            return [_row(r) for r in conn.execute(sql, args)]

        rows = await self.db.read(q)
        if len(rows) > limit:
            return rows[:limit], rows[limit].seq
        return rows, None

    async def delete(self, namespace: str, lock_id: str, *, owner: str | None) -> Lock | None:
        def w(conn: sqlite3.Connection):
            row = conn.execute(f"SELECT {_COLUMNS} FROM locks WHERE namespace = ? AND id = ?",
                               (namespace, lock_id)).fetchone()
            if row is None:
                return None
            lock = _row(row)
            if owner is not None and lock.owner != owner:
                return PermissionError(lock)
            conn.execute("DELETE FROM locks WHERE seq = ?", (lock.seq,))
            return lock

        result = await self.db.write(w)
        if isinstance(result, PermissionError):
            raise result
        return result

    async def forget_namespace(self, namespace: str) -> int:
        def w(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM locks WHERE namespace = ?", (namespace,)).rowcount
        return await self.db.write(w)


class PgLockStore:
    """The locks in PostgreSQL, shared by every instance using the database. The (namespace, path)
    unique key decides racing creates; a release is one DELETE, so it happens at most once."""

    def __init__(self, db: PgDb):
        self.db = db

    async def create(self, namespace: str, path: str, owner: str) -> Lock:
        lock = _new_lock(path, owner)

        async def w(conn: asyncpg.Connection) -> Lock | LockExists | None:
            seq = await conn.fetchval(
                "INSERT INTO lfs_locks (id, namespace, path, owner, locked_at) VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT (namespace, path) DO NOTHING RETURNING seq",
                lock.id, namespace, path, owner, lock.locked_at)
            if seq is not None:
                return Lock(lock.id, path, owner, lock.locked_at, seq)
            existing = await conn.fetchrow(f"SELECT {_COLUMNS} FROM lfs_locks WHERE namespace = $1 AND path = $2",
                                           namespace, path)
            # None: the holder released it between the two statements; try again.
            return LockExists(_row(existing)) if existing is not None else None

        while True:
            result = await self.db.write(w)
            if isinstance(result, LockExists):
                raise result
            if result is not None:
                return result

    async def list(self, namespace: str, *, path: str | None = None, lock_id: str | None = None,
                   cursor: int = 0, limit: int = DEFAULT_LIMIT, owner: str | None = None
                   ) -> tuple[list[Lock], int | None]:
        async def q(conn: asyncpg.Connection) -> list[Lock]:
            sql = f"SELECT {_COLUMNS} FROM lfs_locks WHERE namespace = $1 AND seq >= $2"
            args: list[Any] = [namespace, cursor]
            for column, value in (("path", path), ("id", lock_id), ("owner", owner)):
                if value is not None:
                    args.append(value)
                    sql += f" AND {column} = ${len(args)}"
            args.append(limit + 1)
            sql += f" ORDER BY seq LIMIT ${len(args)}"
            return [_row(r) for r in await conn.fetch(sql, *args)]

        rows = await self.db.read(q)
        if len(rows) > limit:
            return rows[:limit], rows[limit].seq
        return rows, None

    async def delete(self, namespace: str, lock_id: str, *, owner: str | None) -> Lock | None:
        async def w(conn: asyncpg.Connection) -> Lock | PermissionError | None:
            row = await conn.fetchrow(
                f"DELETE FROM lfs_locks WHERE namespace = $1 AND id = $2 AND ($3::text IS NULL OR owner = $3) "
                f"RETURNING {_COLUMNS}", namespace, lock_id, owner)
            if row is not None:
                return _row(row)
            held = await conn.fetchrow(f"SELECT {_COLUMNS} FROM lfs_locks WHERE namespace = $1 AND id = $2",
                                       namespace, lock_id)
            return PermissionError(_row(held)) if held is not None else None

        result = await self.db.write(w)
        if isinstance(result, PermissionError):
            raise result
        return result

    async def forget_namespace(self, namespace: str) -> int:
        async def w(conn: asyncpg.Connection) -> int:
            return rowcount(await conn.execute("DELETE FROM lfs_locks WHERE namespace = $1", namespace))
        return await self.db.write(w)


# -- HTTP ------------------------------------------------------------------------------------------

def _owner(principal: Principal) -> str:
    return principal.name or ANONYMOUS_OWNER


# Cursors and limits are SQLite integers (int64): at most 18 ASCII digits. str.isdigit() would
# also take "²", which int() refuses.
_DIGITS = re.compile(r"[0-9]{1,18}")
_MAX_INT = 10 ** 18 - 1


def _int_param(value: Any, name: str, default: int, maximum: int | None = None) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, str):
        if not _DIGITS.fullmatch(value):
            raise LfsError(422, f"{name} must be a non-negative integer of at most 18 digits, "
                                f"got {value[:40]!r}")
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_INT:
        raise LfsError(422, f"{name} must be a non-negative integer of at most 18 digits")
    if maximum is not None:
        value = min(value, maximum)
    return value


def _text(value: str | None, name: str) -> str | None:
    """A query or body string bound for SQLite: None/empty as absent; it must encode as UTF-8 (a
    JSON "\\ud800" or an undecodable URL byte cannot) and hold no NUL."""
    if not value:
        return None
    if "\0" in value or len(value) > MAX_PATH:
        raise LfsError(422, f"{name} must be at most {MAX_PATH} characters and hold no NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise LfsError(422, f"{name} is not valid UTF-8 text")
    return value


def _limit(value: Any) -> int:
    limit = _int_param(value, "limit", DEFAULT_LIMIT, MAX_LIMIT)
    return limit or DEFAULT_LIMIT


def _page(next_seq: int | None) -> dict[str, Any]:
    return {"next_cursor": str(next_seq)} if next_seq is not None else {}


async def _require(request: web.Request, auth, ns: str, needed: Permission) -> Principal:
    """Check the caller may `needed` in `ns` (401/403 otherwise) and note who it is for the log."""
    principal = await auth.require(request.headers, ns, needed, lfs=True)
    request[PRINCIPAL] = principal
    return principal


@endpoint
async def handle_locks(request: web.Request, target: Target) -> web.StreamResponse:
    svc = request.app[LFS_SERVICE]
    if not svc.config.lfs.locking:
        raise LfsError(404, "file locking is disabled on this server")
    auth = svc.auth
    ns, rest = target.repo, target.rest
    if rest == "":
        if request.method == "GET":
            await _require(request, auth, ns, Permission.READ)
            q = request.query
            locks, nxt = await svc.locks.list(ns, path=_text(q.get("path"), "path"),
                                              lock_id=_text(q.get("id"), "id"),
                                              cursor=_int_param(q.get("cursor"), "cursor", 0),
                                              limit=_limit(q.get("limit")))
            return json_response({"locks": [lk.as_json() for lk in locks], **_page(nxt)})
        if request.method != "POST":
            raise LfsError(405, f"{request.method} is not allowed here", headers={"Allow": "GET, POST"})
        principal = await _require(request, auth, ns, Permission.WRITE)
        body = await read_json(request)
        check_ref(body)
        path = body.get("path")
        if not isinstance(path, str) or not _text(path, "path"):
            raise LfsError(422, f"path must be a non-empty string of at most {MAX_PATH} characters")
        try:
            lock = await svc.locks.create(ns, path, _owner(principal))
        except LockExists as exc:
            return json_response({"lock": exc.lock.as_json(), "message": "already created lock",
                                  "request_id": request.get(REQUEST_ID, "-")}, status=409)
        return json_response({"lock": lock.as_json()}, status=201)

    if request.method != "POST":
        raise LfsError(405, f"{request.method} is not allowed here", headers={"Allow": "POST"})
    principal = await _require(request, auth, ns, Permission.WRITE)
    body = await read_json(request)
    check_ref(body)

    if rest == "verify":
        cursor = _int_param(body.get("cursor"), "cursor", 0)
        locks, nxt = await svc.locks.list(ns, cursor=cursor, limit=_limit(body.get("limit")))
        me = _owner(principal)
        return json_response({
            "ours": [lk.as_json() for lk in locks if lk.owner == me],
            "theirs": [lk.as_json() for lk in locks if lk.owner != me],
            **_page(nxt),
        })

    lock_id = _text(rest[: -len("/unlock")], "lock id") or ""
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise LfsError(422, "force must be true or false")
    try:
        deleted = await svc.locks.delete(ns, lock_id, owner=None if force else _owner(principal))
    except PermissionError as exc:
        held: Lock = exc.args[0]
        raise LfsError(403, f"{held.path} is locked by {held.owner}; only they can unlock it "
                            "(or unlock with --force)")
    if deleted is None:
        raise LfsError(404, f"no lock with id {lock_id[:80]!r}")
    return json_response({"lock": deleted.as_json()})
