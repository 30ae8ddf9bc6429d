"""git-lfs-transfer: git-lfs's pure-SSH protocol (version 1), on the LFS service HTTP uses.

Spec: git-lfs docs/proposals/ssh_adapter.md; what git-lfs 3.x really sends and expects
(ssh/protocol.go, tq/ssh.go, locking/ssh.go) decides where the proposal is loose:

    server: capabilities (version=1, locking), flush
    client: `version 1` flush                        -> status 200 flush
    client: batch, args, delim, `<oid> <size>`..., flush
                                                     -> status 200, hash-algo=sha256, delim,
                                                        `<oid> <size> upload|download|noop`..., flush
    client: put-object <oid>, size=N, delim, data..., flush   -> status 200 flush
    client: verify-object <oid>, size=N, flush                 -> status 200 flush
    client: get-object <oid>, flush                  -> status 200, size=N, delim, data..., flush
    client: lock / list-lock / list-locks / unlock <id>   (the HTTP locking API's operations)
    client: quit flush                               -> status 200 flush; the process exits

Errors are `status <http code>`, delim, one message line, flush; the session goes on. Broken
framing (garbage, a packet cut short, EOF inside a message) cannot be answered reliably: the
server says so on stderr, writes nothing, and exits non-zero. Uploads stream into
LfsService.receive, which verifies the content against its oid before it becomes visible;
downloads stream out of LfsService.read in packets, so memory never grows with object size.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field

from ..aio import run_blocking
from ..auth import Forbidden, Permission, Principal
from ..blobstore import (
    BlobError,
    CorruptObject,
    HashMismatch,
    InvalidOid,
    ObjectMissing,
    Status,
    StorageFull,
    StorageUnavailable,
    TooLarge,
    UploadRaced,
)
from ..lfs.service import LfsService, LockExists, VerifyFailed
from ..pgdb import DatabaseUnavailable
from ..webhooks import Webhooks
from .pktline import DELIM, FLUSH, PktReader, PktWriter, ProtocolError

__all__ = ["TransferSession"]

_OID = re.compile(r"[0-9a-f]{64}\Z")
_SIZE = re.compile(r"[0-9]{1,19}\Z")
MAX_ARGS = 64
# A batch line is `<oid> <size>` plus optional key=value pairs: this bounds a batch's memory by
# max_batch_objects lines of this length, whatever the client sends.
MAX_LINE = 1024
MAX_LOCK_PATH = 4096
DEFAULT_LOCK_LIMIT = 100
MAX_LOCK_LIMIT = 1000
_BLOB_STATUS: list[tuple[type[BlobError], int]] = [
    (HashMismatch, 422), (CorruptObject, 422), (TooLarge, 413), (ObjectMissing, 404),
    (InvalidOid, 422), (StorageFull, 507), (UploadRaced, 503), (StorageUnavailable, 503),
]


class Refusal(Exception):
    """An error answer: `status <status>` with a message; the session continues."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    command: str
    args: dict[str, str] = field(default_factory=dict)
    has_data: bool = False   # a delimiter followed the arguments: a data section comes next
    drained: bool = True     # the data section (if any) has been read up to its flush


def _blob_status(exc: BlobError) -> int:
    for cls, status in _BLOB_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


