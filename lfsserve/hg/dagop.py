"""Walks over the changeset DAG given as a list of parent pairs indexed by revision.

Revisions are topologically ordered (parents have smaller numbers), so most walks are one pass
over a bytearray of marks, linear in the number of revisions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .node import NULLREV

__all__ = ["ancestors_mask", "descendants_mask", "heads_of", "is_ancestor", "missing"]

Parents = Sequence[tuple[int, int]]


def ancestors_mask(parents: Parents, revs: Iterable[int], n: int | None = None) -> bytearray:
    """mask[r] == 1 for every ancestor of `revs` (inclusive); `n` (default: all) sizes the mask,
    revisions at or past `n` are ignored."""
    n = len(parents) if n is None else n
    mask = bytearray(n)
    start = -1
    for r in revs:
        if 0 <= r < n:
            mask[r] = 1
            start = max(start, r)
    for r in range(start, -1, -1):
        if mask[r]:
            p1, p2 = parents[r]
            if p1 >= 0:
                mask[p1] = 1
            if p2 >= 0:
                mask[p2] = 1
    return mask


def descendants_mask(parents: Parents, revs: Iterable[int]) -> bytearray:
    """mask[r] == 1 for every descendant of `revs` (inclusive)."""
    n = len(parents)
    mask = bytearray(n)
    first = n
    for r in revs:
        if 0 <= r < n:
            mask[r] = 1
            first = min(first, r)
    for r in range(first + 1, n):
        if not mask[r]:
            p1, p2 = parents[r]
            if (p1 >= 0 and mask[p1]) or (p2 >= 0 and mask[p2]):
                mask[r] = 1
    return mask


def missing(parents: Parents, common: Iterable[int], heads: Iterable[int]) -> list[int]:
    """Ancestors of `heads` (inclusive) that are not ancestors of `common`, ascending."""
    heads = [h for h in heads if h != NULLREV]
    if not heads:
        return []
    top = max(heads)
    have = ancestors_mask(parents, common)
    want = bytearray(top + 1)
    for h in heads:
        if not have[h]:
            want[h] = 1
    out = []
    for r in range(top, -1, -1):
        if want[r]:
            out.append(r)
            p1, p2 = parents[r]
            if p1 >= 0 and not have[p1]:
                want[p1] = 1
            if p2 >= 0 and not have[p2]:
                want[p2] = 1
    out.reverse()
    return out


def heads_of(parents: Parents, visible: bytearray | None = None) -> list[int]:
    """Revisions (visible ones when a mask is given) without a visible child, ascending."""
    n = len(parents)
    has_child = bytearray(n)
    for r in range(n):
        if visible is not None and not visible[r]:
            continue
        p1, p2 = parents[r]
        if p1 >= 0:
            has_child[p1] = 1
        if p2 >= 0:
            has_child[p2] = 1
    return [r for r in range(n) if not has_child[r] and (visible is None or visible[r])]


def is_ancestor(parents: Parents, a: int, b: int) -> bool:
    """True when `a` is an ancestor of `b` (or equal)."""
    if a in (NULLREV, b):
        return True
    if a > b:
        return False
    seen = {b}
    stack = [b]
    while stack:
        r = stack.pop()
        for p in parents[r]:
            if p == a:
                return True
            if p > a and p not in seen:
                seen.add(p)
                stack.append(p)
    return False


