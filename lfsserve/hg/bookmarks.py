"""Bookmarks: `<hex node> <name>` lines in `.hg/bookmarks` (`.hg/store/bookmarks` with bookmarksinstore)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .transaction import Transaction

__all__ = ["BookmarkStore", "format_bookmarks", "parse_bookmarks"]


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


class BookmarkStore:
    """The bookmarks file of one repository, and the changes of an open transaction to it."""

    def __init__(self, path: Path, location: bytes):
        self.path = path
        self.location = location  # where the transaction writes it: b"" (store) or b"plain" (.hg)
        self._marks: dict[bytes, bytes] | None = None
        self._changed = False

    def read(self) -> dict[bytes, bytes]:
        """Every bookmark (name: node), as the open transaction sees them. Do not modify."""
        if self._marks is None:
            try:
                self._marks = parse_bookmarks(self.path.read_bytes())
            except FileNotFoundError:
                self._marks = {}
        return self._marks

    def change(self, changes: dict[bytes, bytes | None]) -> None:
        """Set (node) or delete (None) bookmarks; written by `write` when the transaction commits."""
        marks = dict(self.read())
        for name, node in changes.items():
            if node is None:
                marks.pop(name, None)
            else:
                marks[name] = node
        self._marks = marks
        self._changed = True

    def write(self, tr: Transaction) -> None:
        if self._changed:
            tr.replace_file(b"bookmarks", format_bookmarks(self._marks or {}), location=self.location)
            self._changed = False

    def pending_data(self) -> bytes | None:
        """The bookmarks file the open transaction will write, or None if it changes none."""
        return format_bookmarks(self._marks or {}) if self._changed else None

    def invalidate(self) -> None:
        """Forget what was read and changed (after a commit or a rollback)."""
        self._marks = None
        self._changed = False
