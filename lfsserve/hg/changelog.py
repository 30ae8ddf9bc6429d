"""The changelog: one revision per changeset (manifest node, user, date, extras, files, description)."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

from .error import CorruptRevlog
from .revlog import Revlog

__all__ = ["Changelog", "ChangesetEntry", "parse_changeset", "decode_extra", "encode_extra"]


def _unescape(value: bytes) -> bytes:
    if b"\\" not in value:
        return value
    # extras escape \\, \n, \r and NUL (as \0), the rest is Python's string_escape subset
    if b"\\0" in value:
        value = value.replace(b"\\\\", b"\\\\\n").replace(b"\\0", b"\0").replace(b"\n", b"")
    return codecs.escape_decode(value)[0]


def _escape(value: bytes) -> bytes:
    return (value.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
            .replace(b"\0", b"\\0"))


def decode_extra(text: bytes) -> dict[bytes, bytes]:
    extra = {b"branch": b"default"}
    for item in text.split(b"\0"):
        if item:
            key, sep, value = _unescape(item).partition(b":")
            if sep:
                extra[key] = value
    return extra


def encode_extra(extra: dict[bytes, bytes]) -> bytes:
    return b"\0".join(_escape(b"%s:%s" % (k, extra[k])) for k in sorted(extra))


@dataclass(frozen=True)
class ChangesetEntry:
    manifest: bytes  # manifest node
    user: bytes
    time: int
    tz: int  # seconds west of UTC, as hg stores it
    extra: dict = field(hash=False)
    files: list = field(hash=False)
    description: bytes = b""

    @property
    def branch(self) -> bytes:
        return self.extra.get(b"branch", b"default")

    @property
    def closes_branch(self) -> bool:
        return b"close" in self.extra


def parse_changeset(text: bytes, name: str = "changeset") -> ChangesetEntry:
    head, sep, desc = text.partition(b"\n\n")
    lines = head.split(b"\n")
    if len(lines) < 3:
        raise CorruptRevlog(f"{name}: malformed changeset entry")
    try:
        manifest = bytes.fromhex(lines[0].decode("ascii"))
        if len(manifest) != 20:
            raise ValueError
    except ValueError:
        raise CorruptRevlog(f"{name}: malformed manifest node in changeset") from None
    parts = lines[2].split(b" ", 2)
    try:
        when = int(float(parts[0]))
        tz = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise CorruptRevlog(f"{name}: malformed date in changeset") from None
    extra = decode_extra(parts[2]) if len(parts) > 2 else {b"branch": b"default"}
    return ChangesetEntry(manifest, lines[1], when, tz, extra, lines[3:], desc)


class Changelog(Revlog):
    def read(self, rev_or_node) -> ChangesetEntry:
        rev = rev_or_node if isinstance(rev_or_node, int) else self.rev(rev_or_node)
        return parse_changeset(self.revision(rev), f"{self.name} revision {rev}")

    def manifest_node(self, rev: int) -> bytes:
        text = self.revision(rev)
        try:
            return bytes.fromhex(text[:40].decode("ascii"))
        except ValueError:
            raise CorruptRevlog(f"{self.name} revision {rev}: malformed manifest node") from None

    def branch_info(self, rev: int) -> tuple[bytes, bool]:
        """(branch name, closes the branch) of a changeset, without parsing all of it."""
        text = self.revision(rev)
        head = text.split(b"\n\n", 1)[0]
        start = head.find(b"\n", head.find(b"\n") + 1) + 1
        end = head.find(b"\n", start)
        date = head[start:] if end < 0 else head[start:end]
        parts = date.split(b" ", 2)
        if len(parts) < 3:
            return b"default", False
        extra = decode_extra(parts[2])
        return extra.get(b"branch", b"default"), b"close" in extra
