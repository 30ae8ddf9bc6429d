"""Mercurial's binary deltas ("bdiff" patches): apply them, and compute them when we must.

A delta is a sequence of hunks `>lll` (start, end, length) followed by `length` bytes; each hunk
replaces `base[start:end]` with its bytes. Hunks are sorted and do not overlap. A full text sent
as a delta is one hunk (0, 0, len(text)) against the empty text.
"""

from __future__ import annotations

import bisect
import difflib
import itertools
import struct

__all__ = [
    "PatchError",
    "full_replacement",
    "iter_hunks",
    "patch",
    "patch_chain",
    "patched_size",
    "textdiff",
    "trivial_header",
]

_HUNK = struct.Struct(">lll")
_unpack_hunk = _HUNK.unpack_from
_pack_hunk = _HUNK.pack


class PatchError(ValueError):
    """The delta is malformed or does not fit the text it is applied to."""


def trivial_header(length: int) -> bytes:
    """The header that turns the empty text into a text of `length` bytes."""
    return _pack_hunk(0, 0, length)


def full_replacement(old_length: int, new: bytes) -> bytes:
    """A delta replacing a whole text of `old_length` bytes with `new` (valid against any base of that size)."""
    return _pack_hunk(0, old_length, len(new)) + new


def iter_hunks(delta):
    """Yield (start, end, data memoryview) for each hunk, checking the framing."""
    mv = memoryview(delta)
    pos, n, last = 0, len(mv), 0
    while pos < n:
        if pos + 12 > n:
            raise PatchError("delta truncated in a hunk header")
        start, end, length = _unpack_hunk(mv, pos)
        pos += 12
        if start < last or end < start or length < 0 or pos + length > n:
            raise PatchError("delta hunks are out of order or truncated")
        yield start, end, mv[pos:pos + length]
        pos += length
        last = end


def patched_size(base_length: int, delta) -> int:
    """Length of the text `delta` produces from a base of `base_length` bytes."""
    size = base_length
    for start, end, data in iter_hunks(delta):
        if end > base_length:
            raise PatchError("delta reaches past the end of its base")
        size += len(data) - (end - start)
    return size


def patch(base, delta) -> bytes:
    """Apply one delta to `base`; raise PatchError when it does not fit."""
    if not delta:
        return bytes(base)
    a = memoryview(base)
    d = memoryview(delta)
    alen, n = len(a), len(d)
    out: list[memoryview] = []
    append = out.append
    pos = last = 0
    while pos < n:
        if pos + 12 > n:
            raise PatchError("delta truncated in a hunk header")
        start, end, length = _unpack_hunk(d, pos)
        pos += 12
        if start < last or end < start or end > alen or length < 0 or pos + length > n:
            raise PatchError("delta does not apply to its base (hunk out of range or order)")
        if start > last:
            append(a[last:start])
        if length:
            append(d[pos:pos + length])
        pos += length
        last = end
    if last < alen:
        append(a[last:])
    return b"".join(out)


def patch_chain(base, deltas) -> bytes:
    """Apply a sequence of deltas, oldest first."""
    text = base
    for delta in deltas:
        text = patch(text, delta)
    return bytes(text) if not isinstance(text, bytes) else text


# --- computing deltas --------------------------------------------------------------------------
#
# Deltas we produce only need to be correct; small is a bonus. We diff by lines: trim the
# common head and tail, then anchor on lines that occur once on each side (patience diff),
# falling back to difflib for small unanchored regions and to a plain replacement otherwise.

_SMALL_REGION = 400


def textdiff(a: bytes, b: bytes) -> bytes:
    """A delta that turns `a` into `b`."""
    if a == b:
        return b""
    if not a:
        return _pack_hunk(0, 0, len(b)) + b
    if not b:
        return _pack_hunk(0, len(a), 0)
    al = a.splitlines(True)
    bl = b.splitlines(True)
    aoff = [0, *itertools.accumulate(map(len, al))]
    boff = [0, *itertools.accumulate(map(len, bl))]
    out = []
    for i1, i2, j1, j2 in _changed_regions(al, bl):
        out.append(_pack_hunk(aoff[i1], aoff[i2], boff[j2] - boff[j1]))
        out.append(b[boff[j1]:boff[j2]])
    return b"".join(out)


