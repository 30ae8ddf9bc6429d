"""Large upload bodies read straight from the socket by one worker thread.

Through aiohttp, every piece of a body is a fresh bytes object (parsed, queued, handed to hashing
and writing threads), which costs several times the SHA-256 of the bytes. Here, once the handler
knows the upload is acceptable, the event loop stops reading the connection; one worker thread
`recv_into`s the upload's own reused buffers (DirectUpload: a full buffer is hashed and written
in other threads while the next one fills), then the loop reads the connection again for the
next request. The worker reads exactly the rest of the body
(Content-Length), never a byte of what follows, and aiohttp's parser, which was left expecting
the body, is replaced by a fresh one (the only private parts of aiohttp used: checked once per
upload, the ordinary path is taken when they are not there).

What the ordinary path promises holds here too: the idle timeout (limits.idle_timeout, 408),
request_timeout and shutdown (the task is cancelled: the socket is shut down, the thread finishes,
the upload is dropped), a client gone mid-body (400, nothing stored), never a partial object
(DirectUpload.finish checks the whole content). A connection whose body was not read to its end
is closed after the answer; a complete one stays open for the next request. Chunked or encoded
bodies, TLS and small bodies go the ordinary way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import time
from typing import Any

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestPayloadError

from ..aio import run_blocking
from ..blobstore import DirectUpload
from ..limits import ClientIdle
from ..reqkeys import BODY_WATCH

__all__ = ["MIN_DIRECT", "eligible", "read_into"]

log = logging.getLogger(__name__)

# Below this the body mostly arrives with the headers: the ordinary path costs less.
MIN_DIRECT = 1 << 20
# The worker sleeps until this much of the body is waiting (SO_RCVLOWAT; less at the end): the
# upload's hashing and writing run in other threads, so the receiver empties the connection
# faster than a client fills it and, woken for every segment, spent more CPU on wake-ups and
# small receives than on copying (measured, 1 GiB: 1.19 server CPU-s without, 1.05 with 2 MiB).
_LOWAT = 2 << 20


class _Idle(Exception):
    pass


def _fresh_parser(request: web.Request) -> Any | None:
    """A new request parser configured like the connection's, or None when this aiohttp does
    not look as expected (then the ordinary path is taken)."""
    protocol = request.protocol
    try:
        old: Any = protocol._parser
        kwargs = getattr(protocol._manager, "_kwargs", {})
        return type(old)(protocol, asyncio.get_running_loop(), protocol._read_bufsize,
                         max_line_size=protocol.max_line_size, max_field_size=protocol.max_field_size,
                         max_headers=protocol.max_headers, payload_exception=RequestPayloadError,
                         auto_decompress=kwargs.get("auto_decompress", True),
                         max_msg_queue_size=MAX_MSG_QUEUE_SIZE)
    except (AttributeError, TypeError):
        return None


def eligible(request: web.Request) -> bool:
    """Whether this upload's body may be read straight from the socket."""
    length = request.content_length
    transport = request.transport
    return (length is not None and length >= MIN_DIRECT and request.method == "PUT"
            and "Transfer-Encoding" not in request.headers and "Content-Encoding" not in request.headers
            and not request.content.is_eof() and transport is not None and not transport.is_closing()
            and transport.get_extra_info("sslcontext") is None and transport.get_extra_info("socket") is not None
            and all(hasattr(request.protocol, a) for a in ("_parser", "_reading_paused", "_buffer_paused")))


def _take_over(request: web.Request) -> list[bytes]:
    """On the loop, without yielding: stop reading the connection and take what aiohttp already
    has of the body (also what its flow control held back in the parser)."""
    transport = request.transport
    protocol = request.protocol
    content = request.content
    assert transport is not None
    transport.pause_reading()
    parts: list[bytes] = []
    while True:
        if content.exception() is not None:
            raise content.exception()  # type: ignore[misc]
        data = content.read_nowait(-1)
        if data:
            parts.append(data)
        if protocol._reading_paused:
            # aiohttp paused the parser with a tail held back: let it feed that.
            protocol.resume_reading()
            continue
        if not data:
            # Reading the buffer (and the line above) resume the transport: stop it again
            # before control goes back to the loop, so that it reads nothing more.
            transport.pause_reading()
            return parts


