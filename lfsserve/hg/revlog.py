"""Revlogs: Mercurial's append-only revision storage (version 1 index, inline or split `.i`/`.d`).

Reading: the index is parsed in bulk and cached process-wide, keyed by the index file's
(path, size, mtime_ns, inode); a cached index is immutable and shared by threads. A revlog only
ever grows between transactions (rollback truncates), so a changed key means "parse again".
Revision data is read with `pread` and decompressed (none, zlib, zstd); full texts are rebuilt
from delta chains, with a small per-instance cache of recent full texts so reading revisions in
order applies one delta each.

Writing (`RevlogWriter`) happens inside a transaction; see transaction.py for the journal.
"""

from __future__ import annotations

import collections
import os
import struct
import threading
import zlib
from collections.abc import Iterator

import zstandard

from .error import CorruptRevlog, IntegrityError, LookupError, UnsupportedRequirement
from .mdiff import PatchError, patch
from .node import NULLID, NULLREV, hash_revision

__all__ = [
    "FLAG_GENERALDELTA",
    "FLAG_INLINE_DATA",
    "INLINE_THRESHOLD",
    "REVIDX_EXTSTORED",
    "REVIDX_KNOWN",
    "Compressor",
    "Index",
    "Revlog",
    "RevlogWriter",
    "decompress",
    "load_index",
]

# index header (first 4 bytes of the first entry)
REVLOGV1 = 1
FLAG_INLINE_DATA = 1 << 16
FLAG_GENERALDELTA = 1 << 17
_KNOWN_HEADER_FLAGS = FLAG_INLINE_DATA | FLAG_GENERALDELTA

# per-revision flags
REVIDX_ISCENSORED = 1 << 15
REVIDX_ELLIPSIS = 1 << 14
REVIDX_EXTSTORED = 1 << 13  # lfs: the stored text is a pointer, the node hashes the real content
REVIDX_KNOWN = REVIDX_EXTSTORED
_FLAG_NAMES = {REVIDX_ISCENSORED: "censored", REVIDX_ELLIPSIS: "ellipsis",
               1 << 12: "has-copies-info", 1 << 11: "has-meta"}

# Past this many bytes of revision data an inline revlog is split into .i + .d (as hg does).
INLINE_THRESHOLD = 131072
# Longest delta chain we create (hg's default for sparse revlogs).
MAX_CHAIN_LENGTH = 1000

ENTRY = struct.Struct(">Qiiiiii20s12x")
ENTRY_SIZE = ENTRY.size  # 64
# entry tuple fields
E_OFFSET_FLAGS, E_CLEN, E_ULEN, E_BASE, E_LINK, E_P1, E_P2, E_NODE = range(8)


def flag_names(flags: int) -> str:
    return ", ".join(_FLAG_NAMES.get(1 << b, f"0x{1 << b:04x}") for b in range(16) if flags & (1 << b))


# --- compression --------------------------------------------------------------------------------

_local = threading.local()


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "zstd_d", None)
    if d is None:
        d = _local.zstd_d = zstandard.ZstdDecompressor()
    return d


def decompress(chunk) -> bytes:
    """Decode one stored chunk according to its first byte (see `hg help internals.revlogs`)."""
    if not chunk:
        return b""
    t = chunk[0]
    if t == 0x78:  # 'x': zlib
        try:
            return zlib.decompress(chunk)
        except zlib.error as exc:
            raise CorruptRevlog(f"zlib data is corrupt: {exc}") from None
    if t == 0x28:  # '(': zstd frame magic
        d = _zstd_decompressor()
        try:
            return d.decompress(chunk)
        except zstandard.ZstdError:
            # frames written without their content size need the streaming API
            try:
                return d.decompressobj().decompress(bytes(chunk))
            except zstandard.ZstdError as exc:
                raise CorruptRevlog(f"zstd data is corrupt: {exc}") from None
    if t == 0x75:  # 'u': stored as is
        return bytes(chunk[1:])
    if t == 0:  # raw data that happens to start with NUL
        return bytes(chunk)
    raise CorruptRevlog(f"unknown compression type {bytes(chunk[:1])!r}")


_ZSTD_STEP = 1 << 20  # input fed to the streaming zstd compressor at a time


