"""What the two wire v1 transports (HTTP in http.py, SSH in lfsserve/ssh/hg.py) share besides the
commands themselves: spooling a push to a file under its size limit, the LFS blob check bound to the
pusher, and whether a pusher may create the repository. Nothing here knows a transport.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ...auth import Authenticator, Permission, Principal
from ...blobstore.base import StorageUnavailable
from ...config import Config
from ...hg.error import Abort
from ..capabilities import BundleRequired
from ..protocol import BadRequest
from ..pushenv import PushEnv, push_env
from ..unbundle import LfsCheck, PushReply, refused_reply

if TYPE_CHECKING:
    from ...kernel import LfsBlobPolicy

# The errors and the push answer a transport turns into its own framing, and who pushes (with the
# hooks, rights and webhooks around a push), are re-exported here.
__all__ = ["SPOOL_CHUNK", "BadRequest", "BundleRequired", "PushEnv", "PushReply", "PushTooLarge", "lfs_checker",
           "may_create", "open_spool", "push_env", "refused_reply", "size_text", "spool", "spool_dir"]

SPOOL_CHUNK = 1024 * 1024


class PushTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"push larger than this server's limit of {size_text(limit)} (hg.max_push_size)")
        self.limit = limit


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n} bytes"


def spool_dir(config: Config) -> Path:
    """Where pushes are spooled before they are applied (inside the server root, so on the disk
    the repositories are on)."""
    return config.root / "tmp"


def open_spool(directory: Path) -> BinaryIO:
    """A new anonymous temporary file for a push's bundle (blocking: use the executor). The caller
    owns it: it applies the push from it, then closes it, which deletes it."""
    directory.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryFile("w+b", dir=directory, prefix="unbundle-")


async def spool(chunks: AsyncIterator[bytes], directory: Path, limit: int = 0) -> BinaryIO:
    """A pushed bundle, from the transport's chunks into a new spool file (never held in memory),
    rewound for reading. Over `limit` (0: none), PushTooLarge; what was spooled is dropped with the
    file. The caller owns the file on success: it applies the push from it, then closes it."""
    from ...aio import run_blocking  # lazily: hg over SSH spools synchronously, without asyncio

    fh = await run_blocking(open_spool, directory)
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if limit and size > limit:
                raise PushTooLarge(limit)
            await run_blocking(fh.write, chunk)
        await run_blocking(fh.seek, 0)
    except BaseException:
        await run_blocking(fh.close)
        raise
    return fh


def lfs_checker(config: Config, policy: LfsBlobPolicy | None, repo_name: str, principal: Principal) -> LfsCheck:
    """A callback for the push thread: which lfs oids of the push are not acceptable.

    The LFS policy also makes the acceptable ones visible in this repository's namespace, so it
    is called even when lfs.require_pushed_blobs is off (the refusal is then skipped)."""

    def check(oids: set[str]) -> set[str]:
        if policy is None:
            bad = set(oids)  # no LFS store in this server: nothing can vouch for these blobs
        else:
            try:
                bad = set(policy.accept_pushed_pointers_sync(repo_name, sorted(oids), principal))
            except StorageUnavailable as exc:
                # The object storage is down: refuse the push (nothing applied) as hg shows it.
                raise Abort(f"push refused: its LFS objects cannot be checked now: {exc.message}",
                            hint="push again in a moment") from None
        return bad if config.lfs.require_pushed_blobs else set()
    return check


def may_create(config: Config, auth: Authenticator, principal: Principal, repo_name: str) -> bool:
    """Whether a push by `principal` may create `repo_name` (hg.create_on_push and write access)."""
    return config.hg.create_on_push and auth.permission(principal, repo_name) >= Permission.WRITE
