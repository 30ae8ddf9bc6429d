"""Wire protocol v1 over HTTP, the transport part: where arguments travel and how they are encoded.

Arguments come from the query string (old clients), from `X-HgArg-1..N` headers joined in order
(the normal case: one url-encoded `k=v&k=v` string cut into header-sized pieces), or from the
first `X-HgArgs-Post` bytes of a POST body. `X-HgProto-1` says which media types and compression
engines the client accepts. `batch` packs several commands into one argument with `:`-escapes.
Everything here is pure parsing: no I/O, no aiohttp.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "MAX_ARG_HEADERS",
    "BadRequest",
    "ClientProto",
    "batch_escape",
    "batch_unescape",
    "decode_batch",
    "decode_nodes",
    "encode_nodes",
    "header_args",
    "parse_client_proto",
    "parse_qs_bytes",
]

# Arguments from headers: more pieces than this is not a Mercurial client.
MAX_ARG_HEADERS = 4096


class BadRequest(ValueError):
    """The request is not valid wire protocol; the message says what is wrong (answered 400)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def parse_qs_bytes(data: bytes) -> dict[str, bytes]:
    """Parse `k=v&k=v` (application/x-www-form-urlencoded) keeping values as raw bytes.

    urllib.parse.parse_qs would decode values as text; wire arguments may be any bytes. A
    repeated key is an error: no command takes a list that way.
    """
    out: dict[str, bytes] = {}
    if not data:
        return out
    for item in data.split(b"&"):
        if not item:
            continue
        key, _, value = item.partition(b"=")
        k = urllib.parse.unquote_to_bytes(key.replace(b"+", b" "))
        try:
            name = k.decode("ascii")
        except UnicodeDecodeError:
            raise BadRequest(f"argument name is not ASCII: {k[:40]!r}")
        if name in out:
            raise BadRequest(f"argument {name!r} given twice")
        out[name] = urllib.parse.unquote_to_bytes(value.replace(b"+", b" "))
    return out


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp's CIMultiDict is case-insensitive already; plain dicts (tests) are searched too.
    value = headers.get(name)
    if value is None and not hasattr(headers, "getall"):
        lname = name.lower()
        for k, v in headers.items():
            if k.lower() == lname:
                return v
    return value


def header_args(headers: Mapping[str, str]) -> bytes:
    """The argument string carried by X-HgArg-1, X-HgArg-2, ... up to the first missing one."""
    pieces = []
    for i in range(1, MAX_ARG_HEADERS + 2):
        v = _header(headers, f"X-HgArg-{i}")
        if v is None:
            break
        if i > MAX_ARG_HEADERS:
            raise BadRequest(f"more than {MAX_ARG_HEADERS} X-HgArg headers")
        pieces.append(v)
    # Header values reach us as str (latin-1 / surrogate-escaped bytes); the payload is ASCII.
    return "".join(pieces).encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class ClientProto:
    """What `X-HgProto-1` says: media types (`0.1`, `0.2`), compression engines, other flags."""

    media_types: tuple[str, ...] = ("0.1",)
    compression: tuple[str, ...] = ()
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def accepts_02(self) -> bool:
        return "0.2" in self.media_types


def parse_client_proto(headers: Mapping[str, str]) -> ClientProto:
    """Parse X-HgProto-1 (and continuation headers X-HgProto-2...), tolerant of unknown tokens."""
    pieces = []
    for i in range(1, 64):
        v = _header(headers, f"X-HgProto-{i}")
        if v is None:
            break
        pieces.append(v)
    if not pieces:
        return ClientProto()
    media: list[str] = []
    comp: tuple[str, ...] = ()
    flags = set()
    for token in " ".join(pieces).split():
        if token.startswith("comp="):
            comp = tuple(e for e in token[5:].split(",") if e)
        elif token[:1].isdigit():
            media.append(token)
        else:
            flags.add(token)
    return ClientProto(tuple(media) or ("0.1",), comp, frozenset(flags))


# -- batch -----------------------------------------------------------------------------------------

_ESCAPES = ((b":", b":c"), (b",", b":o"), (b";", b":s"), (b"=", b":e"))


def batch_escape(data: bytes) -> bytes:
    for raw, esc in _ESCAPES:       # ':' first, so the escapes themselves survive
        data = data.replace(raw, esc)
    return data


def batch_unescape(data: bytes) -> bytes:
    for raw, esc in reversed(_ESCAPES):  # ':' last
        data = data.replace(esc, raw)
    return data


def decode_batch(cmds: bytes) -> list[tuple[str, dict[str, bytes]]]:
    """`cmd k=v,k=v;cmd ...` -> [(cmd, {k: v})], names and values unescaped."""
    out: list[tuple[str, dict[str, bytes]]] = []
    if not cmds:
        return out
    for item in cmds.split(b";"):
        op, _, rest = item.partition(b" ")
        if not op:
            raise BadRequest("batch: empty command name")
        try:
            name = batch_unescape(op).decode("ascii")
        except UnicodeDecodeError:
            raise BadRequest("batch: command name is not ASCII")
        args: dict[str, bytes] = {}
        if rest:
            for pair in rest.split(b","):
                if not pair:
                    continue
                k, eq, v = pair.partition(b"=")
                if not eq:
                    raise BadRequest(f"batch: argument without '=' in command {name!r}")
                try:
                    key = batch_unescape(k).decode("ascii")
                except UnicodeDecodeError:
                    raise BadRequest(f"batch: argument name is not ASCII in command {name!r}")
                if key in args:
                    raise BadRequest(f"batch: argument {key!r} given twice to {name!r}")
                args[key] = batch_unescape(v)
        out.append((name, args))
    return out


# -- node lists ------------------------------------------------------------------------------------

# Most nodes one argument may list (known, branches, heads...). hg's discovery asks about a few
# hundred at a time; the bound keeps what one request may make the server hold and walk small.
MAX_NODES = 100_000
# Most `top-bottom` pairs one `between` request may list (legacy discovery sends a handful).
MAX_PAIRS = 10_000


def decode_nodes(value: bytes, what: str = "nodes", limit: int = MAX_NODES) -> list[bytes]:
    """A space-separated list of 40-hex nodes -> 20-byte nodes; at most `limit` of them."""
    # checked on the raw size first, so an oversized argument is never split into a huge list
    if len(value) > limit * 41 or value.count(b" ") >= limit:
        raise BadRequest(f"{what}: too many nodes in one request (at most {limit})")
    out = []
    for word in value.split():
        if len(word) != 40:
            raise BadRequest(f"{what}: {word[:50].decode('latin-1')!r} is not a 40-digit hex node")
        try:
            out.append(bytes.fromhex(word.decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            raise BadRequest(f"{what}: {word[:50].decode('latin-1')!r} is not a 40-digit hex node")
    return out


def encode_nodes(nodes: list[bytes]) -> bytes:
    return b" ".join(n.hex().encode("ascii") for n in nodes)
