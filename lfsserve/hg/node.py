"""Node ids: 20-byte SHA-1 hashes naming revisions, and the null revision."""

from __future__ import annotations

import hashlib

__all__ = ["NULLID", "NULLREV", "hash_revision"]

NULLID = b"\0" * 20
NULLREV = -1


def hash_revision(text, p1: bytes, p2: bytes) -> bytes:
    """The node of a revision: sha1 of the sorted parent nodes then the full text."""
    if p1 > p2:
        p1, p2 = p2, p1
    h = hashlib.sha1(p1)
    h.update(p2)
    h.update(text)
    return h.digest()


