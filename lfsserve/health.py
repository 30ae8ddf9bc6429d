"""Liveness (/healthz: the process answers) and readiness (/readyz: it can do its job).

Ready means: the data directory is a directory we can create files in, the repositories
directory (when it exists) can be listed, and the LFS directory (when it exists) is writable.
A missing repositories or LFS directory is fine on a fresh data volume: they are created on
first use. The checks run in the executor, so a saturated executor shows up as not ready.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from aiohttp import web

from .aio import run_blocking
from .config import Config
from .kernel import CTX

__all__ = ["healthz", "readiness_problems", "readyz"]

# A probe that cannot even get an executor thread within this time gets "not ready".
_READY_TIMEOUT = 5.0


def _writable_dir(path: Path, what: str) -> str | None:
    if not path.is_dir():
        return f"{what} {path} is not a directory"
    try:
        fd, name = tempfile.mkstemp(prefix=".readyz-", dir=path)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return f"{what} {path} is not writable: {exc.strerror or exc}"
    return None


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def readiness_problems(config: Config) -> list[str]:
    """What keeps the server from serving, as sentences; empty when ready. Blocking."""
    problems = []
    root_problem = _writable_dir(config.root, "data directory")
    if root_problem:
        problems.append(root_problem)
    repos = config.repos_dir
    if repos.exists():
        try:
            os.listdir(repos)
        except OSError as exc:
            problems.append(f"repositories directory {repos} cannot be read: {exc.strerror or exc}")
    elif _writable_dir(_existing_ancestor(repos), "") is not None:
        problems.append(f"repositories directory {repos} does not exist and cannot be created")
    lfs = config.lfs_dir
    if lfs.exists():
        problem = _writable_dir(lfs, "LFS directory")
        if problem:
            problems.append(problem)
    return problems


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.StreamResponse:
    config = request.app[CTX].config
    try:
        async with asyncio.timeout(_READY_TIMEOUT):
            problems = await run_blocking(readiness_problems, config)
    except TimeoutError:
        problems = [f"the executor did not run the checks within {_READY_TIMEOUT:g}s (overloaded)"]
    if problems:
        return web.Response(status=503, text="not ready:\n" + "".join(f"- {p}\n" for p in problems))
    return web.Response(text="ready\n")