def _pump(sock: socket.socket, upload: DirectUpload, parts: list[bytes], remaining: int, idle: float) -> None:
    """In a worker thread: write `parts`, then receive exactly `remaining` bytes from `sock`
    (non-blocking, shared with the event loop's transport) into the upload's own buffer."""
    for part in parts:
        upload.write(memoryview(part))
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    # With SO_RCVLOWAT, poll() does not report a few bytes: it wakes every slice to look for
    # them, so that a slow client is not taken for an idle one (idle to idle + 1 s of silence).
    slice_ms = min(int(idle * 1000), 1000) if idle else -1
    deadline = 0.0  # set when the connection is found empty: limits.idle_timeout from then
    lowat = 1
    try:
        while remaining:
            space = upload.buffer()
            try:
                n = sock.recv_into(space, min(len(space), remaining))
            except BlockingIOError:
                want = min(_LOWAT, remaining)  # never more than is to come
                if want != lowat:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
                    lowat = want
                if idle:
                    now = time.monotonic()
                    if not deadline:
                        deadline = now + idle
                    elif now >= deadline:
                        raise _Idle() from None
                poller.poll(slice_ms)
                continue
            except InterruptedError:
                continue
            if not n:
                raise ClientPayloadError(f"the connection closed {remaining} bytes before its end")
            deadline = 0.0
            remaining -= n
            upload.filled(n)
    finally:
        if lowat != 1:
            # The socket is the connection's: its next request is read by the event loop.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


async def read_into(request: web.Request, upload: DirectUpload, idle: float) -> None:
    """Read the rest of the body of `request` (eligible()) into `upload`.

    Returns once the whole body is written to it, the connection ready for its next request.
    Raises ClientPayloadError (client gone), ClientIdle (limits.idle_timeout) or
    whatever the upload raised; the connection is then closed after the answer."""
    transport = request.transport
    protocol = request.protocol
    parser = _fresh_parser(request)
    raw = transport.get_extra_info("socket") if transport is not None else None
    if parser is None or raw is None or transport is None:
        raise RuntimeError("read_into() called on a request that is not eligible()")
    watch = request.get(BODY_WATCH)
    if watch is not None:
        watch.handed_off()
    done = False
    try:
        parts = _take_over(request)
        length = request.content_length or 0
        remaining = length - sum(map(len, parts))
        if remaining < 0:
            raise BadHttpMessage("request body longer than its Content-Length")
        if remaining:
            # The old parser expects the body the worker is about to read: from here the
            # connection's next bytes go to a new one.
            protocol._parser = parser
        # A descriptor of its own: valid however the connection ends meanwhile.
        sock = socket.socket(fileno=os.dup(raw.fileno()))
        try:
            job = asyncio.ensure_future(run_blocking(_pump, sock, upload, parts, remaining, idle))
            try:
                await asyncio.shield(job)
            except asyncio.CancelledError:
                # Stop the thread (shutdown reaches the shared connection) and let it finish
                # before its socket is closed.
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                await asyncio.wait([job])
                if not job.cancelled():
                    job.exception()  # (the socket shut under it): retrieved, the upload is dropped
                raise
        finally:
            sock.close()
        done = True
    except _Idle:
        if watch is not None:
            watch.expired()
        raise ClientIdle(text="request body stopped arriving") from None
    finally:
        if done:
            request.content.feed_eof()
            protocol._reading_paused = False
            if not protocol._buffer_paused:
                transport.resume_reading()
        else:
            # Part of the body may still be on its way: the connection cannot carry another request.
            protocol.keep_alive(False)
