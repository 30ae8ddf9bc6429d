"""The `lfsserve` command (and `python -m lfsserve`).

`lfsserve ssh` runs once per hg command a client sends over SSH, so it first tries to hand the
session to the server running on the same data directory (ssh/forward.py, standard library only)
before anything else of lfsserve is imported; everything else is cli.main.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> int:
    if sys.argv[1:2] == ["ssh"]:
        from .ssh.forward import forward

        status = forward(sys.argv[2:])
        if status is not None:
            return status
    from .cli import main as cli_main

    return cli_main()