def _changed_regions(a: list, b: list):
    """Yield (i1, i2, j1, j2): a[i1:i2] is replaced by b[j1:j2], in order, non-overlapping."""
    blocks = _matching_blocks(a, b)
    i = j = 0
    for mi, mj, size in blocks:
        if i < mi or j < mj:
            yield i, mi, j, mj
        i, j = mi + size, mj + size
    if i < len(a) or j < len(b):
        yield i, len(a), j, len(b)


def _matching_blocks(a: list, b: list) -> list:
    """Sorted, non-overlapping (i, j, size) runs of equal lines."""
    result = []
    stack = [(0, len(a), 0, len(b))]
    while stack:
        alo, ahi, blo, bhi = stack.pop()
        # common head and tail
        head = 0
        while alo + head < ahi and blo + head < bhi and a[alo + head] == b[blo + head]:
            head += 1
        if head:
            result.append((alo, blo, head))
            alo += head
            blo += head
        tail = 0
        while ahi - tail > alo and bhi - tail > blo and a[ahi - tail - 1] == b[bhi - tail - 1]:
            tail += 1
        if tail:
            result.append((ahi - tail, bhi - tail, tail))
            ahi -= tail
            bhi -= tail
        if alo >= ahi or blo >= bhi:
            continue
        anchors = _unique_anchors(a, alo, ahi, b, blo, bhi)
        if anchors:
            # recurse into the gaps between anchors (pushed so that order does not matter:
            # results are sorted at the end)
            pi, pj = alo, blo
            for ai, bj in anchors:
                result.append((ai, bj, 1))
                if pi < ai and pj < bj:
                    stack.append((pi, ai, pj, bj))
                pi, pj = ai + 1, bj + 1
            if pi < ahi and pj < bhi:
                stack.append((pi, ahi, pj, bhi))
        elif (ahi - alo) <= _SMALL_REGION and (bhi - blo) <= _SMALL_REGION:
            sm = difflib.SequenceMatcher(None, a[alo:ahi], b[blo:bhi], autojunk=False)
            for i, j, size in sm.get_matching_blocks():
                if size:
                    result.append((alo + i, blo + j, size))
        # else: no anchor in a large region: replace it whole
    result.sort()
    # merge adjacent runs
    merged: list[tuple[int, int, int]] = []
    for i, j, size in result:
        if merged and merged[-1][0] + merged[-1][2] == i and merged[-1][1] + merged[-1][2] == j:
            pi, pj, ps = merged[-1]
            merged[-1] = (pi, pj, ps + size)
        else:
            merged.append((i, j, size))
    return merged


def _unique_anchors(a, alo, ahi, b, blo, bhi) -> list:
    """Pairs (i, j) of lines unique in both ranges, forming the longest increasing sequence."""
    count_a: dict = {}
    for i in range(alo, ahi):
        line = a[i]
        count_a[line] = -1 if line in count_a else i
    pos_b: dict = {}
    for j in range(blo, bhi):
        line = b[j]
        if count_a.get(line, -1) >= 0:
            pos_b[line] = -1 if line in pos_b else j
    pairs = sorted((count_a[line], j) for line, j in pos_b.items() if j >= 0)
    if not pairs:
        return []
    # longest increasing subsequence of j (patience sorting)
    tails: list = []
    tails_idx: list = []
    prev = [-1] * len(pairs)
    for k, (_, j) in enumerate(pairs):
        pos = bisect.bisect_left(tails, j)
        if pos == len(tails):
            tails.append(j)
            tails_idx.append(k)
        else:
            tails[pos] = j
            tails_idx[pos] = k
        prev[k] = tails_idx[pos - 1] if pos else -1
    seq = []
    k = tails_idx[-1]
    while k >= 0:
        seq.append(pairs[k])
        k = prev[k]
    seq.reverse()
    return seq
