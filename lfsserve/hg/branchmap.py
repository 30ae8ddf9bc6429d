"""Named branches: the branch of every changeset and the heads of each branch.

The branch of each changeset is read once per changelog revision and kept with the parsed
changelog index (`Index.prefix_derived`): when a push appends changesets, only theirs are read.
"""

from __future__ import annotations

from .changelog import Changelog

__all__ = ["branch_heads", "branch_info", "branch_tip", "fqbn", "parse_fqbn", "topic_info"]


def branch_info(cl: Changelog) -> list[tuple[bytes, bool]]:
    """(branch, closes its branch) of every changeset of `cl`, by rev."""
    idx = cl.index
    n = len(idx)
    got = idx.prefix_derived.get("branches")
    if got is not None and len(got) == n:
        return got
    info = list(got or ())  # inherited lists are shared with older indexes: extend a copy
    for r in range(len(info), n):
        info.append(cl.branch_info(r))
    idx.prefix_derived["branches"] = info
    return info


def branch_heads(info: list[tuple[bytes, bool]], parents: list[tuple[int, int]],
                 visible: bytearray) -> dict[bytes, list[int]]:
    """Every head of every named branch among the `visible` changesets (closed ones included),
    each list ascending by rev."""
    n = len(info)
    has_child = bytearray(n)
    for r in range(n):
        if not visible[r]:
            continue
        b = info[r][0]
        for p in parents[r]:
            if p >= 0 and info[p][0] == b:
                has_child[p] = 1
    # candidates: no child on the same branch. A candidate can still have a descendant on
    # its branch through other branches; it is a head only if it is not an ancestor of
    # another candidate of its branch.
    candidates: dict[bytes, list[int]] = {}
    for r in range(n):
        if visible[r] and not has_child[r]:
            candidates.setdefault(info[r][0], []).append(r)
    out: dict[bytes, list[int]] = {}
    for branch, revs in candidates.items():
        if len(revs) > 1:
            low = revs[0]
            mark = bytearray(revs[-1] + 1)
            for r in revs:
                for p in parents[r]:
                    if p >= low:
                        mark[p] = 1
            for r in range(revs[-1], low - 1, -1):
                if mark[r]:
                    for p in parents[r]:
                        if p >= low:
                            mark[p] = 1
            revs = [r for r in revs if not mark[r]]
        out[branch] = revs
    return out


def branch_tip(info: list[tuple[bytes, bool]], heads: list[int]) -> int | None:
    """The rev `hg` names by a branch with these heads: its newest open head, else its newest head."""
    if not heads:
        return None
    open_heads = [h for h in heads if not info[h][1]]
    return (open_heads or heads)[-1]


def topic_info(cl: Changelog) -> list[tuple[bytes, bytes]]:
    """(topic namespace, topic) of every changeset of `cl`, by rev (kept like branch_info)."""
    idx = cl.index
    n = len(idx)
    got = idx.prefix_derived.get("topics")
    if got is not None and len(got) == n:
        return got
    info = list(got or ())
    for r in range(len(info), n):
        info.append(cl.topic_info(r))
    idx.prefix_derived["topics"] = info
    return info


def fqbn(branch: bytes, namespace: bytes = b"none", topic: bytes = b"") -> bytes:
    """The topic extension's "fully qualified branch name", short form: `branch`, or
    `branch//topic`, or `branch//namespace/topic` (the namespace `none` is not shown)."""
    out = branch
    shown_ns = namespace and namespace != b"none"
    if shown_ns or topic or b"//" in branch:
        out += b"//"
    if shown_ns:
        out += namespace + b"/"
    return out + topic


def parse_fqbn(name: bytes) -> tuple[bytes, bytes, bytes]:
    """(branch, namespace, topic) of a fully qualified branch name (the inverse of fqbn)."""
    branch, sep, other = name.rpartition(b"//")
    if not sep:
        branch, other = other, b""
    branch = branch or b"default"
    namespace, sep, topic = other.partition(b"/")
    if not sep:
        namespace, topic = b"none", namespace
    return branch, namespace, topic
