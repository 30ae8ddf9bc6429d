"""Bookmarks: `<hex node> <name>` lines in `.hg/bookmarks` (`.hg/store/bookmarks` with bookmarksinstore)."""

from __future__ import annotations

__all__ = ["parse_bookmarks", "format_bookmarks"]


def parse_bookmarks(data: bytes) -> dict[bytes, bytes]:
    marks = {}
    for line in data.splitlines():
        line = line.strip()
        if not line:
            continue
        hexnode, sep, name = line.partition(b" ")
        if not sep or len(hexnode) != 40:
            continue  # hg warns about such lines and ignores them
        try:
            node = bytes.fromhex(hexnode.decode("ascii"))
        except ValueError:
            continue
        marks[name] = node
    return marks


def format_bookmarks(marks: dict[bytes, bytes]) -> bytes:
    return b"".join(b"%s %s\n" % (marks[name].hex().encode(), name) for name in sorted(marks))


