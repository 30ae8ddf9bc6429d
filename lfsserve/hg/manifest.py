"""Flat manifests (v1): one line per file, `path\\0<40 hex>[flags]\\n`, sorted by path.

Flags: `x` executable, `l` symlink (`t` marks a tree-manifest directory, which we refuse).
"""

from __future__ import annotations

import binascii
import re
import threading
from collections import OrderedDict

from .error import CorruptRevlog
from .mdiff import iter_hunks
from .revlog import Revlog

__all__ = [
    "Manifestlog",
    "changed_entries",
    "check_manifest",
    "check_manifest_delta",
    "find_entry",
    "format_manifest",
    "line_aligned",
    "parse_manifest",
]

# one entry as hg writes it: a path, NUL, the file node in lowercase hex, at most one flag
_ENTRY = re.compile(rb"([^\0\n\r]+)\0[0-9a-f]{40}[xl]?")
_ALL_ENTRIES = re.compile(rb"(?:[^\0\n\r]++\0[0-9a-f]{40}+[xl]?+\n)*+")


def check_manifest(text: bytes) -> None:
    """Refuse a flat manifest Mercurial cannot read back (CorruptRevlog naming the first bad line).

    Every line is `path NUL 40-lowercase-hex [x|l]`, the text ends with a newline, and paths are
    strictly ascending (hg's manifest parser refuses unsorted or duplicate entries; flags other
    than one `x` or `l` break hg's readers, `t` is a tree manifest, which lfsserve refuses).
    """
    if text and not text.endswith(b"\n"):
        raise CorruptRevlog("manifest does not end with a newline")
    _check_lines(text, [(0, len(text))])


def _check_lines(text: bytes, windows: list[tuple[int, int]]) -> None:
    """check_manifest's rules on the whole lines text[start:end] of each window (ascending, disjoint).

    All windows are checked for syntax before any for order, so the error names the line a check
    of the whole text would name: the first malformed line, else the first out of order.
    """
    for start, end in windows:
        if _ALL_ENTRIES.fullmatch(text, start, end) is None:
            for line in text[start:end].split(b"\n")[:-1]:
                if _ENTRY.fullmatch(line) is None:
                    raise CorruptRevlog(f"malformed manifest line {line[:80]!r}")
            raise CorruptRevlog("malformed manifest")  # not reached: some line is malformed
    for start, end in windows:
        prev = None
        for line in text[start:end].split(b"\n")[:-1]:
            path = line[:line.index(b"\0")]
            if prev is not None and path <= prev:
                raise CorruptRevlog(f"manifest entries not in sorted order at {path[:80]!r}")
            prev = path


def check_manifest_delta(text: bytes, delta) -> dict[bytes, tuple[bytes, bytes]]:
    """check_manifest(text) for `text` made by applying `delta` to a base that passes check_manifest,
    at a cost proportional to what the delta touches, not to the size of the manifest.

    Returns the entries of the lines the delta touched (a superset of those differing from the
    base; deletions do not appear). The base's lines that `text` keeps whole were valid and in
    order; what may be wrong is on a line the delta wrote into, on a line it joined by cutting
    its base anywhere (hunk edges need not fall on line ends), or between such a line and its
    neighbours. So each hunk's extent in the new text is widened to whole lines (the line holding
    its first byte, through the line holding the byte after its last: that is where the base's
    bytes resume, maybe mid-line), then by one line on each side for the order check.
    """
    if text and not text.endswith(b"\n"):
        raise CorruptRevlog("manifest does not end with a newline")
    n = len(text)
    touched: list[list[int]] = []  # [start, end) of whole lines the delta touched, merged
    shift = 0  # where the base's offsets are in the new text
    for start, end, data in iter_hunks(delta):
        lo = start + shift
        hi = lo + len(data)
        shift += len(data) - (end - start)
        if touched and lo < touched[-1][1]:
            first = touched[-1][0]  # the line holding `lo` is already in the last range
        else:
            # scans stop at the last range's end (a line end): each byte is scanned once overall
            floor = touched[-1][1] - 1 if touched else 0
            first = text.rfind(b"\n", max(floor, 0), lo) + 1 if lo else 0
        last_end = touched[-1][1] if touched else 0
        if hi < n:
            stop = last_end if hi < last_end else text.find(b"\n", hi) + 1
        else:
            stop = n
        if touched and first <= touched[-1][1]:
            touched[-1][1] = max(touched[-1][1], stop)
        else:
            touched.append([first, stop])
    windows: list[tuple[int, int]] = []
    for first, stop in touched:
        after = text.find(b"\n", stop) + 1 if stop < n else n
        if windows and first <= windows[-1][1]:
            windows[-1] = (windows[-1][0], after)
            continue
        # the line before `first`; text[first - 1] and text[windows[-1][1] - 1] are line ends
        floor = windows[-1][1] - 1 if windows else 0
        before = text.rfind(b"\n", floor, first - 1) + 1 if first else 0
        if windows and before <= windows[-1][1]:
            windows[-1] = (windows[-1][0], after)
        else:
            windows.append((before, after))
    _check_lines(text, windows)
    out: dict = {}
    for first, stop in touched:
        _lines_to_entries(memoryview(text)[first:stop], out)
    return out


