"""Hand-made changegroups and bundle2 streams for hostile-input tests (fuzzing, bombs, bad pointers).

Real hg cannot be made to send these (a 5,000-digit lfs pointer size, a compressed 2 MiB chunk of
zeros), so the bytes are built here from the formats in `hg help internals.changegroups` and
`internals.bundle2`; the nodes are real hashes so that only the intended defect is wrong.
"""

from __future__ import annotations

import struct
import zlib

import zstandard

from lfsserve.hg.mdiff import trivial_header
from lfsserve.hg.node import NULLID, hash_revision

_I32 = struct.Struct(">i")
_CG03 = struct.Struct(">20s20s20s20s20sH")
LFS_FLAG = 0x2000


def chunk(payload: bytes) -> bytes:
    return _I32.pack(len(payload) + 4) + payload


def revision(text: bytes, link: bytes, flags: int = 0, node: bytes | None = None) -> bytes:
    """A changegroup 03 chunk: a root revision sent as a full text."""
    node = node or hash_revision(text, NULLID, NULLID)
    return chunk(_CG03.pack(node, NULLID, NULLID, NULLID, link, flags) + trivial_header(len(text)) + text)


def changegroup03(path: bytes, filetext: bytes, *, file_flags: int = 0, extra: bytes = b"") -> bytes:
    """One root changeset adding `path` with `filetext` (flagged lfs with `file_flags`), with
    `extra` (encoded extras, e.g. b"topic:x") on its date line."""
    fnode = hash_revision(filetext, NULLID, NULLID)
    manifest = path + b"\0" + fnode.hex().encode() + b"\n"
    mnode = hash_revision(manifest, NULLID, NULLID)
    cs = (mnode.hex().encode() + b"\nTest <t@example.com>\n1700000000 0" + (b" " + extra if extra else b"")
          + b"\n" + path + b"\n\nhostile\n")
    cnode = hash_revision(cs, NULLID, NULLID)
    end = _I32.pack(0)
    return b"".join([
        revision(cs, cnode), end,                       # changelog group
        revision(manifest, cnode), end,                 # manifest group
        end,                                            # 03: no tree manifests
        chunk(path), revision(filetext, cnode, file_flags, fnode), end,
        end,                                            # end of files
    ])


def lfs_pointer(oid: str, size: bytes) -> bytes:
    return b"version https://git-lfs.github.com/spec/v1\noid sha256:" + oid.encode() + b"\nsize " + size + b"\n"


def part(ptype: bytes, payload: bytes, params: list[tuple[bytes, bytes]] = (), piece: int = 1 << 16) -> bytes:
    header = bytes([len(ptype)]) + ptype + struct.pack(">I", 0) + bytes([len(params), 0])
    header += b"".join(bytes([len(k), len(v)]) for k, v in params) + b"".join(k + v for k, v in params)
    out = [_I32.pack(len(header)), header]
    for i in range(0, len(payload), piece):
        out.append(_I32.pack(len(payload[i:i + piece])) + payload[i:i + piece])
    out.append(_I32.pack(0))
    return b"".join(out)


def bundle2(parts: list[bytes], compression: str | None = None) -> bytes:
    """HG20, stream parameters (only Compression), then the parts, compressed as asked (ZS/GZ/UN)."""
    body = b"".join(parts) + _I32.pack(0)
    params = b"" if compression is None else b"Compression=" + compression.encode()
    if compression == "ZS":
        body = zstandard.ZstdCompressor().compress(body)
    elif compression == "GZ":
        body = zlib.compress(body)
    return b"HG20" + _I32.pack(len(params)) + params + body


def changegroup_bundle(cg: bytes, compression: str | None = None) -> bytes:
    return bundle2([part(b"CHANGEGROUP", cg, [(b"version", b"03")])], compression)
