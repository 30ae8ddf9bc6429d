"""pkt-line framing (as Git's, and git-lfs's pure-SSH protocol) over asyncio streams.

A packet is 4 lowercase hex digits giving its length including those 4, then the payload;
"0000" is a flush packet (end of a message), "0001" a delimiter (arguments | data). Text
packets end in LF, which the reader strips. Anything else is a ProtocolError: the stream cannot
be resynchronised, so the caller reports it and ends the session.
"""

from __future__ import annotations

import asyncio
import os
import sys

from .stdio import STDIO_REFUSED, stdio_usable

__all__ = ["DELIM", "FLUSH", "MAX_PAYLOAD", "STDIO_REFUSED", "PktReader", "PktWriter", "ProtocolError",
           "open_stdio", "stdio_usable"]

MAX_PACKET = 65520
MAX_PAYLOAD = MAX_PACKET - 4


class _Special(bytes):
    """A flush or delimiter packet: compared by identity, never a payload."""


FLUSH = _Special(b"0000")
DELIM = _Special(b"0001")


class ProtocolError(Exception):
    """The peer broke the framing (or closed the stream mid-message)."""


class PktReader:
    def __init__(self, reader: asyncio.StreamReader):
        self._r = reader

    async def read(self, *, eof_ok: bool = False) -> bytes | None:
        """The next payload, FLUSH or DELIM. At a clean end of stream: None if `eof_ok`, else
        ProtocolError."""
        try:
            head = await self._r.readexactly(4)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial and eof_ok:
                return None
            raise ProtocolError("connection closed in the middle of a message") from None
        try:
            text = head.decode("ascii")
            if len(text) != 4 or not all(c in "0123456789abcdefABCDEF" for c in text):
                raise ValueError
            n = int(text, 16)
        except ValueError:
            raise ProtocolError(f"not a pkt-line length: {head!r}") from None
        if n == 0:
            return FLUSH
        if n == 1:
            return DELIM
        if n < 4:
            raise ProtocolError(f"unexpected special packet {text!r}")
        if n > MAX_PACKET:
            raise ProtocolError(f"packet longer than {MAX_PACKET} bytes")
        try:
            return await self._r.readexactly(n - 4)
        except asyncio.IncompleteReadError:
            raise ProtocolError("connection closed in the middle of a packet") from None

    async def read_text(self, *, eof_ok: bool = False) -> str | bytes | None:
        """Like read(), with payloads decoded as one UTF-8 line (its LF stripped)."""
        pkt = await self.read(eof_ok=eof_ok)
        if pkt is None or pkt is FLUSH or pkt is DELIM:
            return pkt
        try:
            text = pkt.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("a text packet is not UTF-8") from None
        return text.removesuffix("\n")


class PktWriter:
    def __init__(self, writer: asyncio.StreamWriter):
        self._w = writer

    def text(self, line: str) -> None:
        self.data(line.encode("utf-8") + b"\n")

    def data(self, payload: bytes) -> None:
        view = memoryview(payload)
        for i in range(0, len(view), MAX_PAYLOAD):
            part = view[i:i + MAX_PAYLOAD]
            self._w.write(b"%04x" % (len(part) + 4))
            self._w.write(part)

    def flush(self) -> None:
        self._w.write(FLUSH)

    def delim(self) -> None:
        self._w.write(DELIM)

    async def drain(self) -> None:
        await self._w.drain()


async def open_stdio(stdin: int | None = None, stdout: int | None = None
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.BaseTransport]:
    """Standard input and output (pipes or sockets from sshd; this process's, or the given
    descriptors, which stay open) as asyncio streams, and the input's transport: close it with
    the writer when the session ends (a loop that goes on serving must stop watching the input).
    Check stdio_usable() first."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_PACKET * 2)
    fd_in = sys.stdin.fileno() if stdin is None else stdin
    fd_out = sys.stdout.fileno() if stdout is None else stdout
    read_transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                     os.fdopen(fd_in, "rb", buffering=0, closefd=False))
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(fd_out, "wb", buffering=0, closefd=False))
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    return reader, writer, read_transport
