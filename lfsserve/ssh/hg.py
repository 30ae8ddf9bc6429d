"""hg over SSH: `hg -R REPO serve --stdio`.

The command line is parsed and checked in command.py and the user's read permission in
session.py; what remains is the stdio transport of wire protocol v1 (hello/between handshake,
`<arg> <len>` arguments, length-prefixed answers, the unbundle exchange). It is built on the
transport-free wire v1 commands, one implementation of each command for HTTP and SSH, and plugs
in here: `serve_hg_stdio` is called with stdin/stdout untouched (nothing has been read from or
written to them) and returns the process's exit status.
"""

from __future__ import annotations

import sys

from ..auth import Principal
from ..config import Config

__all__ = ["serve_hg_stdio"]


def serve_hg_stdio(config: Config, principal: Principal, repo: str) -> int:
    """Serve Mercurial's SSH protocol for `repo` to `principal` (who may at least read it)."""
    print("lfsserve: hg over ssh is not available yet", file=sys.stderr)
    return 1
