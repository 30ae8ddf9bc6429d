"""Minimal bundle files around a raw changegroup, so real `hg unbundle` can apply our output.

HG10UN is `HG10UN` followed by a changegroup 01 stream. For 02 and 03 we write the smallest
HG20 bundle: no stream parameters, one mandatory CHANGEGROUP part with a `version` parameter,
its payload in chunks, then the end-of-stream marker (`hg help internals.bundle2`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

_I32 = struct.Struct(">i")


def hg10un(changegroup: Iterable[bytes]) -> bytes:
    return b"HG10UN" + b"".join(changegroup)


def hg20(changegroup: Iterable[bytes], version: str, *, lfs: bool = False) -> bytes:
    params = [(b"version", version.encode())]
    ptype = b"CHANGEGROUP"
    header = struct.pack(">B", len(ptype)) + ptype + struct.pack(">I", 0)
    header += struct.pack(">BB", len(params), 0)
    for k, v in params:
        header += struct.pack(">BB", len(k), len(v))
    for k, v in params:
        header += k + v
    out = [b"HG20", _I32.pack(0), _I32.pack(len(header)), header]
    payload = b"".join(changegroup)
    for i in range(0, len(payload), 1 << 16):
        piece = payload[i:i + (1 << 16)]
        out.append(_I32.pack(len(piece)) + piece)
    out.append(_I32.pack(0))  # end of part payload
    out.append(_I32.pack(0))  # end of stream
    return b"".join(out)
