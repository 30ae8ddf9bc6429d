"""The changelog: one revision per changeset (manifest node, user, date, extras, files, description)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .error import CorruptRevlog
from .revlog import Revlog

__all__ = ["Changelog", "ChangesetEntry", "check_changeset", "decode_extra", "encode_extra", "extra_from_text",
           "parse_changeset", "topic_from_text"]


_SIMPLE_ESCAPES = {
    ord("\\"): b"\\", ord("'"): b"'", ord('"'): b'"', ord("a"): b"\a", ord("b"): b"\b",
    ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("v"): b"\v",
    ord("\n"): b"",
}
_OCTAL = b"01234567"
_HEX = b"0123456789abcdefABCDEF"


def _unescape_bytes(value: bytes) -> bytes:
    """The byte-string escapes hg's extras use (Python's `string_escape`), strictly.

    Raises ValueError on a malformed `\\x` escape or a trailing backslash, as hg's own decoder
    does; an unknown escape such as `\\q` stays as it is.
    """
    out = bytearray()
    i, n = 0, len(value)
    while i < n:
        j = value.find(b"\\", i)
        if j < 0:
            out += value[i:]
            break
        out += value[i:j]
        if j + 1 >= n:
            raise ValueError("trailing \\ in string")
        c = value[j + 1]
        if c in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[c]
            i = j + 2
        elif c in _OCTAL:
            k = j + 1
            while k < n and k < j + 4 and value[k] in _OCTAL:
                k += 1
            out.append(int(value[j + 1:k], 8) & 0xFF)
            i = k
        elif c == ord("x"):
            digits = value[j + 2:j + 4]
            if len(digits) != 2 or any(d not in _HEX for d in digits):
                raise ValueError(f"invalid \\x escape at position {j}")
            out.append(int(digits, 16))
            i = j + 4
        else:
            out += value[j:j + 2]
            i = j + 2
    return bytes(out)


def _unescape(value: bytes) -> bytes:
    if b"\\" not in value:
        return value
    # extras escape \\, \n, \r and NUL (as \0), the rest is Python's string_escape subset
    if b"\\0" in value:
        value = value.replace(b"\\\\", b"\\\\\n").replace(b"\\0", b"\0").replace(b"\n", b"")
    return _unescape_bytes(value)


def _escape(value: bytes) -> bytes:
    return (value.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
            .replace(b"\0", b"\\0"))


def decode_extra(text: bytes, *, strict: bool = False) -> dict[bytes, bytes]:
    """The extras of a changeset. Lenient by default (a reader skips what it cannot decode);
    `strict` raises CorruptRevlog where Mercurial's own reader would fail."""
    extra = {b"branch": b"default"}
    for item in text.split(b"\0"):
        if item:
            try:
                item = _unescape(item)
            except ValueError as exc:
                if strict:
                    raise CorruptRevlog(f"extra field {item[:60]!r} has a bad escape ({exc})") from None
                continue
            key, sep, value = item.partition(b":")
            if sep:
                extra[key] = value
            elif strict:
                raise CorruptRevlog(f"extra field {item[:60]!r} has no ':'")
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


def _offsets(text: bytes) -> tuple[int, int, int, int] | None:
    """Ends of the manifest, user and date lines, and where the files end: as Mercurial splits."""
    nl1 = text.find(b"\n")
    nl2 = text.find(b"\n", nl1 + 1) if nl1 >= 0 else -1
    nl3 = text.find(b"\n", nl2 + 1) if nl2 >= 0 else -1
    if nl3 < 0:
        return None
    if text[nl3 + 1:nl3 + 2] == b"\n":
        return nl1, nl2, nl3, nl3
    double = text.find(b"\n\n", nl3 + 1)
    if double < 0:
        return None
    return nl1, nl2, nl3, double


_DATE = re.compile(rb"(-?[0-9]{1,12}(?:\.[0-9]{1,12})?) (-?[0-9]{1,12})(?: (.*))?", re.DOTALL)
_NODE_HEX = re.compile(rb"[0-9a-f]{40}")
_MAX_TIME = 0x7FFFFFFF  # hg refuses dates beyond 32 bits ("date exceeds 32 bits")


