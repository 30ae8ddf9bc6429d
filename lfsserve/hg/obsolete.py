"""Obsolescence markers: `.hg/store/obsstore` in the two formats Mercurial writes, and what the
markers mean for which changesets are served.

A marker says that a changeset (the predecessor) was rewritten into zero or more successors
(zero: pruned). It is a tuple, as Mercurial keeps it, so equal markers compare equal whatever the
format they were read from:

    (predecessor, successors, flags, metadata, (seconds, tz offset in seconds), parents or None)

The file starts with one version byte, then markers one after the other (`hg help
internals.obsolescence` and mercurial/obsolete.py describe both layouts):

- version 0: `>BIB20s` (successor count, metadata size, flags, predecessor), the successors, then
  the metadata as `key:value` strings joined by NUL; the date and the predecessor's parents travel
  in the metadata (`date`, `p0`/`p1`/`p2`).
- version 1: `>IdhHBBB` (total size, seconds, tz in minutes, flags, successor count, parent count
  with 3 meaning "not recorded", metadata count), the predecessor, successors and parents (20
  bytes, or 32 with the sha256 flag), one (key size, value size) byte pair per metadata entry,
  then the keys and values.

Parsing checks every size against the data it has (a pushed marker part is untrusted); a bad one
is an Abort in hg's words, "parsing obsolete marker: ...".
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .error import Abort
from .node import NULLID

__all__ = [
    "DEFAULT_FORMAT",
    "FORMATS",
    "Marker",
    "MarkerError",
    "ObsStore",
    "decode_markers",
    "encode_markers",
    "load",
    "obsolete_revs",
    "sorted_markers",
]

Marker = tuple[bytes, tuple[bytes, ...], int, tuple[tuple[bytes, bytes], ...], tuple[float, int],
               tuple[bytes, ...] | None]

FORMATS = (0, 1)
DEFAULT_FORMAT = 1  # what hg writes in a new obsstore
USING_SHA256 = 2    # flag: 32-byte node ids

_FM0 = struct.Struct(">BIB20s")
_FM1 = struct.Struct(">IdhHBBB")
_FM1_NO_PARENTS = 3


class MarkerError(Abort):
    """Marker data Mercurial would not read."""

    def __init__(self, what: str):
        super().__init__(f"parsing obsolete marker: {what}")


def _fm0_meta(data: bytes) -> dict[bytes, bytes]:
    meta = {}
    for item in data.split(b"\0"):
        if item:
            key, sep, value = item.partition(b":")
            if not sep:
                raise MarkerError(f"metadata entry without ':' ({item[:40]!r})")
            meta[key] = value
    return meta


def _read_fm0(data: bytes, off: int, stop: int) -> Iterator[Marker]:
    while off < stop:
        if off + _FM0.size > stop:
            raise MarkerError(f"truncated marker at byte {off}")
        numsuc, mdsize, flags, prec = _FM0.unpack_from(data, off)
        off += _FM0.size
        end = off + 20 * numsuc
        if end > stop:
            raise MarkerError(f"truncated marker at byte {off}: {numsuc} successors")
        sucs = tuple(data[o:o + 20] for o in range(off, end, 20))
        off = end
        raw = data[off:off + mdsize]
        if len(raw) != mdsize or off + mdsize > stop:
            raise MarkerError(f"metadata is too short, {mdsize} bytes expected, got {min(len(raw), stop - off)}")
        off += mdsize
        meta = _fm0_meta(raw)
        try:
            when, tz = meta.pop(b"date", b"0 0").split(b" ")
            date = (float(when), int(tz))
        except ValueError:
            date = (0.0, 0)
        parents: tuple[bytes, ...] | None = None
        raw_parents: tuple[bytes | None, ...] | None = None
        if b"p2" in meta:
            raw_parents = (meta.pop(b"p1", None), meta.pop(b"p2", None))
        elif b"p1" in meta:
            raw_parents = (meta.pop(b"p1", None),)
        elif b"p0" in meta:
            meta.pop(b"p0")
            raw_parents = ()
        if raw_parents is not None:
            try:
                got = tuple(bytes.fromhex(p.decode("ascii")) for p in raw_parents if p is not None)
                parents = got if len(got) == len(raw_parents) and all(len(p) == 20 for p in got) else None
            except (ValueError, UnicodeDecodeError):
                parents = None  # as hg: parent data that is not node ids is dropped
        yield (prec, sucs, flags, tuple(sorted(meta.items())), date, parents)


def _read_fm1(data: bytes, off: int, stop: int) -> Iterator[Marker]:
    while off < stop:
        if off + _FM1.size > stop:
            raise MarkerError(f"truncated marker at byte {off}")
        total, secs, tz, flags, numsuc, numpar, nummeta = _FM1.unpack_from(data, off)
        size = 32 if flags & USING_SHA256 else 20
        if numpar > _FM1_NO_PARENTS:
            raise MarkerError(f"marker at byte {off} has {numpar} parents")
        nodes = 1 + numsuc + (numpar if numpar != _FM1_NO_PARENTS else 0)
        o = off + _FM1.size
        meta_at = o + size * nodes
        values_at = meta_at + 2 * nummeta
        if values_at > stop:
            raise MarkerError(f"truncated marker at byte {off}")
        pairs = data[meta_at:values_at]
        expected = values_at - off + sum(pairs)
        if total != expected or off + total > stop:
            raise MarkerError(f"marker at byte {off} says it has {total} bytes, its fields make {expected}"
                              + (" (truncated)" if off + expected > stop else ""))
        ids = [data[o + i * size:o + (i + 1) * size] for i in range(nodes)]
        prec, sucs = ids[0], tuple(ids[1:1 + numsuc])
        parents = None if numpar == _FM1_NO_PARENTS else tuple(ids[1 + numsuc:])
        meta = []
        v = values_at
        for i in range(nummeta):
            klen, vlen = pairs[2 * i], pairs[2 * i + 1]
            meta.append((data[v:v + klen], data[v + klen:v + klen + vlen]))
            v += klen + vlen
        off += total
        yield (prec, sucs, flags, tuple(meta), (secs, tz * 60), parents)


def decode_markers(data: bytes) -> tuple[int, list[Marker]]:
    """(format version, markers) of obsstore contents or an `obsmarkers` bundle2 part."""
    if not data:
        return DEFAULT_FORMAT, []
    version = data[0]
    if version == 0:
        markers = list(_read_fm0(data, 1, len(data)))
    elif version == 1:
        markers = list(_read_fm1(data, 1, len(data)))
    else:
        raise MarkerError(f"unknown version {version}")
    for m in markers:
        if NULLID in m[1]:
            raise Abort("bad obsolescence marker detected: invalid successors nullid")
    return version, markers


def _encode_fm0(m: Marker) -> bytes:
    prec, sucs, flags, meta_items, date, parents = m
    if flags & USING_SHA256:
        raise Abort("cannot handle sha256 with old obsstore format")
    meta = dict(meta_items)
    meta[b"date"] = b"%s %d" % (repr(float(date[0])).encode("ascii"), date[1])
    if parents is not None:
        if not parents:
            meta[b"p0"] = b""
        for i, p in enumerate(parents, 1):
            meta[b"p%d" % i] = p.hex().encode("ascii")
    for k, v in meta.items():
        if b":" in k or b"\0" in k or b"\0" in v:
            raise Abort("obsolescence marker metadata cannot hold ':' in a key or NUL anywhere (format 0)")
    raw = b"\0".join(b"%s:%s" % (k, meta[k]) for k in sorted(meta))
    return _FM0.pack(len(sucs), len(raw), flags, prec) + b"".join(sucs) + raw


def _encode_fm1(m: Marker) -> bytes:
    prec, sucs, flags, meta, date, parents = m
    nodes = [prec, *sucs, *(parents or ())]
    for k, v in meta:
        if len(k) > 255 or len(v) > 255:
            raise Abort("obsolescence marker metadata keys and values are at most 255 bytes")
    lengths = bytes(n for k, v in meta for n in (len(k), len(v)))
    values = b"".join(k + v for k, v in meta)
    total = _FM1.size + sum(len(n) for n in nodes) + len(lengths) + len(values)
    numpar = _FM1_NO_PARENTS if parents is None else len(parents)
    return (_FM1.pack(total, date[0], date[1] // 60, flags, len(sucs), numpar, len(meta))
            + b"".join(nodes) + lengths + values)


def encode_markers(markers: Iterable[Marker], version: int, header: bool = True) -> bytes:
    encode = _encode_fm0 if version == 0 else _encode_fm1
    return (bytes([version]) if header else b"") + b"".join(encode(m) for m in markers)


def sorted_markers(markers: Iterable[Marker]) -> list[Marker]:
    """Markers in hg's exchange order (obsutil.sortedmarkers: by value, absent parents as ())."""
    return sorted(markers, key=lambda m: (*m[:-1], m[-1] or ()))


