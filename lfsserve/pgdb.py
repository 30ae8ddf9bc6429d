"""A PostgreSQL database shared by several lfsserve instances: a connection pool, the schema
migrated on start-up, and one exception for "the database cannot be reached right now".

Work is an async function `fn(conn) -> result` given a pooled asyncpg connection; `write` runs it
in a transaction. When PostgreSQL is down or restarting, calls raise DatabaseUnavailable (the
front ends answer 503 with Retry-After) instead of a driver error, and the pool reconnects by
itself once the server is back: the server recovers without a restart.

The schema is a list of migrations; the number applied is kept in `lfsserve_schema`. Instances
that start at once apply them one at a time under a PostgreSQL advisory lock, so none races
another's CREATE TABLE; an instance older than the database's schema refuses to start.

asyncpg is imported on start only: single-node servers (SQLite) never load it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import asyncio

    import asyncpg

__all__ = ["RETRY_AFTER", "DatabaseUnavailable", "PgDb", "SchemaTooNew", "rowcount"]

log = logging.getLogger(__name__)

T = TypeVar("T")
# Seconds a client is told to wait before retrying when the database is unreachable.
RETRY_AFTER = 5
# pg_advisory_lock key for schema migrations: any fixed bigint, the same in every instance.
_MIGRATION_LOCK = 0x6C66_7373_6572_7665  # "lfsserve"
_CONNECT_TIMEOUT = 10.0


class DatabaseUnavailable(Exception):
    """The shared database could not be reached (down, restarting, unreachable): try again later."""


class SchemaTooNew(Exception):
    """The database was migrated by a newer lfsserve than this one."""


def rowcount(status: str) -> int:
    """The row count of a command status such as "DELETE 3" (what asyncpg's execute returns)."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class PgDb:
    """One PostgreSQL database through a pool of `max_size` connections."""

    def __init__(self, url: str, migrations: Sequence[str], *, max_size: int = 10, name: str = "postgresql"):
        self.url = url
        self._migrations = list(migrations)
        self._max_size = max_size
        self._name = name
        self._pool: asyncpg.Pool | None = None
        self.loop: asyncio.AbstractEventLoop | None = None   # the loop the pool lives on (astart)
        self._lost: tuple[type[BaseException], ...] = ()

    # -- lifecycle -----------------------------------------------------------------------------
    async def astart(self) -> None:
        """Open the pool and bring the schema up to date; raises DatabaseUnavailable if the
        server cannot be reached, SchemaTooNew if the schema is newer than this lfsserve."""
        if self._pool is not None:
            return
        import asyncpg

        # What a lost or refused connection raises: these become DatabaseUnavailable.
        self._lost = (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                      asyncpg.InterfaceError, asyncpg.exceptions.OperatorInterventionError,
                      asyncpg.exceptions.InsufficientResourcesError)
        try:
            pool = await asyncpg.create_pool(self.url, min_size=0, max_size=self._max_size,
                                             timeout=_CONNECT_TIMEOUT, command_timeout=60)
        except self._lost as exc:
            raise DatabaseUnavailable(f"{self._name}: cannot connect: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, self._lost):
                raise DatabaseUnavailable(f"{self._name}: cannot connect: {exc}") from exc
            raise
        self._pool = pool
        import asyncio  # lazily: hg over SSH reads without an event loop

        self.loop = asyncio.get_running_loop()

    async def astop(self) -> None:
        import asyncio  # lazily, as in astart

        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except self._lost:  # includes TimeoutError: connections that would not close
                pool.terminate()

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS lfsserve_schema (version integer NOT NULL)")
            version = await conn.fetchval("SELECT max(version) FROM lfsserve_schema") or 0
            if version > len(self._migrations):
                raise SchemaTooNew(f"{self._name}: the database schema is version {version}, newer than "
                                   f"this lfsserve knows ({len(self._migrations)}); upgrade lfsserve")
            for number, sql in enumerate(self._migrations[version:], start=version + 1):
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO lfsserve_schema (version) VALUES ($1)", number)
                log.info("%s: schema migrated to version %d", self._name, number)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)

    # -- calls ---------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise RuntimeError(f"{self._name}: database is not open")
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except self._lost as exc:
            await self._connection_lost()
            raise DatabaseUnavailable(f"{self._name}: {type(exc).__name__}: {exc}") from exc

    async def _connection_lost(self) -> None:
        # After a server restart every idle connection of the pool is dead: have them all
        # reopened, rather than each failing one more request.
        if self._pool is not None:
            await self._pool.expire_connections()

    async def read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run a read-only `fn`; tried again once on a fresh connection if the connection was lost
        (a read can be repeated)."""
        try:
            async with self._connection() as conn:
                return await fn(conn)
        except DatabaseUnavailable:
            pass
        async with self._connection() as conn:
            return await fn(conn)

    async def write(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `fn` in a transaction; returns once it is committed. If the connection turns out to
        be dead before the transaction began (a pooled connection to a restarted server), it is
        run on a fresh one; a connection lost later raises DatabaseUnavailable."""
        for attempt in (1, 2):
            async with self._connection() as conn:
                tx = conn.transaction()
                try:
                    await tx.start()
                except self._lost:
                    if attempt == 2:
                        raise
                    await self._connection_lost()
                    continue
                try:
                    result = await fn(conn)
                except BaseException:
                    with contextlib.suppress(*self._lost):
                        await tx.rollback()
                    raise
                await tx.commit()
                return result
        raise AssertionError("unreachable")  # the loop returns or raises
