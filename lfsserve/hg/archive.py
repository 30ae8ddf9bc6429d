"""Archives of a changeset, as `hg archive` and hgweb's `archive/` write them (tar.gz, tar.bz2, zip).

The same members in the same order with the same metadata as Mercurial 7.2.4: `.hg_archival.txt`
first (repo, node, branch, and the latest tag or the tags of the changeset), then every file of
the manifest sorted by path, under `prefix/`, with mode 644 or 755, symlinks as symlinks (777),
every member's time the changeset's date; gzip at level 9 carrying that date, bzip2 and deflate
at their defaults. Python's own tarfile/zipfile/gzip write the bytes, as they do for hg, so the
archive matches `hg archive` byte for byte when both run on the same Python.

Written to any object with a blocking `write(bytes)`: nothing is seeked, nothing is held but one
file at a time (and an LFS file streams through `LfsOpener`). Pure engine code: run it in a
worker thread.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable
from typing import Protocol

from .error import HgError
from .filelog import LfsPointer
from .node import NULLREV
from .repository import Repository
from .tags import parse_tags

__all__ = ["ARCHIVE_TYPES", "ArchiveError", "LfsOpener", "Readable", "Sink", "archival_metadata", "write_archive"]

# URL suffix -> (hgweb's type name, media type)
ARCHIVE_TYPES = {
    ".tar.gz": ("gz", "application/x-gzip"),
    ".tar.bz2": ("bz2", "application/x-bzip2"),
    ".zip": ("zip", "application/zip"),
}

_ZIP_EPOCH = 315532800  # zip cannot hold dates before 1980
_UNIX_FILE = 0o100000
_UNIX_LINK = 0o120000


class ArchiveError(HgError):
    pass


class Sink(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


# Opens the content of an LFS-stored file for reading (read(n) until b""; closed with close()
# if it has one), given its path and pointer; None when the blob is not available (the archive
# then stops with ArchiveError).
LfsOpener = Callable[[bytes, LfsPointer], "Readable | None"]


class _Writer:
    """A non-seekable file object over a Sink (tarfile and zipfile only need write/tell/flush)."""

    def __init__(self, sink: Sink):
        self.sink = sink
        self.pos = 0

    def write(self, data) -> int:
        n = len(data)
        if n:
            self.sink.write(bytes(data))
            self.pos += n
        return n

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def seekable(self) -> bool:
        return False


def _global_tags(repo: Repository) -> dict[bytes, list[bytes]]:
    """node -> its global tags (hg's latesttag ignores `tip` and local tags)."""
    tags = repo.tags()
    local: set[bytes] = set()
    try:
        local = set(parse_tags((repo.root / ".hg" / "localtags").read_bytes()))
    except FileNotFoundError:
        pass
    out: dict[bytes, list[bytes]] = {}
    for name, node in tags.items():
        if name != b"tip" and name not in local:
            out.setdefault(node, []).append(name)
    return out


def _ancestors(parents: list[tuple[int, int]], revs: list[int]) -> set[int]:
    seen: set[int] = set()
    todo = [r for r in revs if r != NULLREV]
    while todo:
        r = todo.pop()
        if r in seen:
            continue
        seen.add(r)
        todo.extend(p for p in parents[r] if p != NULLREV)
    return seen


def archival_metadata(repo: Repository, rev: int) -> bytes:
    """The `.hg_archival.txt` of changeset `rev`, as hg's default archive template writes it."""
    cl = repo.changelog
    visible = repo.visible_mask
    root = next((r for r in range(len(cl)) if visible[r]), NULLREV)
    root_hex = cl.node(root).hex() if root != NULLREV else "0" * 40
    entry = cl.read(rev)
    out = [b"repo: %s\n" % root_hex.encode(), b"node: %s\n" % cl.node(rev).hex().encode(),
           b"branch: %s\n" % entry.branch]
    tagged = _global_tags(repo)
    parents = repo.parents_list
    # the latest tags of each revision: (date of the tagged changeset, distance, sorted names)
    latest: dict[int, tuple[int, int, list[bytes]]] = {NULLREV: (0, 0, [b"null"])}
    todo = [rev]
    while todo:
        r = todo.pop()
        if r in latest:
            continue
        names = tagged.get(cl.node(r))
        if names:
            latest[r] = (cl.read(r).time, 0, sorted(names))
            continue
        ps = [p for p in parents[r] if p != NULLREV] or [NULLREV]
        missing = [p for p in ps if p not in latest]
        if missing:
            todo.append(r)
            todo.extend(missing)
            continue
        cands = [latest[p] for p in ps]
        if len(cands) > 1 and cands[0][2] != cands[1][2]:
            # fewest changes since the tag wins, then the later tag
            best = max(cands, key=lambda c: (-_changes_since(repo, r, c[2][0]), c[0]))
        else:
            best = max(cands)
        latest[r] = (best[0], best[1] + 1, best[2])
    _, distance, names = latest[rev]
    if distance == 0:
        out.append(b"\n".join(b"tag: %s" % t for t in names) + b"\n")
    else:
        out += [b"\n".join(b"latesttag: %s" % t for t in names) + b"\n",
                b"latesttagdistance: %d\n" % distance,
                b"changessincelatesttag: %d\n" % _changes_since(repo, rev, names[0])]
    return b"".join(out)


def _changes_since(repo: Repository, rev: int, tag: bytes) -> int:
    """len(only(rev, tag)): ancestors of rev that are not ancestors of the tag."""
    parents = repo.parents_list
    mine = _ancestors(parents, [rev])
    if tag == b"null":
        return len(mine)
    node = repo.tags().get(tag)
    if node is None:
        return len(mine)
    return len(mine - _ancestors(parents, [repo.changelog.rev(node)]))


def _members(repo: Repository, rev: int) -> list[tuple[bytes, bytes, bytes]]:
    """(path, file node, flags) of every file, sorted by path."""
    manifest = repo.manifestlog.read(repo.changelog.manifest_node(rev))
    return [(p, manifest[p][0], manifest[p][1]) for p in sorted(manifest)]


class _Stream:
    """Reads a file's content in pieces: an LFS blob through the opener, else from memory."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else min(len(self.data), self.pos + n)
        out = bytes(self.data[self.pos:end])
        self.pos = end
        return out


def _content(repo: Repository, path: bytes, fnode: bytes, lfs: LfsOpener | None) -> tuple[int, Readable]:
    """(size, a reader with read(n)) of one file's content, LFS files resolved."""
    fl = repo.file(path)
    frev = fl.rev(fnode)
    if fl.is_lfs(frev):
        pointer = fl.lfs_pointer(frev)
        reader = lfs(path, pointer) if lfs is not None else None
        if reader is None:
            raise ArchiveError(f"the LFS object of {path.decode('utf-8', 'replace')} ({pointer.oid}) is not "
                               "in this server's store")
        return pointer.size, reader
    data = fl.read(fnode)
    return len(data), _Stream(data)


def write_archive(repo: Repository, rev: int, kind: str, prefix: str, sink: Sink, *,
                  lfs: LfsOpener | None = None) -> int:
    """Write the archive of changeset `rev` (`kind`: "gz", "bz2" or "zip") to `sink`; every
    member is under `prefix/`. Returns the number of files (the metadata file not counted)."""
    if rev == NULLREV:
        raise ArchiveError("no files match the archive pattern")
    entry = repo.changelog.read(rev)
    mtime = entry.time
    members = _members(repo, rev)
    if not members:
        raise ArchiveError("no files match the archive pattern")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    out = _Writer(sink)
    meta = archival_metadata(repo, rev)
    if kind == "zip":
        _write_zip(repo, members, prefix, meta, max(mtime, _ZIP_EPOCH), out, lfs)
    elif kind in ("gz", "bz2"):
        _write_tar(repo, members, prefix, meta, mtime, kind, out, lfs)
    else:
        raise ArchiveError(f"unknown archive type '{kind}'")
    return len(members)


def _entries(repo: Repository, members, prefix: str, meta: bytes, lfs: LfsOpener | None):
    """(name, flags, size, reader) of each member of the archive, `.hg_archival.txt` first; a
    member's reader is closed once the next one is asked for (or the generator is closed)."""
    yield prefix.encode() + b".hg_archival.txt", b"", len(meta), _Stream(meta)
    for path, fnode, flags in members:
        size, reader = _content(repo, path, fnode, lfs)
        try:
            yield prefix.encode() + path, flags, size, reader
        finally:
            getattr(reader, "close", lambda: None)()


def _write_tar(repo: Repository, members, prefix: str, meta: bytes, mtime: int, kind: str, out: _Writer,
               lfs: LfsOpener | None) -> None:
    with contextlib.ExitStack() as stack:
        if kind == "gz":
            gz = stack.enter_context(gzip.GzipFile(b"", "wb", zlib.Z_BEST_COMPRESSION, out,
                                                   mtime=mtime))
            # tarfile writes each header, content and padding apart: gathered into large
            # writes, gzip's per-write work (crc, bookkeeping, a compress call) is paid per
            # 64 KiB, not per member piece; deflate's output does not depend on the chunking
            buf = stack.enter_context(io.BufferedWriter(gz, 1 << 16))
            tar = stack.enter_context(tarfile.TarFile.taropen("", "w", buf))
        else:
            tar = stack.enter_context(tarfile.open("", "w|bz2", out))  # type: ignore[call-overload]

        def add(name: bytes, flags: bytes, size: int, reader) -> None:
            info = tarfile.TarInfo(name.decode("utf-8", "surrogateescape"))
            info.mtime = float(mtime)  # a float, as hg's date: tarfile then writes it in a pax header
            if b"l" in flags:
                info.type = tarfile.SYMTYPE
                info.mode = 0o777
                info.linkname = reader.read().decode("utf-8", "surrogateescape")
                info.size = 0
                tar.addfile(info)
            else:
                info.mode = 0o755 if b"x" in flags else 0o644
                info.size = size
                tar.addfile(info, reader)

        with contextlib.closing(_entries(repo, members, prefix, meta, lfs)) as entries:
            for entry in entries:
                add(*entry)


def _write_zip(repo: Repository, members, prefix: str, meta: bytes, mtime: int, out: _Writer,
               lfs: LfsOpener | None) -> None:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:  # type: ignore[call-overload]
        _zip_members(zf, repo, members, prefix, meta, mtime, lfs)


def _zip_members(zf: zipfile.ZipFile, repo: Repository, members, prefix: str, meta: bytes, mtime: int,
                 lfs: LfsOpener | None) -> None:
    date_time = time.gmtime(mtime)[:6]

    def add(name: bytes, flags: bytes, size: int, reader) -> None:
        info = zipfile.ZipInfo(name.decode("utf-8", "surrogateescape"), date_time)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.create_system = 3  # unix, so that unzip honours the modes
        if b"l" in flags:
            mode = 0o777 | _UNIX_LINK
        else:
            mode = (0o755 if b"x" in flags else 0o644) | _UNIX_FILE
        info.external_attr = mode << 16
        # extended timestamp, so that unzip does not shift the date by the local zone
        info.extra += struct.pack("<hhBl", 0x5455, 5, 1, int(mtime))
        # as zipfile.writestr does with the whole content, but streamed
        info.file_size = size
        with zf.open(info, "w") as dest:
            while True:
                piece = reader.read(1 << 20)
                if not piece:
                    break
                dest.write(piece)

    with contextlib.closing(_entries(repo, members, prefix, meta, lfs)) as entries:
        for entry in entries:
            add(*entry)
