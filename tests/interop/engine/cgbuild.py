"""Hand-made changegroups: linear history whose every field (changeset text, manifest lines, file
names and texts) the test chooses, valid or not, so the server can be shown input hg never writes.

Each revision is sent as a full text (delta base null, one hunk replacing the empty text), unless
a manifest is given as a delta against its parent; nodes are computed as Mercurial does:
sha1(min(p1, p2) + max(p1, p2) + text).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

NULL = b"\0" * 20
_HEADER = {"02": ">20s20s20s20s20s", "03": ">20s20s20s20s20sH"}


def node_of(text: bytes, p1: bytes = NULL, p2: bytes = NULL) -> bytes:
    a, b = sorted((p1, p2))
    return hashlib.sha1(a + b + text).digest()


def _chunk(payload: bytes) -> bytes:
    return struct.pack(">l", 4 + len(payload)) + payload


def _revision(version: str, node: bytes, p1: bytes, link: bytes, text: bytes, flags: int = 0,
              delta: bytes | None = None) -> bytes:
    """A revision chunk: the full text, or `delta` against p1."""
    fields = [node, p1, NULL, NULL if delta is None else p1, link] + ([flags] if version == "03" else [])
    if delta is None:
        delta = struct.pack(">lll", 0, 0, len(text)) + text
    return _chunk(struct.pack(_HEADER[version], *fields) + delta)


def apply_hunks(base: bytes, hunks: list[tuple[int, int, bytes]]) -> tuple[bytes, bytes]:
    """(the text, the binary delta) of `hunks` (start, end, data; ascending) replacing base[start:end]."""
    out, pos = [], 0
    for start, end, data in hunks:
        assert pos <= start <= end <= len(base)
        out += [base[pos:start], data]
        pos = end
    delta = b"".join(struct.pack(">lll", s, e, len(d)) + d for s, e, d in hunks)
    return b"".join(out) + base[pos:], delta


def manifest_text(entries: dict[bytes, tuple[bytes, bytes]]) -> bytes:
    """A well-formed flat manifest: sorted `path NUL hex flags` lines."""
    return b"".join(b"%s\0%s%s\n" % (p, n.hex().encode(), f) for p, (n, f) in sorted(entries.items()))


@dataclass
class Changeset:
    """One changeset of the built history. `files` maps path -> file text (a new revision each).

    `manifest` overrides the manifest text (default: every file so far, flags from `flags`; a
    callable gets that default and returns the text to send); `text` overrides the changeset text, built from the manifest node when it is a callable.
    """
    files: dict[bytes, bytes]
    flags: dict[bytes, bytes] = field(default_factory=dict)
    user: bytes = b"test <test@example.org>"
    date: bytes = b"1700000000 0"
    listed: list[bytes] | None = None  # the changeset's files line (default: sorted(files))
    desc: bytes = b"a change"
    manifest: object = None
    text: object = None
    # given the previous manifest's text, the hunks (start, end, data) that make this manifest: it
    # is then sent as that delta against its parent (`manifest` and `flags` are not used)
    manifest_delta: object = None


def changeset_text(mnode: bytes, c: Changeset) -> bytes:
    listed = sorted(c.files) if c.listed is None else c.listed
    return b"%s\n%s\n%s\n%s\n\n%s" % (mnode.hex().encode(), c.user, c.date, b"\n".join(listed), c.desc) \
        if listed else b"%s\n%s\n%s\n\n%s" % (mnode.hex().encode(), c.user, c.date, c.desc)


def build(changesets: list[Changeset], version: str = "03") -> bytes:
    """The changegroup (changelog, manifests, 03's empty tree section, files) of a linear history."""
    cl_chunks, mf_chunks = [], []
    file_chunks: dict[bytes, list[bytes]] = {}
    entries: dict[bytes, tuple[bytes, bytes]] = {}
    file_tip: dict[bytes, bytes] = {}
    cl_p1 = mf_p1 = NULL
    prev_mtext = b""
    pending = []
    for c in changesets:
        for path, text in c.files.items():
            p1 = file_tip.get(path, NULL)
            fnode = node_of(text, p1)
            pending.append((path, fnode, p1, text))
            file_tip[path] = fnode
            entries[path] = (fnode, c.flags.get(path, b""))
        mtext = manifest_text(entries)
        mdelta = None
        if c.manifest_delta is not None:
            mtext, mdelta = apply_hunks(prev_mtext, c.manifest_delta(prev_mtext))
        elif c.manifest is not None:
            mtext = c.manifest(mtext) if callable(c.manifest) else c.manifest
        mnode = node_of(mtext, mf_p1)
        ctext = c.text(mnode) if callable(c.text) else (c.text or changeset_text(mnode, c))
        cnode = node_of(ctext, cl_p1)
        cl_chunks.append(_revision(version, cnode, cl_p1, cnode, ctext))
        mf_chunks.append(_revision(version, mnode, mf_p1, cnode, mtext, delta=mdelta))
        for path, fnode, p1, text in pending:
            file_chunks.setdefault(path, []).append(_revision(version, fnode, p1, cnode, text))
        pending = []
        cl_p1, mf_p1, prev_mtext = cnode, mnode, mtext
    out = [*cl_chunks, struct.pack(">l", 0), *mf_chunks, struct.pack(">l", 0)]
    if version == "03":
        out.append(struct.pack(">l", 0))
    for path, chunks in file_chunks.items():
        out += [_chunk(path), *chunks, struct.pack(">l", 0)]
    out.append(struct.pack(">l", 0))
    return b"".join(out)
