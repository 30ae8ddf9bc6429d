"""Filelogs: the revisions of one tracked file, with optional copy metadata and lfs pointers.

A file text may start with a metadata block `\\1\\n key: value\\n ... \\1\\n` (copy source and
its file node); a text that itself starts with `\\1\\n` is stored behind an empty block. With
the lfs extension, a revision flagged REVIDX_EXTSTORED stores a Git LFS pointer instead of the
content (copy information then travels in the pointer as x-hg-copy / x-hg-copyrev).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .error import CorruptRevlog
from .revlog import REVIDX_EXTSTORED, Revlog
from .store import audit_path

__all__ = [
    "Filelog",
    "LfsPointer",
    "LfsPointerError",
    "check_meta",
    "pack_meta",
    "parse_lfs_pointer",
    "parse_meta",
]

META_MARK = b"\x01\n"


def parse_meta(text: bytes) -> tuple[dict[bytes, bytes], int]:
    """(metadata, offset of the file data) of a filelog text."""
    if not text.startswith(META_MARK):
        return {}, 0
    end = text.find(META_MARK, 2)
    if end < 0:
        return {}, 0
    meta = {}
    for line in text[2:end].split(b"\n"):
        if line:
            k, _, v = line.partition(b": ")
            meta[k] = v
    return meta, end + 2


_HEX_NODE = re.compile(rb"[0-9a-f]{40}\Z")


def check_meta(text: bytes) -> tuple[bytes, bytes] | None:
    """Refuse a file text whose metadata block Mercurial cannot read (CorruptRevlog saying why).

    hg's reader needs the closing `\\1\\n`, a `: ` on every line (as `splitlines` cuts them), and a
    `copy` to come with a `copyrev` naming a node in hex, not the null node. Returns the copy
    source (path, node), which the caller must find in the repository.
    """
    if not text.startswith(META_MARK):
        return None
    end = text.find(META_MARK, 2)
    if end < 0:
        raise CorruptRevlog("file metadata block is not terminated")
    meta = {}
    for line in text[2:end].splitlines():
        k, sep, v = line.partition(b": ")
        if not sep:
            raise CorruptRevlog(f"malformed file metadata line {line[:60]!r}")
        meta[k] = v
    if b"copy" not in meta:
        return None
    copyrev = meta.get(b"copyrev", b"")
    if not _HEX_NODE.match(copyrev) or copyrev == b"0" * 40:
        raise CorruptRevlog("file metadata names a copy source without a valid copyrev")
    audit_path(meta[b"copy"])  # a copy source is a tracked path too
    return meta[b"copy"], bytes.fromhex(copyrev.decode("ascii"))


def pack_meta(meta: dict[bytes, bytes], data: bytes) -> bytes:
    if not meta and not data.startswith(META_MARK):
        return data
    return META_MARK + b"".join(b"%s: %s\n" % (k, meta[k]) for k in sorted(meta)) + META_MARK + data


class LfsPointerError(ValueError):
    pass


_LFS_VERSIONS = (b"https://git-lfs.github.com/spec/v1",)
_KEY = re.compile(rb"[a-z0-9.-]+\Z")
_OID = re.compile(rb"sha256:[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class LfsPointer:
    oid: str  # hex sha256
    size: int
    extra: dict

    @property
    def copy_source(self) -> tuple[bytes, bytes] | None:
        src = self.extra.get(b"x-hg-copy")
        rev = self.extra.get(b"x-hg-copyrev")
        if src and rev:
            try:
                return src, bytes.fromhex(rev.decode("ascii"))
            except ValueError:
                return None
        return None


def parse_lfs_pointer(text: bytes) -> LfsPointer:
    """Parse a Git LFS pointer as hg's lfs extension stores it; LfsPointerError if malformed."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(b" ")
        if not sep or not _KEY.match(key):
            raise LfsPointerError(f"malformed lfs pointer line {line[:60]!r}")
        fields[key] = value
    if fields.get(b"version") not in _LFS_VERSIONS:
        raise LfsPointerError("lfs pointer has no known version line")
    oid = fields.get(b"oid", b"")
    if not _OID.match(oid):
        raise LfsPointerError("lfs pointer oid is not sha256:<64 lowercase hex>")
    size = fields.get(b"size", b"")
    # bytes.isdigit() is ASCII-only; the length bound keeps int() within its digit limit and the
    # size within Git LFS's int64
    if not size.isdigit() or len(size) > 19 or int(size) >= 1 << 63:
        raise LfsPointerError("lfs pointer size is not a number below 2^63")
    extra = {k: v for k, v in fields.items() if k not in (b"version", b"oid", b"size")}
    return LfsPointer(oid[7:].decode("ascii"), int(size), extra)


class Filelog(Revlog):
    def __init__(self, *args, path: bytes = b"", **kwargs):
        super().__init__(*args, **kwargs)
        self.path = path

    def is_lfs(self, rev: int) -> bool:
        return bool(self.flags(rev) & REVIDX_EXTSTORED)

    def lfs_pointer(self, rev: int) -> LfsPointer:
        try:
            return parse_lfs_pointer(self.revision(rev))
        except LfsPointerError as exc:
            raise CorruptRevlog(f"{self.name}: revision {rev}: {exc}") from None

    def read(self, node: bytes) -> bytes:
        """The file data without copy metadata (for lfs revisions: the pointer text)."""
        rev = self.rev(node)
        text = self.revision(rev)
        if self.is_lfs(rev):
            return text
        _, offset = parse_meta(text)
        return text[offset:]

    def copy_info(self, node: bytes) -> tuple[bytes, bytes] | None:
        rev = self.rev(node)
        if self.is_lfs(rev):
            return self.lfs_pointer(rev).copy_source
        text = self.revision(rev)
        meta, _ = parse_meta(text)
        if b"copy" in meta and b"copyrev" in meta:
            try:
                return meta[b"copy"], bytes.fromhex(meta[b"copyrev"].decode("ascii"))
            except ValueError:
                raise CorruptRevlog(f"{self.name}: revision {rev}: malformed copyrev") from None
        return None

