"""Zero-copy file responses that work on any event loop, uvloop included.

aiohttp's FileResponse uses loop.sendfile(), which uvloop does not implement, so under uvloop every
byte of a download would be read into Python and written back out. Here the kernel does it: the
response headers go out through aiohttp, then a worker thread calls os.sendfile() on a duplicate
of the connection's socket, waiting with poll() whenever the socket buffer is full. The duplicate
keeps the socket alive (and its number unreused) however the connection ends meanwhile; the event
loop writes nothing to that connection until the thread is done.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
from pathlib import Path
from typing import Mapping

from aiohttp import web

from ..aio import run_blocking
from ..reqkeys import BODY_SENT

__all__ = ["send"]

log = logging.getLogger(__name__)

_CHUNK = 16 << 20  # per sendfile() call: bounded so a stop request is noticed
_STALL_SECONDS = 300.0  # a client that takes nothing for this long is dropped


def _sendfile_loop(sock_fd: int, path: Path, size: int, sent: list[int]) -> None:
    """Send the file; `sent[0]` counts the bytes the kernel took, also when this raises."""
    file_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        poller = select.poll()
        poller.register(sock_fd, select.POLLOUT)
        while sent[0] < size:
            try:
                n = os.sendfile(sock_fd, file_fd, sent[0], min(_CHUNK, size - sent[0]))
            except BlockingIOError:
                if not poller.poll(_STALL_SECONDS * 1000):
                    raise TimeoutError(f"client took nothing for {_STALL_SECONDS:.0f}s")
                continue
            if n == 0:
                raise EOFError("file shorter than expected")  # the object changed on disk
            sent[0] += n
    finally:
        os.close(file_fd)


async def send(request: web.Request, path: Path, size: int, headers: Mapping[str, str]
               ) -> web.StreamResponse | None:
    """Send `path` as the whole response body; None when this connection cannot take it (TLS,
    no socket), in which case nothing was sent and the caller answers some other way."""
    transport = request.transport
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return None
    raw = transport.get_extra_info("socket")
    if raw is None:
        return None
    try:
        sock = socket.socket(fileno=os.dup(raw.fileno()))
    except OSError:
        return None
    try:
        response = web.StreamResponse(status=200, headers=headers)
        response.content_length = size
        await response.prepare(request)
        # The headers must have left the transport's buffer before the kernel appends the body.
        while transport.get_write_buffer_size() and not transport.is_closing():
            await asyncio.sleep(0.001)
        if transport.is_closing():
            return response
        sent = [0]
        job = asyncio.ensure_future(run_blocking(_sendfile_loop, sock.fileno(), path, size, sent))
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            # Stop the thread (shutdown reaches the shared connection) and let it finish before
            # its socket is closed: a closed number could be reused by an unrelated file.
            _shutdown(sock)
            await asyncio.wait([job])
            raise
        except ConnectionError:
            transport.abort()
            raise  # the client went away: recorded as such (logs.request_id_middleware)
        except (OSError, EOFError, TimeoutError) as exc:
            log.info("download of %s stopped: %s", path.name, exc)
            transport.abort()
        finally:
            # aiohttp never saw these bytes: count them for the access log and metrics.
            if BODY_SENT in request:
                request[BODY_SENT] += sent[0]
        return response
    finally:
        sock.close()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