@dataclass
class ObsStore:
    """The markers of one obsstore file, with the indexes the server needs."""

    version: int = DEFAULT_FORMAT
    markers: list[Marker] = field(default_factory=list)
    size: int = 0  # bytes of the file these markers came from
    successors: dict[bytes, list[Marker]] = field(default_factory=dict)    # by predecessor
    predecessors: dict[bytes, list[Marker]] = field(default_factory=dict)  # by successor
    children: dict[bytes, list[Marker]] = field(default_factory=dict)      # by recorded parent
    # the served mask a repository derived from these markers: (phase mask, pinned nodes, result)
    visible: tuple[bytearray, frozenset[bytes], bytearray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._index(self.markers)

    def _index(self, markers: Iterable[Marker]) -> None:
        for m in markers:
            self.successors.setdefault(m[0], []).append(m)
            for s in m[1]:
                self.predecessors.setdefault(s, []).append(m)
            for p in m[5] or ():
                self.children.setdefault(p, []).append(m)

    def __len__(self) -> int:
        return len(self.markers)

    def __bool__(self) -> bool:
        return bool(self.markers)

    def new_markers(self, markers: Iterable[Marker]) -> list[Marker]:
        """Those of `markers` not in the store yet (in order, without repeats)."""
        seen: set[Marker] = set()
        out = []
        for m in markers:
            if m in seen or m in self.successors.get(m[0], ()):
                continue
            seen.add(m)
            out.append(m)
        return out

    def relevant(self, nodes: Iterable[bytes]) -> set[Marker]:
        """Markers relevant to `nodes` (hg's relevantmarkers): those naming them as successors,
        prune markers of their children, and the same for the predecessors those markers name,
        transitively."""
        pending = {n for n in nodes if n in self.predecessors or n in self.successors or n in self.children}
        seen_nodes = set(pending)
        found: set[Marker] = set()
        while pending:
            direct: set[Marker] = set()
            for n in pending:
                direct.update(self.predecessors.get(n, ()))
                direct.update(m for m in self.children.get(n, ()) if not m[1])
                direct.update(m for m in self.successors.get(n, ()) if not m[1])
            direct -= found
            found |= direct
            pending = {m[0] for m in direct} - seen_nodes
            seen_nodes |= pending
        return found

    def successor_sets(self, node: bytes, is_final: Callable[[bytes], bool],
                       memo: dict[bytes, list[frozenset[bytes]]]) -> list[frozenset[bytes]]:
        """The sets of final changesets `node` was rewritten into (a simplified form of hg's
        obsutil.successorssets): `is_final(node)` says whether a changeset is here and not
        obsolete; a pruned changeset has none; divergent rewrites give several sets."""
        if node in memo:
            return memo[node]
        memo[node] = []  # cycles (invalid marker data) end here
        if is_final(node) or node not in self.successors:
            result = [frozenset([node])] if is_final(node) else []
        else:
            result = []
            for m in self.successors[node]:
                if not m[1]:
                    continue
                combos: list[frozenset[bytes]] = [frozenset()]
                for s in m[1]:
                    sets = self.successor_sets(s, is_final, memo)
                    combos = [c | x for c in combos for x in sets][:64]  # bounded: absurd fan-out is cut
                for c in combos:
                    if c and c not in result:
                        result.append(c)
            # a set included in another is not a separate rewrite (hg drops those too)
            result = [s for s in result if not any(s < o for o in result)]
        memo[node] = result
        return result


_cache: dict[str, tuple[tuple[int, int, int], ObsStore]] = {}
_cache_lock = threading.Lock()
_EMPTY = ObsStore()


def load(path: str | os.PathLike[str]) -> ObsStore:
    """The obsstore at `path` (empty if absent), parsed once per version of the file and shared
    (read only) by every request. Blocking: call from an executor."""
    key = os.fspath(path)
    try:
        st = os.stat(key)
    except FileNotFoundError:
        return _EMPTY
    ident = (st.st_size, st.st_mtime_ns, st.st_ino)
    with _cache_lock:
        got = _cache.get(key)
    if got is not None and got[0] == ident:
        return got[1]
    data = Path(key).read_bytes()
    version, markers = decode_markers(data)
    store = ObsStore(version, markers, len(data))
    with _cache_lock:
        if len(_cache) > 1024:
            _cache.clear()
        _cache[key] = (ident, store)
    return store


def obsolete_revs(store: ObsStore, nodes: Sequence[bytes], phase: bytes | bytearray) -> list[int]:
    """Revisions that are obsolete: not public (phase 0) and the predecessor of some marker."""
    succ = store.successors
    return [r for r, n in enumerate(nodes) if phase[r] and n in succ]

