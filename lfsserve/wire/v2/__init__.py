"""Mercurial wire protocol v2 (exp-http-v2-0003): framed CBOR commands over HTTP POST.

framing.py (frames, request reader, response writer), cbor.py (the CBOR subset), encoding.py
(stream encodings), commands.py (the command registry and commands), http.py (aiohttp side).
Wire v1 calls `maybe_upgrade` for capabilities requests that ask for v2. The HTTP side (and with
it the repository engine) is imported on first use, so the codec modules stay light.
"""

from __future__ import annotations

__all__ = ["maybe_upgrade", "setup"]


def setup(app):
    """Register the `{repo}/api/...` handler (the app's FRONTENDS list names this module)."""
    from .http import setup as _setup

    _setup(app)


async def maybe_upgrade(request, target, v1caps: bytes):
    """The v2 handshake answer to a v1 capabilities request asking for it, or None (see http.py)."""
    from .http import maybe_upgrade as _maybe_upgrade

    return await _maybe_upgrade(request, target, v1caps)