def line_aligned(base: bytes, delta) -> bool:
    """Whether every hunk of `delta` replaces whole lines of `base` with whole lines.

    Mercurial's own manifest deltas are; hg verify and changegroup emitters (ours included, see
    changed_entries) read a stored delta's fragments as the entries it changed.
    """
    for start, end, data in iter_hunks(delta):
        if start and base[start - 1:start] != b"\n":
            return False
        if end > start and base[end - 1:end] != b"\n":
            return False
        if data and data[-1:] != b"\n":
            return False
    return True


def parse_manifest(text: bytes, name: str = "manifest") -> dict[bytes, tuple[bytes, bytes]]:
    """{path: (file node, flags)}."""
    out = {}
    unhex = binascii.unhexlify
    if text and not text.endswith(b"\n"):
        raise CorruptRevlog(f"{name}: manifest does not end with a newline")
    try:
        for line in text.split(b"\n")[:-1]:
            path, _, rest = line.partition(b"\0")
            out[path] = (unhex(rest[:40]), rest[40:])
    except (binascii.Error, ValueError):
        raise CorruptRevlog(f"{name}: malformed manifest line") from None
    return out


def format_manifest(entries: dict[bytes, tuple[bytes, bytes]]) -> bytes:
    return b"".join(b"%s\0%s%s\n" % (p, n.hex().encode(), f) for p, (n, f) in sorted(entries.items()))


def _lines_to_entries(data: bytes | memoryview, out: dict) -> None:
    unhex = binascii.unhexlify
    for line in bytes(data).split(b"\n"):
        if line:
            path, sep, rest = line.partition(b"\0")
            if sep and len(rest) >= 40:
                out[path] = (unhex(rest[:40]), rest[40:])


def changed_entries(delta: bytes) -> dict[bytes, tuple[bytes, bytes]]:
    """Entries a manifest delta writes (its base's unchanged lines are not included).

    A superset of the entries that differ from the base: a hunk may rewrite unchanged lines.
    Deletions do not appear.
    """
    out: dict = {}
    try:
        for _start, _end, data in iter_hunks(delta):
            _lines_to_entries(data, out)
    except (binascii.Error, ValueError):
        raise CorruptRevlog("malformed manifest line in a manifest delta") from None
    return out


def find_entry(text: bytes, path: bytes) -> tuple[bytes, bytes] | None:
    """(file node, flags) of `path` in a manifest text, by binary search over its sorted lines.

    (A clone asks this for every file of every changeset: scanning 100 KiB manifests each time
    costs seconds where this costs microseconds.)
    """
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi) // 2
        start = text.rfind(b"\n", 0, mid) + 1
        sep = text.find(b"\0", start)
        if sep < 0:
            raise CorruptRevlog("malformed manifest line")
        if text[start:sep] < path:
            end = text.find(b"\n", sep)
            lo = end + 1 if end >= 0 else len(text)
        else:
            hi = start
    if not text.startswith(path + b"\0", lo):
        return None
    start = lo + len(path) + 1
    end = text.find(b"\n", start)
    try:
        if end < 0:
            raise ValueError("no newline")
        return binascii.unhexlify(text[start:start + 40]), text[start + 40:end]
    except (binascii.Error, ValueError):
        raise CorruptRevlog("malformed manifest line") from None


class _TextCache:
    """Manifest texts by manifest node, shared by every Repository of the process. A node hashes
    its text, so an entry never goes stale. Readers ask for the same few manifests over and over
    (web pages: tip, a changeset and its parent; tags: the heads), and rebuilding one walks a
    delta chain of hundreds of patches. Bounded in bytes; a huge manifest is not kept."""

    def __init__(self, max_bytes: int = 32 << 20, max_item: int = 8 << 20):
        self.max_bytes = max_bytes
        self.max_item = max_item
        self._texts: OrderedDict[bytes, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, node: bytes) -> bytes | None:
        with self._lock:
            text = self._texts.get(node)
            if text is not None:
                self._texts.move_to_end(node)
            return text

    def put(self, node: bytes, text: bytes) -> None:
        if len(text) > self.max_item:
            return
        with self._lock:
            if node in self._texts:
                return
            self._texts[node] = text
            self._size += len(text)
            while self._size > self.max_bytes:
                _, old = self._texts.popitem(last=False)
                self._size -= len(old)


_TEXTS = _TextCache()


class Manifestlog:
    """The manifest revlog (`00manifest.i`) and parsed access to its revisions."""

    def __init__(self, revlog: Revlog):
        self.revlog = revlog

    def text(self, node: bytes) -> bytes:
        """The text of manifest `node` (LookupError if this revlog has no such node)."""
        rev = self.revlog.rev(node)
        text = _TEXTS.get(node)
        if text is None:
            text = self.revlog.revision(rev)
            _TEXTS.put(node, text)
        return text

    def read(self, node: bytes) -> dict[bytes, tuple[bytes, bytes]]:
        return parse_manifest(self.text(node), f"{self.revlog.name} revision {self.revlog.rev(node)}")

    def find(self, node: bytes, path: bytes) -> tuple[bytes, bytes] | None:
        """(file node, flags) of `path` in the manifest `node`, without building a dict."""
        try:
            return find_entry(self.text(node), path)
        except CorruptRevlog:
            raise CorruptRevlog(f"{self.revlog.name}: malformed manifest line for {path[:80]!r}") from None