class Compressor:
    """Chunk compression as hg writes it: small or incompressible data stays raw."""

    def __init__(self, engine: str):
        self.engine = engine
        if engine == "zstd":
            self._zc = zstandard.ZstdCompressor(level=3)

    def compress(self, data: bytes) -> bytes:
        if not data:
            return b""
        n = len(data)
        packed = None
        if self.engine == "zstd" and n > 1_000_000:
            # as hg does for large texts: one-shot compress() allocates the worst-case output
            # (about the input's size) up front; the streaming compressor holds only its output
            z = self._zc.compressobj(size=n)
            pieces, size = [], 0
            with memoryview(data) as view:
                for i in range(0, n, _ZSTD_STEP):
                    pieces.append(z.compress(view[i:i + _ZSTD_STEP]))
                    size += len(pieces[-1])
                    if size >= n:  # incompressible: stored raw below, stop paying for it
                        break
                else:
                    pieces.append(z.flush())
                    packed = b"".join(pieces)
            del pieces
        elif self.engine == "zstd" and n >= 50:
            packed = self._zc.compress(data)
        elif self.engine == "zlib" and n >= 44:
            packed = zlib.compress(data)
        if packed is not None and len(packed) < n:
            return packed
        packed = None  # incompressible: let it go before the raw copy is made
        if data[0] == 0:
            return data
        return b"u" + data


# --- index --------------------------------------------------------------------------------------

class Index:
    """A parsed revlog index. Immutable once built; shared between threads."""

    __slots__ = (
        "__weakref__",
        "_nodemap",
        "consumed",
        "derived",
        "entries",
        "generaldelta",
        "inline",
        "inline_data",
        "key",
        "last_raw",
        "positions",
        "prefix_derived",
        "trailing",
        "version",
    )

    def __init__(self, key, header: int, entries: list, positions: list[int] | None, inline_data: bytes | None,
                 consumed: int, trailing: int):
        self.key = key
        self.version = header & 0xFFFF
        self.inline = bool(header & FLAG_INLINE_DATA)
        self.generaldelta = bool(header & FLAG_GENERALDELTA)
        self.entries = entries
        self.positions = positions  # inline: where each revision's chunk starts in the .i file
        self.inline_data = inline_data  # inline: the .i file contents
        self.consumed = consumed  # bytes of the .i file that form whole revisions
        self.trailing = trailing  # bytes after the last whole revision (an append in progress)
        self._nodemap: dict[bytes, int] | None = None
        self.last_raw = b""  # split revlogs: the last whole entry as stored (to extend safely)
        # values computed from this exact index (parents lists, phases...), shared like the index
        self.derived: dict = {}
        # per-revision lists that stay true when revisions are appended (branch of each
        # changeset): inherited by the next index of the same file when its first revisions are
        # this index's. Owners extend a copy, never the inherited list itself.
        self.prefix_derived: dict = {}

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def nodemap(self) -> dict[bytes, int]:
        m = self._nodemap
        if m is None:
            m = {e[E_NODE]: r for r, e in enumerate(self.entries)}
            m[NULLID] = NULLREV
            self._nodemap = m
        return m


def parse_index(data: bytes, key=None, name: str = "revlog", default_header: int = 0) -> Index:
    """Parse the bytes of a `.i` file."""
    if not data:
        return Index(key, default_header, [], [] if default_header & FLAG_INLINE_DATA else None,
                     b"" if default_header & FLAG_INLINE_DATA else None, 0, 0)
    if len(data) < 4:
        raise CorruptRevlog(f"{name}: index file is truncated")
    header = struct.unpack_from(">I", data)[0]
    version = header & 0xFFFF
    if version != REVLOGV1:
        raise UnsupportedRequirement([f"revlog version {version}"], where=name)
    if header & ~(_KNOWN_HEADER_FLAGS | 0xFFFF):
        raise UnsupportedRequirement([f"revlog header flags 0x{header >> 16:x}"], where=name)
    if header & FLAG_INLINE_DATA:
        entries = []
        positions = []
        pos = 0
        n = len(data)
        unpack = ENTRY.unpack_from
        while pos + ENTRY_SIZE <= n:
            e = unpack(data, pos)
            end = pos + ENTRY_SIZE + e[E_CLEN]
            if e[E_CLEN] < 0 or end > n:
                break  # the data of this entry is not (yet) all there
            entries.append(e)
            positions.append(pos + ENTRY_SIZE)
            pos = end
        return Index(key, header, _fix_first(entries), positions, data, pos, n - pos)
    whole = len(data) - len(data) % ENTRY_SIZE
    entries = list(ENTRY.iter_unpack(memoryview(data)[:whole]))
    idx = Index(key, header, _fix_first(entries), None, None, whole, len(data) - whole)
    idx.last_raw = bytes(data[whole - ENTRY_SIZE:whole]) if whole else b""
    return idx


