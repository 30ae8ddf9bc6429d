"""The store: `.hg/requires`, `.hg/store/requires`, file name encoding and the fncache.

Filelogs live under `.hg/store/data/`, with names encoded so that any tracked path maps to a
portable file name: with the `fncache` requirement uppercase letters become `_x`, reserved bytes
`~xx`, Windows device names are masked, and (with `dotencode`) a leading `.` or space is escaped;
an encoded name longer than 120 bytes is replaced by a hashed name under `dh/`. Hashed names
cannot be decoded, which is why the fncache file lists every filelog by its real name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .error import BadPath, CorruptRevlog, RepoNotFound, UnsupportedRequirement

__all__ = [
    "HG_INIT_REQUIREMENTS",
    "SUPPORTED_REQUIREMENTS",
    "WORKING_COPY_REQUIREMENTS",
    "Store",
    "audit_path",
    "check_requirements",
    "decode_dir",
    "encode_dir",
    "encode_path",
    "read_requirements",
]

# What `hg init` of 7.2.4 writes: .hg/requires holds share-safe, the rest go to .hg/store/requires.
HG_INIT_REQUIREMENTS = frozenset({
    "dotencode", "fncache", "generaldelta", "revlog-compression-zstd", "revlogv1", "sparserevlog",
    "store",
})

# Requirements about the working copy only (they live in .hg/requires under share-safe): a
# server never touches the working copy, so they are harmless.
WORKING_COPY_REQUIREMENTS = frozenset({
    "share-safe", "dirstate-v2", "dirstate-tracked-key-v1", "exp-sparse",
})

SUPPORTED_REQUIREMENTS = frozenset({
    *HG_INIT_REQUIREMENTS, *WORKING_COPY_REQUIREMENTS,
    "lfs",  # lfs-flagged file revisions: pointers stored in the revlogs
    "persistent-nodemap",  # an on-disk node->rev cache hg validates itself; we append only
    "bookmarksinstore",  # bookmarks in .hg/store/bookmarks
    "internal-phase-2", "exp-archived-phase",  # extra hidden phases: never served
})


def _read_lines(path: Path) -> set[str]:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return set()
    return {line.decode("ascii", "replace") for line in text.splitlines() if line.strip()}


def read_requirements(root: Path) -> frozenset[str]:
    """The requirements of the repository at `root` (both files under share-safe)."""
    hg = root / ".hg"
    if not hg.is_dir():
        raise RepoNotFound(root)
    reqs = _read_lines(hg / "requires")
    if "share-safe" in reqs:
        store_reqs = hg / "store" / "requires"
        if not store_reqs.exists() and not {"shared", "relshared"} & reqs:
            raise CorruptRevlog(f"{root}: .hg/store/requires is missing (the repository uses share-safe)")
        reqs |= _read_lines(store_reqs)
    return frozenset(reqs)


def check_requirements(reqs: frozenset[str], root) -> None:
    """Refuse repositories we cannot read and write safely, naming every unknown requirement."""
    unknown = set(reqs) - SUPPORTED_REQUIREMENTS
    missing = []
    if "store" not in reqs:
        missing.append("store (a repository older than Mercurial 0.9.2)")
    if "revlogv1" not in reqs:
        missing.append("revlogv1")
    if unknown or missing:
        names = sorted(unknown) + [f"lack of {m}" for m in missing]
        raise UnsupportedRequirement(names, where=str(root))


# --- tracked-file paths -------------------------------------------------------------------------

# Code points HFS+ ignores in names (UTF-8), so `.h\u200cg` is `.hg` on a Mac (hg's list).
_HFS_IGNORED = tuple(chr(c).encode("utf-8") for c in (
    0x200C, 0x200D, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E,
    0x206A, 0x206B, 0x206C, 0x206D, 0x206E, 0x206F, 0xFEFF))


def _fold(part: bytes) -> bytes:
    """How a file system that ignores case and HFS+-ignored code points sees a name."""
    part = part.lower()
    if b"\xe2" in part or b"\xef" in part:
        for c in _HFS_IGNORED:
            part = part.replace(c, b"")
    return part


def audit_path(path: bytes) -> None:
    """Refuse a tracked-file path that no checkout could hold safely (BadPath, hg's messages).

    The rules of Mercurial's path auditor for stored history, a little stricter: no empty, `.` or
    `..` segment, not absolute, no trailing `/`, nothing under `.hg` (also as spelled on
    case-insensitive file systems, as a Windows short name, or inside a nested repository), and no
    NUL, CR or LF, which hg refuses in file names.
    """
    shown = path[:200].decode("utf-8", "replace")
    if not path:
        raise BadPath("empty file name")
    if b"\0" in path or b"\n" in path or b"\r" in path:
        raise BadPath(f"file name contains NUL, CR or LF: {shown!r}")
    if path.endswith(b"/"):
        raise BadPath(f"path ends in directory separator: {shown}")
    parts = path.split(b"/")
    if any(p in (b"", b".", b"..") for p in parts):
        raise BadPath(f"path contains illegal component: {shown}")
    folded = [_fold(p) for p in parts]
    if folded[0] in (b".hg", b".hg."):
        raise BadPath(f"path contains illegal component: {shown}")
    for p in parts:
        first, tilde, last = p.partition(b"~")
        if tilde and last.isdigit() and first.upper() in (b"HG", b"HG8B6C"):
            raise BadPath(f"path contains illegal component: {shown}")
    for i, p in enumerate(folded[1:], 1):
        if p in (b".hg", b".hg."):
            nested = b"/".join(parts[:i]).decode("utf-8", "replace")
            raise BadPath(f"path '{shown}' is inside nested repo '{nested}'")


# Encoded store names, process-wide (see Store.encode); cleared when full, a few MB at most.
_ENCODED: dict[tuple[bytes, bool, bool], str] = {}
_ENCODED_MAX = 65536


def _check_inside(encoded: bytes, name: bytes) -> None:
    """The last guard before a file is opened: an encoded store name stays inside the store."""
    if encoded.startswith(b"/") or any(p in (b"", b".", b"..") for p in encoded.split(b"/")):
        raise BadPath(f"store file name {name[:200].decode('utf-8', 'replace')!r} would leave the store")


# --- name encoding (facts from `hg help internals.revlogs` and repositories hg creates) -----------

def encode_dir(path: bytes) -> bytes:
    """Keep a directory from colliding with a revlog file: `foo.i/` -> `foo.i.hg/`."""
    if b".hg/" not in path and b".i/" not in path and b".d/" not in path:
        return path
    return path.replace(b".hg/", b".hg.hg/").replace(b".i/", b".i.hg/").replace(b".d/", b".d.hg/")


def decode_dir(path: bytes) -> bytes:
    if b".hg/" not in path:
        return path
    return path.replace(b".d.hg/", b".d/").replace(b".i.hg/", b".i/").replace(b".hg.hg/", b".hg/")


def _make_tables():
    reserved = set(range(32)) | set(range(126, 256)) | set(b'\\:*?"<>|')
    full = []  # the reversible encoding
    lower = []  # lowercase-only variant used in hashed names
    for c in range(256):
        if c in reserved:
            full.append(b"~%02x" % c)
            lower.append(b"~%02x" % c)
        elif ord("A") <= c <= ord("Z"):
            full.append(b"_" + bytes([c + 32]))
            lower.append(bytes([c + 32]))
        elif c == ord("_"):
            full.append(b"__")
            lower.append(b"_")
        else:
            full.append(bytes([c]))
            lower.append(bytes([c]))
    return full, lower


_FULL, _LOWER = _make_tables()
_SAFE = frozenset(c for c in range(256) if _FULL[c] == bytes([c]))


def _encode_chars(path: bytes, table) -> bytes:
    if all(c in _SAFE for c in path):
        return path
    return b"".join([table[c] for c in path])


_WIN3 = (b"aux", b"con", b"prn", b"nul")
_WIN4 = (b"com", b"lpt")


def _aux_encode(parts: list[bytes], dotencode: bool) -> list[bytes]:
    """Mask Windows device names and trailing (and, with dotencode, leading) dots and spaces."""
    out = []
    for n in parts:
        if n:
            if dotencode and n[:1] in (b".", b" "):
                n = b"~%02x" % n[0] + n[1:]
            else:
                stem = n.split(b".", 1)[0]
                if (len(stem) == 3 and stem in _WIN3) or (
                        len(stem) == 4 and stem[:3] in _WIN4 and b"1" <= stem[3:4] <= b"9"):
                    n = n[:2] + b"~%02x" % n[2] + n[3:]
            if n[-1:] in (b".", b" "):
                n = n[:-1] + b"~%02x" % n[-1]
        out.append(n)
    return out


_MAX_STORE_PATH = 120
_DIR_PREFIX = 8
_MAX_SHORT_DIRS = 8 * (_DIR_PREFIX + 1) - 4


def _hashed_name(path: bytes, dotencode: bool) -> bytes:
    """The non-reversible name of a path whose encoding is too long (`dh/...<sha1>.i`)."""
    digest = hashlib.sha1(path).hexdigest().encode()
    parts = _aux_encode(_encode_chars(path[5:], _LOWER).split(b"/"), dotencode)  # drop "data/"
    basename = parts[-1]
    ext = os.path.splitext(basename)[1]
    dirs = []
    used = 0
    for p in parts[:-1]:
        d = p[:_DIR_PREFIX]
        if d[-1:] in (b".", b" "):
            d = d[:-1] + b"_"
        total = len(d) if used == 0 else used + 1 + len(d)
        if used and total > _MAX_SHORT_DIRS:
            break
        dirs.append(d)
        used = total
    prefix = b"/".join(dirs) + (b"/" if dirs else b"")
    res = b"dh/" + prefix + digest + ext
    room = _MAX_STORE_PATH - len(res)
    if room > 0:
        res = b"dh/" + prefix + basename[:room] + digest + ext
    return res


def encode_path(path: bytes, *, fncache: bool, dotencode: bool) -> bytes:
    """The on-disk name (relative to .hg/store) of the store file named `path` (e.g. b"data/a.i")."""
    d = encode_dir(path)
    if not fncache:
        return _encode_chars(d, _FULL)
    if dotencode and len(path) > _MAX_STORE_PATH:
        return _hashed_name(d, dotencode)
    res = b"/".join(_aux_encode(_encode_chars(d, _FULL).split(b"/"), dotencode))
    if len(res) > _MAX_STORE_PATH:
        return _hashed_name(d, dotencode)
    return res


class Store:
    """File layout of `.hg/store` for one repository."""

    def __init__(self, root: Path, requirements: frozenset[str]):
        self.root = root
        self.path = root / ".hg" / "store"
        self.fncache = "fncache" in requirements
        self.dotencode = "dotencode" in requirements
        self._encoded: dict[bytes, str] = {}

    def encode(self, name: bytes) -> str:
        """Path relative to .hg/store of the store file `name` (unencoded, like b"data/a.txt.i")."""
        got = self._encoded.get(name)
        if got is None:
            # the encoding is a pure function of the name and two requirements: shared by every
            # Store of the process (a request opens its own; an archive encodes thousands of names)
            key = (name, self.fncache, self.dotencode)
            got = _ENCODED.get(key)
            if got is None:
                enc = encode_path(name, fncache=self.fncache, dotencode=self.dotencode)
                _check_inside(enc, name)
                got = os.fsdecode(enc)
                if len(_ENCODED) >= _ENCODED_MAX:
                    _ENCODED.clear()
                _ENCODED[key] = got
            self._encoded[name] = got
        return got

    def join(self, name: bytes) -> str:
        return os.path.join(self.path, self.encode(name))

    @staticmethod
    def filelog_name(path: bytes) -> bytes:
        return b"data/" + path + b".i"

    # -- fncache
    def fncache_path(self) -> Path:
        return self.path / "fncache"

    def read_fncache(self) -> list[bytes]:
        """Every store file the fncache lists (unencoded names), in file order."""
        try:
            data = self.fncache_path().read_bytes()
        except FileNotFoundError:
            return []
        return [decode_dir(line) for line in data.split(b"\n") if line]

    def data_files(self) -> list[bytes]:
        """Unencoded names of every filelog index and data file, sorted."""
        if self.fncache:
            names = set(self.read_fncache())
            return sorted(n for n in names if n.startswith(b"data/") and n.endswith((b".i", b".d")))
        out = []
        base = self.path / "data"
        for dirpath, _dirs, files in os.walk(base):
            for f in files:
                if f.endswith((".i", ".d")):
                    rel = os.path.relpath(os.path.join(dirpath, f), self.path)
                    out.append(_decode_plain(os.fsencode(rel)))
        return sorted(out)


def _decode_plain(name: bytes) -> bytes:
    """Undo the reversible (non-fncache) encoding."""
    out = bytearray()
    i = 0
    n = len(name)
    while i < n:
        c = name[i]
        if c == 0x5F and i + 1 < n:  # '_'
            nxt = name[i + 1]
            out.append(0x5F if nxt == 0x5F else nxt - 32)
            i += 2
        elif c == 0x7E and i + 2 < n:  # '~'
            out.append(int(name[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return decode_dir(bytes(out))
