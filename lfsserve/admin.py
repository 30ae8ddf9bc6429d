"""Admin commands' work: repository/namespace usage, blob store verification with quarantine, gc.
(Repositories are verified by the engine, lfsserve.hg.verify; cli.py runs both.)

These run in their own process, next to a running server if need be: the blob store and the
namespace index are safe to share (flocked temp files, SQLite), quarantining is one rename, and gc
only deletes objects no namespace references, checking references before each deletion while
uploads check existence after recording theirs (LfsService.receive), so neither can lose the other's
work. Progress goes to a `Progress` the command line draws as a bar on a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .aio import run_blocking
from .auth import Authenticator
from .config import Config
from .repos import RepoRegistry

__all__ = [
    "GcResult",
    "Progress",
    "Usage",
    "VerifyResult",
    "collect_garbage",
    "open_lfs",
    "parse_duration",
    "usage",
    "verify_blobs",
]


class Progress(Protocol):
    def start(self, what: str, total: int | None, unit: str) -> None: ...
    def advance(self, n: int) -> None: ...
    def done(self) -> None: ...


class NoProgress:
    def start(self, what: str, total: int | None, unit: str) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def done(self) -> None:
        pass


NO_PROGRESS = NoProgress()


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """"90", "90s", "15m", "24h", "7d", "2w" -> seconds; ValueError with a readable message."""
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:]) if t else None
    number = t[:-1] if unit else t
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (e.g. 3600, 90m, 24h, 7d)") from None
    if value < 0:
        raise ValueError(f"negative duration: {text!r}")
    return value


@contextlib.asynccontextmanager
async def open_lfs(config: Config) -> AsyncIterator:
    """The LFS service (blob store + namespace index) of the data directory, started."""
    from .lfs import LfsService

    service = LfsService.create(config, Authenticator(config))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


# -- lfsserve repos ---------------------------------------------------------------------------
@dataclass
class Usage:
    name: str
    hg_bytes: int | None      # None: no hg repository (an LFS-only namespace, e.g. git-lfs)
    lfs_objects: int = 0
    lfs_bytes: int = 0


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


async def usage(config: Config, progress: Progress = NO_PROGRESS) -> list[Usage]:
    """Every repository and LFS namespace with its size on disk and its visible LFS objects."""
    registry = RepoRegistry(config.repos_dir)
    repos = await run_blocking(lambda: list(registry.names()))
    async with contextlib.AsyncExitStack() as stack:
        service = await stack.enter_async_context(open_lfs(config)) if config.lfs_dir.exists() else None
        namespaces = await service.namespaces.names() if service is not None else []
        names = sorted(set(repos) | set(namespaces))
        out = {n: Usage(n, None) for n in names}
        progress.start("sizing", len(names), "repos")
        for name in repos:
            out[name].hg_bytes = await run_blocking(_tree_size, registry.path_of(name) / ".hg")
            progress.advance(1)
        for name in namespaces:
            assert service is not None  # namespaces come from it
            out[name].lfs_objects, out[name].lfs_bytes = await service.namespace_usage(name)
            if name not in repos:
                progress.advance(1)
        progress.done()
    return [out[n] for n in names]


# -- lfsserve verify ----------------------------------------------------------------------------
@dataclass
class VerifyResult:
    checked: int = 0
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)  # oid -> where its bytes went


async def verify_blobs(config: Config, quarantine: bool = True, progress: Progress = NO_PROGRESS) -> VerifyResult:
    """Re-hash every LFS object; report (and by default quarantine) the ones that do not match."""
    result = VerifyResult()
    if not config.lfs_dir.exists():
        return result
    async with open_lfs(config) as service:
        _, total = await service.stored()
        progress.start("verifying LFS objects", total, "B")
        report = await service.verify_all(progress=progress.advance)
        progress.done()
        result.checked, result.bytes, result.corrupt = report.checked, report.bytes, list(report.corrupt)
        if quarantine:
            for oid in result.corrupt:
                result.quarantined[oid] = await service.quarantine(oid)
    return result


# -- lfsserve gc --------------------------------------------------------------------------------
@dataclass
class GcResult:
    examined: int
    deleted: list[str]
    freed_bytes: int
    kept: int
    forgotten: dict[str, int]


async def collect_garbage(config: Config, grace_seconds: float, apply: bool, forget: Sequence[str] = (),
                          progress: Progress = NO_PROGRESS) -> GcResult:
    """Delete (apply) or list (dry run) objects that no namespace references and that are older
    than `grace_seconds`. `forget` names namespaces whose repositories were deleted: with apply
    their references are dropped first; in a dry run they are only disregarded."""
    if not config.lfs_dir.exists():
        return GcResult(0, [], 0, 0, {})
    async with open_lfs(config) as service:
        forgotten = {}
        for name in forget:
            if apply:
                forgotten[name] = await service.forget_namespace(name)
            else:
                forgotten[name] = len(await service.namespaces.oids(name))
        progress.start("examining LFS objects", None, "objects")
        report = await service.gc(grace_seconds=grace_seconds, dry_run=not apply, progress=progress.advance,
                                  disregard=frozenset(forget))
        progress.done()
        return GcResult(len(report.deleted) + report.kept, report.deleted, report.freed_bytes, report.kept, forgotten)


# -- lfsserve storage copy ----------------------------------------------------------------------
@dataclass
class CopyResult:
    copied: int = 0
    copied_bytes: int = 0
    skipped: int = 0      # already in the target, intact
    failed: dict[str, str] = field(default_factory=dict)  # oid -> why


async def copy_store(config: Config, to: str = "s3", concurrency: int = 4,
                     progress: Progress = NO_PROGRESS) -> CopyResult:
    """Copy every object of the local store (<root>/lfs) into the `[storage]` bucket, each read
    back verified from the source and hashed again by the target before it becomes visible there.
    Resumable: objects the target already holds intact are skipped."""
    from .blobstore import BlobError, LocalBlobStore, Status
    from .blobstore.s3 import S3BlobStore

    if to != "s3":
        raise ValueError(f"unknown target {to!r}")
    result = CopyResult()
    source = LocalBlobStore(config.lfs_dir, durable=False)
    target = S3BlobStore.from_config(config.storage)
    await source.open()
    try:
        await target.open()
        try:
            items = [item async for item in source.list()]
            progress.start("copying LFS objects", sum(size for _, size, _ in items), "B")
            slots = asyncio.Semaphore(concurrency)

            async def one(oid: str, size: int) -> None:
                async with slots:
                    try:
                        state = await target.state(oid)
                        if state.status is Status.OK and state.size == size:
                            result.skipped += 1
                            return
                        handle = await source.get(oid)
                        await target.put(oid, source.read(handle))
                        result.copied += 1
                        result.copied_bytes += size
                    except BlobError as exc:
                        result.failed[oid] = exc.message
                    finally:
                        progress.advance(size)

            await asyncio.gather(*(one(oid, size) for oid, size, _ in items))
            progress.done()
        finally:
            await target.close()
    finally:
        await source.close()
    return result