def _extend_index(old: Index, key, tail: bytes) -> Index | None:
    """`old` plus the entries in `tail` (the file from old.consumed - 64 on), if the file only grew."""
    if tail[:ENTRY_SIZE] != old.last_raw:
        return None  # rewritten (rolled back and written again): parse everything
    body = memoryview(tail)[ENTRY_SIZE:]
    whole = len(body) - len(body) % ENTRY_SIZE
    header = (FLAG_INLINE_DATA if old.inline else 0) | (FLAG_GENERALDELTA if old.generaldelta else 0) | old.version
    new = list(ENTRY.iter_unpack(body[:whole]))
    idx = Index(key, header, old.entries + new, None, None, old.consumed + whole, len(body) - whole)
    idx.last_raw = bytes(body[whole - ENTRY_SIZE:whole]) if whole else old.last_raw
    idx.prefix_derived = dict(old.prefix_derived)
    m = old._nodemap
    if m is not None:
        m = dict(m)
        base = len(old.entries)
        for i, e in enumerate(new):
            m[e[E_NODE]] = base + i
        idx._nodemap = m
    return idx


def _fix_first(entries: list) -> list:
    # The first entry's offset field holds the header; its data always starts at 0.
    if entries:
        e = entries[0]
        entries[0] = (e[E_OFFSET_FLAGS] & 0xFFFF, *e[1:])
    return entries


class _IndexCache:
    """Process-wide cache of parsed indexes, bounded by entry count (LRU)."""

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[str, Index] = collections.OrderedDict()

    def get(self, path: str, key) -> Index | None:
        with self._lock:
            idx = self._items.get(path)
            if idx is None or idx.key != key:
                return None
            self._items.move_to_end(path)
            return idx

    def peek(self, path: str) -> Index | None:
        with self._lock:
            return self._items.get(path)

    def put(self, path: str, idx: Index) -> None:
        with self._lock:
            self._items[path] = idx
            self._items.move_to_end(path)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


INDEX_CACHE = _IndexCache()


