"""Whether standard input and output can carry a session (no asyncio here: the hg session, which
runs without an event loop, checks this too)."""

from __future__ import annotations

import os
import stat
import sys

__all__ = ["STDIO_REFUSED", "stdio_usable"]

STDIO_REFUSED = "needs pipes or sockets as stdin and stdout (as sshd gives)"


def stdio_usable(stdin: int | None = None, stdout: int | None = None) -> bool:
    """Whether stdin and stdout (this process's, or the given descriptors) are pipes or sockets.
    asyncio cannot wait on a regular file or /dev/null (it would wait forever), so a
    git-lfs-transfer session refuses to start on them; the hg session, which reads synchronously,
    refuses them alike (sshd never gives them)."""
    def streamable(fd: int) -> bool:
        mode = os.fstat(fd).st_mode
        return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
    return (streamable(sys.stdin.fileno() if stdin is None else stdin)
            and streamable(sys.stdout.fileno() if stdout is None else stdout))
