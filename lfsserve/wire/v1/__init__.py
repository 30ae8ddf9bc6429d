"""Mercurial wire protocol v1: commands apart from transports.

commands.py (the command registry and the commands: a Session and decoded arguments in, bytes,
a Stream or a push reply out, typed errors raised), http.py (the aiohttp transport for
`{repo}?cmd=NAME`: argument decoding, response framing, errors to HTTP). The pull and push logic
the commands call lives beside this package (wire/capabilities.py, getbundle.py, streamclone.py,
unbundle.py). The HTTP side is imported on first use, so the command layer needs no aiohttp.
"""

from __future__ import annotations

__all__ = ["setup"]


def setup(app) -> None:  # app: aiohttp.web.Application (not imported here: see above)
    """Register the `{repo}?cmd=` handler (the app's FRONTENDS list names this module)."""
    from .http import setup as _setup

    _setup(app)