def load_index(path: str, name: str, default_header: int) -> Index:
    """The parsed index of the `.i` file at `path` (an empty index when the file does not exist)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - `with fh` below; only the open may raise FileNotFoundError
    except FileNotFoundError:
        return parse_index(b"", None, name, default_header)
    with fh:
        st = os.fstat(fh.fileno())
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        idx = INDEX_CACHE.get(path, key)
        if idx is not None:
            return idx
        old = INDEX_CACHE.peek(path)
        if (old is not None and old.key is not None and not old.inline and old.entries
                and old.key[2] == st.st_ino and st.st_size > old.consumed):
            # the usual case after a push: parse only what was appended
            fh.seek(old.consumed - ENTRY_SIZE)
            idx = _extend_index(old, key, fh.read(st.st_size - old.consumed + ENTRY_SIZE))
            if idx is not None:
                INDEX_CACHE.put(path, idx)
                return idx
            fh.seek(0)
        data = fh.read(st.st_size)
    idx = parse_index(data, key, name, default_header)
    if not idx.inline:
        idx.inline_data = None
    old = INDEX_CACHE.peek(path)
    if old is not None and old.prefix_derived and old.entries == idx.entries[:len(old.entries)]:
        idx.prefix_derived = dict(old.prefix_derived)  # an inline revlog that grew
    INDEX_CACHE.put(path, idx)
    return idx


# --- reading ------------------------------------------------------------------------------------

class _TextCache:
    """A few recent full texts, bounded in count and bytes."""

    def __init__(self, max_items: int = 24, max_bytes: int = 16 << 20):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.items: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self.size = 0

    def get(self, rev: int):
        t = self.items.get(rev)
        if t is not None:
            self.items.move_to_end(rev)
        return t

    def put(self, rev: int, text: bytes) -> None:
        if len(text) > self.max_bytes // 2 or rev in self.items:
            return
        self.items[rev] = text
        self.size += len(text)
        while len(self.items) > self.max_items or self.size > self.max_bytes:
            _, old = self.items.popitem(last=False)
            self.size -= len(old)


class Revlog:
    """Read access to one revlog. One instance per request (not shared between threads)."""

    def __init__(self, index_path: str, data_path: str, name: str, *, default_header: int = 0,
                 index: Index | None = None):
        self.index_path = index_path
        self.data_path = data_path
        self.name = name  # store-relative index file name, for messages
        self.default_header = default_header
        self.index = index if index is not None else load_index(index_path, name, default_header)
        self._data_fd: int | None = None
        self._texts = _TextCache()

    # -- lifecycle
    def close(self) -> None:
        if self._data_fd is not None:
            os.close(self._data_fd)
            self._data_fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    # -- index accessors
    def __len__(self) -> int:
        return len(self.index.entries)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.index.entries)))

    @property
    def entries(self) -> list:
        return self.index.entries

    def node(self, rev: int) -> bytes:
        if rev == NULLREV:
            return NULLID
        try:
            return self.index.entries[rev][E_NODE]
        except IndexError:
            raise LookupError(str(rev).encode(), self.name, "no such revision") from None

    def rev(self, node: bytes) -> int:
        try:
            return self.index.nodemap[node]
        except KeyError:
            raise LookupError(node, self.name) from None

    def get_rev(self, node: bytes) -> int | None:
        return self.index.nodemap.get(node)


    def parentrevs(self, rev: int) -> tuple[int, int]:
        e = self.index.entries[rev]
        return e[E_P1], e[E_P2]

    def parents(self, node: bytes) -> tuple[bytes, bytes]:
        e = self.index.entries[self.rev(node)]
        return self.node(e[E_P1]), self.node(e[E_P2])

    def linkrev(self, rev: int) -> int:
        return self.index.entries[rev][E_LINK]

    def flags(self, rev: int) -> int:
        return self.index.entries[rev][E_OFFSET_FLAGS] & 0xFFFF

    def start(self, rev: int) -> int:
        return self.index.entries[rev][E_OFFSET_FLAGS] >> 16

    def length(self, rev: int) -> int:
        return self.index.entries[rev][E_CLEN]

    def end(self, rev: int) -> int:
        e = self.index.entries[rev]
        return (e[E_OFFSET_FLAGS] >> 16) + e[E_CLEN]


    def deltaparent(self, rev: int) -> int:
        """The revision the stored chunk of `rev` is a delta against (NULLREV: a full text)."""
        base = self.index.entries[rev][E_BASE]
        if base == rev:
            return NULLREV
        return base if self.index.generaldelta else rev - 1


    def heads(self) -> list[int]:
        """Revisions without children (excluding nullrev)."""
        n = len(self)
        ischild = bytearray(n)
        for e in self.index.entries:
            if e[E_P1] >= 0:
                ischild[e[E_P1]] = 1
            if e[E_P2] >= 0:
                ischild[e[E_P2]] = 1
        return [r for r in range(n) if not ischild[r]]

    # -- data access
    def _fd(self) -> int:
        if self._data_fd is None:
            try:
                self._data_fd = os.open(self.data_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                raise CorruptRevlog(f"{self.name}: data file {os.path.basename(self.data_path)} "
                                    f"is missing") from None
        return self._data_fd

    def _read_raw(self, start: int, length: int, rev: int):
        """Bytes [start, start+length) of the data file (split revlogs)."""
        data = os.pread(self._fd(), length, start)
        if len(data) != length:
            raise CorruptRevlog(f"{self.name}: data of revision {rev} is truncated "
                                f"(wanted {length} bytes at {start}, got {len(data)})")
        return data

    def _raw_chunks(self, revs: list[int]) -> list:
        """The stored (compressed) chunks of `revs` (ascending), reading contiguous spans at once."""
        idx = self.index
        entries = idx.entries
        if idx.inline:
            data = idx.inline_data
            positions = idx.positions
            assert data is not None and positions is not None  # an inline index always has both
            mv = memoryview(data)
            return [mv[positions[r]:positions[r] + entries[r][E_CLEN]] for r in revs]
        out = []
        i = 0
        n = len(revs)
        while i < n:
            # grow a span while the gaps stay small relative to what we need
            first = revs[i]
            start = entries[first][E_OFFSET_FLAGS] >> 16
            end = start + entries[first][E_CLEN]
            useful = entries[first][E_CLEN]
            j = i + 1
            while j < n:
                e = entries[revs[j]]
                s = e[E_OFFSET_FLAGS] >> 16
                new_end = s + e[E_CLEN]
                if s < end or (new_end - start) > 2 * (useful + e[E_CLEN]) + 65536:
                    break
                end = new_end
                useful += e[E_CLEN]
                j += 1
            buf = memoryview(self._read_raw(start, end - start, first))
            for r in revs[i:j]:
                e = entries[r]
                s = (e[E_OFFSET_FLAGS] >> 16) - start
                out.append(buf[s:s + e[E_CLEN]])
            i = j
        return out

    def raw_chunk(self, rev: int):
        """The stored chunk of `rev`, still compressed."""
        return self._raw_chunks([rev])[0]

    def chunk(self, rev: int) -> bytes:
        """The decompressed stored chunk of `rev` (a full text or a delta, see deltaparent)."""
        try:
            return decompress(self.raw_chunk(rev))
        except CorruptRevlog as exc:
            raise CorruptRevlog(f"{self.name}: revision {rev}: {exc.message}") from None

    def _check_flags(self, rev: int) -> int:
        flags = self.index.entries[rev][E_OFFSET_FLAGS] & 0xFFFF
        if flags & ~REVIDX_KNOWN:
            raise CorruptRevlog(
                f"{self.name}: revision {rev} has flags lfsserve does not support "
                f"({flag_names(flags & ~REVIDX_KNOWN)})")
        return flags

    def revision(self, rev_or_node, verify: bool = False) -> bytes:
        """The raw text of a revision (for lfs revisions: the pointer)."""
        rev = rev_or_node if isinstance(rev_or_node, int) else self.rev(rev_or_node)
        if rev == NULLREV:
            return b""
        if rev < 0 or rev >= len(self.index.entries):
            raise LookupError(str(rev).encode(), self.name, "no such revision")
        self._check_flags(rev)
        text = self._texts.get(rev)
        if text is None:
            text = self._rebuild(rev)
            self._texts.put(rev, text)
        if verify:
            self.check_hash(rev, text)
        return text

    def _rebuild(self, rev: int) -> bytes:
        # walk back the chain until a cached text or a full text
        entries = self.index.entries
        gd = self.index.generaldelta
        cache = self._texts.items
        chain = []
        base_text = None
        r = rev
        while True:
            t = cache.get(r)
            if t is not None:
                base_text = t
                break
            chain.append(r)
            b = entries[r][E_BASE]
            if b == r:
                break
            r = b if gd else r - 1
        chain.reverse()
        try:
            raw = self._raw_chunks(chain)
            if base_text is None:
                text = decompress(raw[0])
                raw = raw[1:]
            else:
                text = base_text
            for chunk in raw:
                text = patch(text, decompress(chunk))
        except PatchError as exc:
            raise CorruptRevlog(f"{self.name}: cannot rebuild revision {rev}: {exc}") from None
        except CorruptRevlog as exc:
            raise CorruptRevlog(f"{self.name}: revision {rev}: {exc.message}") from None
        if len(text) != entries[rev][E_ULEN]:
            raise CorruptRevlog(f"{self.name}: revision {rev} rebuilt to {len(text)} bytes, "
                                f"the index says {entries[rev][E_ULEN]}")
        return text

    def check_hash(self, rev: int, text: bytes) -> None:
        if self.flags(rev) & REVIDX_EXTSTORED:
            return  # the node hashes the real content, which lives in the lfs store
        e = self.index.entries[rev]
        p1, p2 = self.node(e[E_P1]), self.node(e[E_P2])
        if hash_revision(text, p1, p2) != e[E_NODE]:
            raise IntegrityError(f"{self.name}: integrity check failed on revision {rev} "
                                 f"({e[E_NODE].hex()[:12]})")


# --- writing ------------------------------------------------------------------------------------

class RevlogWriter:
    """Appends revisions to one revlog inside a transaction.

    Revisions of filelogs and the manifest are appended to their files as they come (nobody
    refers to them until the changelog does). With `delay=True` (the changelog) nothing becomes
    visible before `finalize()`: the revlog is split first if it is inline (hg 7 never keeps an
    inline changelog either), data goes to the .d file at once, and index entries wait in memory
    until `finalize()` appends them in one write.
    """

    def __init__(self, revlog: Revlog, tr, *, index_name: bytes, data_name: bytes, compression: str,
                 sparse: bool, create_header: int, delay: bool = False, on_new_file=None):
        self.rl = revlog
        self.tr = tr
        self.index_name = index_name  # store-relative (unencoded) names, for the journal
        self.data_name = data_name
        self.display_name = index_name.decode("utf-8", "replace")  # for messages
        self.compressor = Compressor(compression)
        self.sparse = sparse
        self.delay = delay
        self.on_new_file = on_new_file  # called with a store-relative name of each created file
        idx = revlog.index
        self.old_count = len(idx.entries)
        self.entries = list(idx.entries)
        if not self.entries and not os.path.exists(revlog.index_path):
            header = create_header
            self.created = True
        else:
            header = ((FLAG_INLINE_DATA if idx.inline else 0) | (FLAG_GENERALDELTA if idx.generaldelta else 0)
                      | idx.version)
            if not self.entries:
                header = create_header if os.path.getsize(revlog.index_path) == 0 else header
            self.created = False
        self.header = header
        self.inline = bool(header & FLAG_INLINE_DATA)
        self.generaldelta = bool(header & FLAG_GENERALDELTA)
        self.nodemap = dict(idx.nodemap) if self.entries else {NULLID: NULLREV}
        self.texts = _TextCache(max_items=32, max_bytes=32 << 20)
        self.data_end = revlog.end(len(idx.entries) - 1) if idx.entries else 0
        self._chain_cache: dict[int, tuple[int, int]] = {}  # rev -> (chain length, compressed chain size)
        self._pending_index: list[bytes] = []  # delayed split revlog: entries not yet written
        self._ifd: int | None = None
        self._dfd: int | None = None
        self._inline_size = idx.consumed if idx.inline else 0  # .i bytes (inline)
        self._inline_pos: dict[int, int] = {}
        self._started = False
        self.added: list[int] = []

    # -- file handling
    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        rl = self.rl
        tr = self.tr
        isize = os.path.getsize(rl.index_path) if os.path.exists(rl.index_path) else 0
        consumed = self.rl.index.consumed if self.entries else 0
        if isize != consumed and self.entries:
            # leftovers of an interrupted append that no journal rolled back: drop them
            isize = consumed
        tr.add(self.index_name, isize)
        if self.created:
            d = os.path.dirname(rl.index_path)
            os.makedirs(d, exist_ok=True)
            if self.on_new_file:
                self.on_new_file(self.index_name)
        if self.inline:
            self._ifd = os.open(rl.index_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.ftruncate(self._ifd, isize)
            self._inline_size = isize
            if self.delay:
                # Like hg 7, never keep a changelog inline: split it now (same revisions, other
                # layout), so new entries can wait in memory while their data goes to the .d.
                self._split_now()
        else:
            dsize = self.data_end
            exists = os.path.exists(rl.data_path)
            tr.add(self.data_name, dsize if exists else 0)
            if not exists and self.on_new_file:
                self.on_new_file(self.data_name)
            self._dfd = os.open(rl.data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.ftruncate(self._dfd, dsize)
            if not self.delay:
                self._ifd = os.open(rl.index_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                os.ftruncate(self._ifd, isize)

    def close(self) -> None:
        for name in ("_ifd", "_dfd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    # -- reading (old and new revisions)
    def __len__(self) -> int:
        return len(self.entries)

    def node(self, rev: int) -> bytes:
        return NULLID if rev == NULLREV else self.entries[rev][E_NODE]

    def rev(self, node: bytes) -> int | None:
        return self.nodemap.get(node)

    def _new_chunk(self, rev: int) -> bytes:
        e = self.entries[rev]
        fd = self._ifd if self.inline else self._dfd
        assert fd is not None  # opened by _start() before any revision was added
        if self.inline:
            data = os.pread(fd, e[E_CLEN], self._inline_pos[rev])
        else:
            data = os.pread(fd, e[E_CLEN], e[E_OFFSET_FLAGS] >> 16)
        if len(data) != e[E_CLEN]:
            raise CorruptRevlog(f"{self.display_name}: cannot read back revision {rev}")
        return decompress(data)

    def revision(self, rev: int) -> bytes:
        if rev == NULLREV:
            return b""
        if rev < self.old_count:
            return self.rl.revision(rev)
        t = self.texts.get(rev)
        if t is not None:
            return t
        # rebuild from the chain (new revisions only reach old ones through their bases)
        chain = []
        text: bytes | None
        r = rev
        while True:
            if r < self.old_count:
                text = self.rl.revision(r)
                break
            t = self.texts.get(r)
            if t is not None:
                text = t
                break
            chain.append(r)
            b = self.entries[r][E_BASE]
            if b == r:
                text = None
                break
            r = b if self.generaldelta else r - 1
        for r in reversed(chain):
            chunk = self._new_chunk(r)
            text = chunk if text is None else patch(text, chunk)
        assert text is not None  # the chain ends at a full text, an old revision or a cached one
        self.texts.put(rev, text)
        return text

    def _chain_info(self, rev: int) -> tuple[int, int]:
        """(chain length, sum of compressed chunk sizes along the chain) of `rev`."""
        got = self._chain_cache.get(rev)
        if got is not None:
            return got
        entries = self.entries
        length = 0
        size = 0
        r = rev
        stack = []
        while True:
            got = self._chain_cache.get(r)
            if got is not None:
                length, size = got
                break
            stack.append(r)
            b = entries[r][E_BASE]
            if b == r:
                break
            r = b if self.generaldelta else r - 1
        first = True
        for r in reversed(stack):
            if first and entries[r][E_BASE] == r and length == 0 and size == 0:
                length, size = 0, entries[r][E_CLEN]
            else:
                length, size = length + 1, size + entries[r][E_CLEN]
            first = False
            self._chain_cache[r] = (length, size)
        return length, size

    # -- adding
    def add(self, node: bytes, p1: bytes, p2: bytes, linkrev: int, flags: int, *,
            text: bytes | None = None, delta_base: int | None = None, delta: bytes | None = None,
            textlen: int | None = None) -> int:
        """Append one revision; returns its rev. The caller has checked the node.

        Give `text` (the full raw text), or `delta_base` + `delta` (and ideally `text` too, when
        the caller had to build it anyway). A delta whose base is in this revlog is stored as it
        came when that keeps the chain reasonable; otherwise a fresh delta or a full text is stored.
        """
        self._start()
        p1r = self.nodemap.get(p1)
        p2r = self.nodemap.get(p2)
        if p1r is None or p2r is None:
            raise LookupError(p1 if p1r is None else p2, self.display_name, "unknown parent")
        rev = len(self.entries)
        if text is None:
            assert delta_base is not None and delta is not None, "give text, or delta_base and delta"
            text = patch(self.revision(delta_base), delta)
        base, stored = self._choose(rev, text, flags, p1r, p2r, delta_base, delta)
        chunk = self.compressor.compress(stored)
        del stored
        if self.inline and not self.delay and self.data_end + len(chunk) >= INLINE_THRESHOLD:
            # The revlog outgrows inline storage with this revision (hg splits it once the data
            # reaches the threshold). Split what is there first (small), then write this chunk
            # split: splitting afterwards would read a big chunk back into memory.
            self._split_now()
        offset = self.data_end
        entry = ((offset << 16) | flags, len(chunk), len(text), base, linkrev, p1r, p2r, node)
        packed = ENTRY.pack(*entry)
        if rev == 0:
            packed = struct.pack(">I", self.header) + packed[4:]
        ifd, dfd = self._ifd, self._dfd
        if self.inline:
            assert ifd is not None  # opened by _start()
            pos = self._inline_size
            os.pwritev(ifd, [packed, chunk], pos)  # no concatenated copy of a big chunk
            self._inline_pos[rev] = pos + ENTRY_SIZE
            self._inline_size = pos + ENTRY_SIZE + len(chunk)
        else:
            assert dfd is not None  # opened by _start()
            os.pwrite(dfd, chunk, offset)
            if self.delay:
                self._pending_index.append(packed)
            else:
                assert ifd is not None  # opened by _start() unless delayed
                os.pwrite(ifd, packed, rev * ENTRY_SIZE)
        self.data_end = offset + len(chunk)
        self.entries.append(entry)
        self.nodemap[node] = rev
        self.texts.put(rev, text)
        self.added.append(rev)
        return rev

    def _choose(self, rev, text, flags, p1r, p2r, delta_base, delta) -> tuple[int, bytes]:
        """(base field, bytes to store). base == rev means a full text."""
        textlen = len(text)
        candidates = []
        if flags & REVIDX_EXTSTORED:
            return rev, text  # like hg: no deltas for revisions whose raw text is not the content
        if self.generaldelta:
            if delta_base is not None and delta_base != NULLREV and delta is not None:
                candidates.append((delta_base, delta))
            for p in (p1r, p2r):
                if p != NULLREV and p != delta_base:
                    candidates.append((p, None))
        else:
            prev = rev - 1
            if prev >= 0:
                if delta_base == prev and delta is not None:
                    candidates.append((prev, delta))
                else:
                    candidates.append((prev, None))
        for base, d in candidates:
            if base >= len(self.entries) or self.entries[base][E_OFFSET_FLAGS] & REVIDX_EXTSTORED:
                continue
            if d is None:
                from .mdiff import textdiff
                d = textdiff(self.revision(base), text)
            if len(d) > textlen:
                continue
            length, size = self._chain_info(base)
            if length + 1 > MAX_CHAIN_LENGTH:
                continue
            # bound the work of rebuilding: the chunks along the chain must stay within 2x the
            # text (estimated with the uncompressed delta, which only overestimates)
            if size + len(d) > 2 * max(textlen, 1):
                continue
            if not self.sparse:
                dist = self.data_end - (self.entries[self._chain_start(base)][E_OFFSET_FLAGS] >> 16)
                if dist + len(d) > 4 * max(textlen, 1) and dist > (1 << 20):
                    continue
            return (base if self.generaldelta else self._chain_start(base)), d
        return rev, text

    def _chain_start(self, rev: int) -> int:
        entries = self.entries
        r = rev
        while entries[r][E_BASE] != r:
            r = entries[r][E_BASE] if self.generaldelta else r - 1
        return r

    # -- inline -> split
    def _split_images(self) -> tuple[bytes, bytes]:
        """(data file, index file) contents of this revlog in split form."""
        fd = self._ifd
        assert fd is not None  # only an inline revlog being written is split
        size = self._inline_size
        content = os.pread(fd, size, 0)
        if len(content) != size:
            raise CorruptRevlog(f"{self.display_name}: short read while splitting")
        data_parts = []
        index_parts = []
        pos = 0
        header = self.header & ~FLAG_INLINE_DATA
        for rev in range(len(self.entries)):
            raw = content[pos:pos + ENTRY_SIZE]
            clen = struct.unpack_from(">i", raw, 8)[0]
            if rev == 0:
                raw = struct.pack(">I", header) + raw[4:]
            index_parts.append(raw)
            data_parts.append(content[pos + ENTRY_SIZE:pos + ENTRY_SIZE + clen])
            pos += ENTRY_SIZE + clen
        if pos != size:
            raise CorruptRevlog(f"{self.display_name}: inline data does not add up while splitting")
        return b"".join(data_parts), b"".join(index_parts)

    def _split_now(self) -> None:
        """Convert this inline revlog into .i + .d, journaled so a rollback restores the inline file."""
        rl = self.rl
        tr = self.tr
        fd = self._ifd
        assert fd is not None  # opened by _start()
        tr.addbackup(self.index_name, for_offset=True)
        data, index = self._split_images()
        tr.add(self.data_name, 0)
        if self.on_new_file:
            self.on_new_file(self.data_name)
        with open(rl.data_path, "wb") as f:
            f.write(data)
        tmp_name = self.index_name + b".s"
        tr.registertmp(tmp_name)
        tmp_path = rl.index_path + ".s"
        with open(tmp_path, "wb") as f:
            f.write(index)
        os.close(fd)
        os.replace(tmp_path, rl.index_path)
        self._switch_to_split()
        self._ifd = os.open(rl.index_path, os.O_RDWR | os.O_CLOEXEC)

    def _switch_to_split(self) -> None:
        self.header &= ~FLAG_INLINE_DATA
        self.inline = False
        self._dfd = os.open(self.rl.data_path, os.O_RDWR | os.O_CLOEXEC)
        self._inline_pos = {}

    def write_pending_index(self, path: str) -> bool:
        """Write to `path` the index this revlog will have after finalize() (hg's `<radix>.i.a`,
        which hg reads under HG_PENDING), copying the committed part in chunks; False when no
        revision waits (nothing written)."""
        if not (self._started and self.delay and self._pending_index):
            return False
        left = self.old_count * ENTRY_SIZE
        with open(path, "wb") as out:
            if left:
                with open(self.rl.index_path, "rb") as src:
                    while left:
                        chunk = src.read(min(left, 1 << 20))
                        if not chunk:
                            raise CorruptRevlog(f"{self.display_name}: index shorter than its entries")
                        out.write(chunk)
                        left -= len(chunk)
            out.write(b"".join(self._pending_index))
        return True

    def finalize(self) -> None:
        """Make delayed revisions visible (the changelog, at the very end of a transaction)."""
        if self._started and self.delay and self._pending_index:
            fd = os.open(self.rl.index_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                # one write: a concurrent reader sees all the new entries or none of them
                os.pwrite(fd, b"".join(self._pending_index), self.old_count * ENTRY_SIZE)
            finally:
                os.close(fd)
            self._pending_index = []
        self.close()
