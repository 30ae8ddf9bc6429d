"""Sending revisions of one revlog to a receiver: which delta each revision travels as.

The one policy behind both changegroup generation (wire v1, bundles) and the wire v2
`manifestdata`/`filedata`/`filesdata` commands (the role of Mercurial's `storageutil`
`emitrevisions`). Framing stays with each caller; this module only decides base and data.

A delta may only be against a revision the receiver has: one sent earlier in the same answer,
or (when the receiver is known to hold them) a parent. The stored delta is reused when its
base qualifies, because it costs a decompression where a fresh delta costs two full texts and
a diff. Bases carrying revision flags (lfs pointers) are never used: the receiver stores their
raw text differently.
"""

from __future__ import annotations

from .mdiff import textdiff
from .node import NULLREV
from .revlog import REVIDX_EXTSTORED, Revlog

__all__ = ["DeltaEmitter"]


class DeltaEmitter:
    """Chooses the delta of each revision sent from one revlog, in the order they are sent.

    against_previous: every revision is a delta against the one sent before it (against p1 for
    the first), as changegroup 01 requires. Otherwise the base is chosen per revision.
    have_parents: the receiver holds the parents of every revision sent.
    redelta_fulltexts: a revision stored as a full text goes as a fresh delta when a usable base
    exists (smaller, as hg does; costs a diff) instead of as the stored full text (cheap to
    produce). Changegroups keep full texts: clone CPU is their bottleneck; v2 re-deltas.
    """

    def __init__(self, rl: Revlog, *, against_previous: bool = False, have_parents: bool = True,
                 redelta_fulltexts: bool = False):
        self.rl = rl
        self.against_previous = against_previous
        self.have_parents = have_parents
        self.redelta_fulltexts = redelta_fulltexts
        self.sent: set[int] = set()
        self.prev = NULLREV

    def next(self, rev: int) -> tuple[int, bytes]:
        """(base, data) of `rev`, sent next: data is the full text when base is NULLREV, else a
        delta that turns the text of `base` into the text of `rev`."""
        base, data = self._choose(rev)
        self.sent.add(rev)
        self.prev = rev
        return base, data

    def _choose(self, rev: int) -> tuple[int, bytes]:
        rl = self.rl
        p1, p2 = rl.parentrevs(rev)
        if self.against_previous:
            base = self.prev if self.prev != NULLREV else p1
            if base != NULLREV and rl.deltaparent(rev) == base and not (rl.flags(base) | rl.flags(rev)):
                return base, rl.chunk(rev)
            text = rl.revision(rev)
            return (NULLREV, text) if base == NULLREV else (base, textdiff(rl.revision(base), text))
        if rl.flags(rev) & REVIDX_EXTSTORED:
            return NULLREV, rl.revision(rev)
        stored = rl.deltaparent(rev)
        if stored == NULLREV:
            if not self.redelta_fulltexts:
                return NULLREV, rl.chunk(rev)
        elif (stored in self.sent or (self.have_parents and stored in (p1, p2))) and not rl.flags(stored):
            return stored, rl.chunk(rev)
        # a full text, or a stored base the receiver may not have: a fresh delta against one it has
        text = rl.revision(rev)
        candidates = (p1, p2, self.prev) if self.have_parents else (self.prev,)
        for base in candidates:
            if base != NULLREV and not rl.flags(base):
                return base, textdiff(rl.revision(base), text)
        return NULLREV, text