class TransferSession:
    """One git-lfs-transfer process: one user, one namespace, one operation."""

    def __init__(self, svc: LfsService, principal: Principal, namespace: str, operation: str,
                 reader: PktReader, writer: PktWriter, webhooks: Webhooks | None = None,
                 say: Callable[[str], None] | None = None):
        self.svc = svc
        # a line for the client's stderr (ssh shows it to the user)
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.webhooks = webhooks  # uploads queue their `lfs` event here
        self.principal = principal
        self.ns = namespace
        self.operation = operation
        self.r = reader
        self.w = writer
        self.versioned = False

    # -- framing -------------------------------------------------------------------------------
    async def _request(self) -> Request | None:
        first = await self.r.read_text(eof_ok=True)
        if first is None:
            return None
        if first is FLUSH or first is DELIM:
            raise ProtocolError("expected a command, got a flush or delimiter packet")
        assert isinstance(first, str)
        req = Request(first)
        while True:
            pkt = await self.r.read_text()
            if pkt is FLUSH:
                return req
            if pkt is DELIM:
                req.has_data, req.drained = True, False
                return req
            assert isinstance(pkt, str)
            if len(req.args) >= MAX_ARGS:
                raise ProtocolError(f"more than {MAX_ARGS} arguments")
            key, _, value = pkt.partition("=")
            req.args.setdefault(key, value)

    async def _drain(self, req: Request) -> None:
        """Skip the rest of a data section (bounded memory: one packet at a time)."""
        while not req.drained:
            pkt = await self.r.read()
            if pkt is FLUSH:
                req.drained = True
            elif pkt is DELIM:
                raise ProtocolError("a second delimiter packet in one message")

    async def _lines(self, req: Request, limit: int) -> list[str]:
        lines: list[str] = []
        too_many = too_long = False
        while not req.drained:
            pkt = await self.r.read_text()
            if pkt is FLUSH:
                req.drained = True
            elif pkt is DELIM:
                raise ProtocolError("a second delimiter packet in one message")
            else:
                assert isinstance(pkt, str)  # not None: without eof_ok, EOF raises
                if len(lines) >= limit:
                    too_many = True  # keep reading to the flush: the stream stays in step
                elif len(pkt) > MAX_LINE:
                    too_long = True
                else:
                    lines.append(pkt)
        if too_many:
            raise Refusal(413, f"too many lines in one request (this server takes at most {limit}); split it")
        if too_long:
            raise Refusal(422, f"a line longer than {MAX_LINE} characters")
        return lines

    def _status(self, status: int, args: Sequence[str] = (), lines: list[str] | None = None) -> None:
        self.w.text(f"status {status}")
        for a in args:
            self.w.text(a)
        if lines is not None:
            self.w.delim()
            for line in lines:
                self.w.text(line)
        self.w.flush()

    def _error(self, status: int, message: str) -> None:
        self._status(status, lines=[message.replace("\n", " ")])

    # -- the session -----------------------------------------------------------------------------
    async def run(self) -> int:
        self.w.text("version=1")
        if self.svc.config.lfs.locking:
            self.w.text("locking")
        self.w.flush()
        await self.w.drain()
        while True:
            req = await self._request()
            if req is None:
                return 0  # the client went away between messages: nothing was in flight
            if req.command == "quit":
                await self._drain(req)
                self._status(200)
                await self.w.drain()
                return 0
            try:
                await self._dispatch(req)
            except Refusal as exc:
                await self._drain(req)
                self._error(exc.status, exc.message)
            except Forbidden as exc:
                await self._drain(req)
                self._error(403, exc.message)
            except BlobError as exc:
                await self._drain(req)
                self._error(_blob_status(exc), exc.message)
            except DatabaseUnavailable as exc:
                await self._drain(req)
                self._error(503, f"{exc}; try again later")
            await self.w.drain()

    async def _dispatch(self, req: Request) -> None:
        verb, _, rest = req.command.partition(" ")
        if verb == "version":
            if rest != "1":
                raise Refusal(400, f"unsupported protocol version {rest[:20]!r}: this server speaks version 1")
            self.versioned = True
            self._status(200)
            return
        if not self.versioned:
            raise Refusal(400, "send `version 1` first")
        handlers = {
            "batch": self._batch, "put-object": self._put, "verify-object": self._verify,
            "get-object": self._get, "lock": self._lock, "list-lock": self._list_locks,
            "list-locks": self._list_locks, "unlock": self._unlock,
        }
        handler = handlers.get(verb)
        if handler is None:
            raise Refusal(400, f"unknown command {verb[:40]!r}")
        await handler(req, rest)

    def _needs(self, operation: str, command: str) -> None:
        if self.operation != operation:
            raise Refusal(400, f"{command} needs a git-lfs-transfer session for {operation}, "
                               f"this one is for {self.operation}")

    @staticmethod
    def _oid(text: str) -> str:
        if not _OID.match(text):
            raise Refusal(422, f"not an LFS object id (64 lowercase hex digits): {text[:80]!r}")
        return text

    @staticmethod
    def _size(req: Request, extra: str = "") -> int:
        text = req.args.get("size", extra)
        if not _SIZE.match(text):
            raise Refusal(400, "size=<bytes> (a non-negative integer) is required")
        return int(text)

    # -- objects -------------------------------------------------------------------------------
    async def _batch(self, req: Request, rest: str) -> None:
        svc = self.svc
        algo = req.args.get("hash-algo", "sha256")
        lines = await self._lines(req, svc.config.lfs.max_batch_objects)
        if algo != "sha256":
            raise Refusal(409, f"unsupported hash algorithm {algo[:40]!r}: this server uses sha256")
        objects: list[tuple[str, int]] = []
        for line in lines:
            words = line.split(" ")
            if len(words) < 2 or not _OID.match(words[0]) or not _SIZE.match(words[1]):
                raise Refusal(422, f"not an `<oid> <size>` line: {line[:160]!r}")
            objects.append((words[0], int(words[1])))
        states = await svc.visible_states(self.ns, [oid for oid, _ in objects])
        svc.stats.batch_requests += 1
        svc.stats.batch_objects += len(objects)
        out = []
        for oid, size in objects:
            state = states.get(oid)
            if self.operation == "download":
                # No per-object errors in this protocol: an object that cannot be served gets no
                # action, and git-lfs reports it as missing.
                ok = (state is not None and state.present and state.status is not Status.CORRUPT
                      and state.size == size)
                out.append(f"{oid} {size} {'download' if ok else 'noop'}")
            else:
                stored = state is not None and state.servable and state.size == size
                out.append(f"{oid} {size} {'noop' if stored else 'upload'}")
        self._status(200, ["hash-algo=sha256"], out)

    async def _body(self, req: Request, size: int) -> AsyncGenerator[bytes, None]:
        """The data section of a put-object, checked against its declared size."""
        got = 0
        while True:
            pkt = await self.r.read()
            if pkt is FLUSH:
                req.drained = True
                break
            if pkt is DELIM:
                raise ProtocolError("a second delimiter packet in one message")
            assert pkt is not None
            got += len(pkt)
            if got > size:
                raise Refusal(400, f"more object data than the declared size={size}")
            yield pkt
        if got != size:
            raise Refusal(400, f"object data ended after {got} bytes; size={size} was declared")

    async def _put(self, req: Request, rest: str) -> None:
        self._needs("upload", "put-object")
        oid = self._oid(rest)
        size = self._size(req)
        if not req.has_data:
            raise Refusal(400, "put-object needs the object's data after a delimiter packet")
        limit = self.svc.config.lfs.max_object_size
        if limit and size > limit:
            raise Refusal(413, f"object larger than this server's limit of {limit} bytes")
        async with contextlib.aclosing(self._body(req, size)) as body:
            await self.svc.receive(self.ns, oid, body)
        if self.webhooks is not None and self.webhooks.targets(self.ns, "lfs"):
            await run_blocking(self.webhooks.emit_sync, "lfs", self.ns, self.principal.name, {"lfs_oids": [oid]})
        self._status(200)

    async def _verify(self, req: Request, rest: str) -> None:
        self._needs("upload", "verify-object")
        oid_text, _, size_text = rest.partition(" ")
        oid = self._oid(oid_text)
        size = self._size(req, size_text)
        try:
            await self.svc.verify_uploaded(self.ns, oid, size)
        except VerifyFailed as exc:
            raise Refusal(exc.status, exc.message) from None
        self._status(200)

    async def _get(self, req: Request, rest: str) -> None:
        self._needs("download", "get-object")
        await self._drain(req)
        oid = self._oid(rest)
        handle = await self.svc.open_download(self.ns, oid, whole=True)
        self._status_open(handle.size)
        sent = 0
        try:
            async with contextlib.aclosing(self.svc.read(handle)) as chunks:
                async for chunk in chunks:
                    self.w.data(chunk)
                    sent += len(chunk)
                    await self.w.drain()
        except BlobError as exc:  # corrupt, or the object storage failed mid-way
            # The status line is gone: the only honest signal left is to stop short, so the
            # client's hash check fails and it keeps nothing.
            self.say(f"lfsserve: LFS object {oid}: {exc.message}: download cut after {sent} of "
                     f"{handle.size} bytes")
            raise SessionAbort() from None
        self.w.flush()
        self.svc.sent(sent)

    def _status_open(self, size: int) -> None:
        self.w.text("status 200")
        self.w.text(f"size={size}")
        self.w.delim()

    # -- locks ---------------------------------------------------------------------------------
    def _locking(self, needed: Permission) -> None:
        if not self.svc.config.lfs.locking:
            raise Refusal(404, "file locking is disabled on this server")
        self.svc.auth.authorize(self.principal, self.ns, needed)

    @staticmethod
    def _lock_args(lock) -> list[str]:
        return [f"id={lock.id}", f"path={lock.path}", f"locked-at={lock.locked_at}", f"ownername={lock.owner}"]

    async def _lock(self, req: Request, rest: str) -> None:
        await self._drain(req)
        self._locking(Permission.WRITE)
        path = req.args.get("path", "")
        if not path or len(path) > MAX_LOCK_PATH:
            raise Refusal(422, f"path=<file path> is required (at most {MAX_LOCK_PATH} characters)")
        try:
            lock = await self.svc.locks.create(self.ns, path, self._owner())
        except LockExists as exc:
            self.w.text("status 409")
            for a in self._lock_args(exc.lock):
                self.w.text(a)
            self.w.delim()
            self.w.text(f"{exc.lock.path} is already locked by {exc.lock.owner}")
            self.w.flush()
            return
        self._status(201, self._lock_args(lock))

    async def _list_locks(self, req: Request, rest: str) -> None:
        await self._drain(req)
        verify = req.command == "list-locks"  # git-lfs's "locks I must respect" before a push
        self._locking(Permission.WRITE if verify else Permission.READ)
        args = req.args
        cursor_text, limit_text = args.get("cursor", ""), args.get("limit", "")
        if (cursor_text and not cursor_text.isdigit()) or (limit_text and not limit_text.isdigit()):
            raise Refusal(422, "cursor and limit must be non-negative integers")
        limit = min(int(limit_text or 0) or DEFAULT_LOCK_LIMIT, MAX_LOCK_LIMIT)
        locks, nxt = await self.svc.locks.list(
            self.ns, path=None if verify else (args.get("path") or None),
            lock_id=None if verify else (args.get("id") or None),
            cursor=int(cursor_text or 0), limit=limit)
        me = self._owner()
        lines = []
        for lk in locks:
            lines += [f"lock {lk.id}", f"path {lk.id} {lk.path}", f"locked-at {lk.id} {lk.locked_at}",
                      f"ownername {lk.id} {lk.owner}"]
            if verify:
                lines.append(f"owner {lk.id} {'ours' if lk.owner == me else 'theirs'}")
        self._status(200, [f"next-cursor={nxt}"] if nxt is not None else [], lines)

    async def _unlock(self, req: Request, rest: str) -> None:
        await self._drain(req)
        self._locking(Permission.WRITE)
        lock_id = rest.strip()
        if not lock_id:
            raise Refusal(400, "unlock needs a lock id")
        force = req.args.get("force", "false") == "true"
        try:
            lock = await self.svc.locks.delete(self.ns, lock_id, owner=None if force else self._owner())
        except PermissionError as exc:
            held = exc.args[0]
            raise Refusal(403, f"{held.path} is locked by {held.owner}; only they can unlock it "
                               "(or unlock with --force)") from None
        if lock is None:
            raise Refusal(404, f"no lock with id {lock_id[:80]!r}")
        self._status(200, self._lock_args(lock))

    def _owner(self) -> str:
        assert self.principal.name is not None
        return self.principal.name


class SessionAbort(Exception):
    """End the session at once, without a flush (the peer must not take the data as complete)."""