def check_changeset(text: bytes) -> None:
    """Refuse a changeset text Mercurial cannot read back (CorruptRevlog saying why).

    At least as strict as hg's changelog reader and unbundle: the manifest node is 40 lowercase
    hex digits, the date a finite number of seconds and an integer offset, both within what hg
    itself can write (32 bits), each extra item decodes and has a `:`, a branch name is not
    empty and holds no NUL, CR or LF, and file names are not empty and hold no NUL or CR. The
    user and description are bytes hg stores as they are.
    """
    offs = _offsets(text)
    if offs is None:
        raise CorruptRevlog("malformed changeset entry (missing lines)")
    nl1, nl2, nl3, double = offs
    if not _NODE_HEX.fullmatch(text, 0, nl1):
        raise CorruptRevlog(f"malformed manifest node {text[:min(nl1, 60)]!r}")
    m = _DATE.fullmatch(text, nl2 + 1, nl3)
    if m is None:
        raise CorruptRevlog(f"malformed date {text[nl2 + 1:min(nl3, nl2 + 61)]!r}")
    when, tz = float(m.group(1)), int(m.group(2))
    if not -_MAX_TIME - 1 <= when <= _MAX_TIME:
        raise CorruptRevlog(f"date exceeds 32 bits: {m.group(1).decode()}")
    if not -_MAX_TIME - 1 <= tz <= _MAX_TIME:
        raise CorruptRevlog(f"impossible time zone offset: {tz}")
    if m.group(3) is not None:
        extra = decode_extra(m.group(3), strict=True)
        branch = extra[b"branch"]
        if not branch or any(c in branch for c in b"\0\n\r"):
            raise CorruptRevlog(f"invalid branch name {branch[:60]!r}")
    if double != nl3:
        for f in text[nl3 + 1:double].split(b"\n"):
            if not f or b"\0" in f or b"\r" in f:
                raise CorruptRevlog(f"invalid file name {f[:60]!r} in changeset")


def parse_changeset(text: bytes, name: str = "changeset") -> ChangesetEntry:
    offs = _offsets(text)
    if offs is None:
        raise CorruptRevlog(f"{name}: malformed changeset entry")
    nl1, nl2, nl3, double = offs
    try:
        manifest = bytes.fromhex(text[:nl1].decode("ascii"))
        if len(manifest) != 20:
            raise ValueError
    except ValueError:
        raise CorruptRevlog(f"{name}: malformed manifest node in changeset") from None
    parts = text[nl2 + 1:nl3].split(b" ", 2)
    try:
        when = int(float(parts[0]))
    except (ValueError, OverflowError):
        raise CorruptRevlog(f"{name}: malformed date in changeset") from None
    try:
        tz = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        tz = 0  # as hg: tools wrote odd offsets; read them as UTC
    extra = decode_extra(parts[2]) if len(parts) > 2 else {b"branch": b"default"}
    files = text[nl3 + 1:double].split(b"\n") if double != nl3 else []
    return ChangesetEntry(manifest, text[nl1 + 1:nl2], when, tz, extra, files, text[double + 2:])


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

    def topic_info(self, rev: int) -> tuple[bytes, bytes]:
        return topic_from_text(self.revision(rev))


def extra_from_text(text: bytes) -> dict[bytes, bytes]:
    """The extras of a changeset's text (empty when its date line has none)."""
    head = text.split(b"\n\n", 1)[0]
    start = head.find(b"\n", head.find(b"\n") + 1) + 1
    end = head.find(b"\n", start)
    parts = (head[start:] if end < 0 else head[start:end]).split(b" ", 2)
    return decode_extra(parts[2]) if len(parts) == 3 else {}


def topic_from_text(text: bytes) -> tuple[bytes, bytes]:
    """(topic namespace, topic) of a changeset's text (hg-evolve's topic extension keeps them in
    the extras `topic-namespace` and `topic`): (b"none", b"") without a topic."""
    extra = extra_from_text(text)
    topic = extra.get(b"topic", b"")
    return (extra.get(b"topic-namespace", b"none") if topic else b"none"), topic
