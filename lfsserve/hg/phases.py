"""Phases: public (0), draft (1), secret (2), plus the hidden archived (32) and internal (96).

`.hg/store/phaseroots` lists `<phase> <hex node>` lines: the roots of each non-public phase. A
changeset's phase is the highest phase of any root among its ancestors (itself included).
Secret, archived and internal changesets are never served.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import dagop
from .node import NULLREV

if TYPE_CHECKING:
    from .revlog import Index
    from .transaction import Transaction

__all__ = [
    "ARCHIVED",
    "DRAFT",
    "HIDDEN_FROM",
    "INTERNAL",
    "PUBLIC",
    "SECRET",
    "PhaseState",
    "advance",
    "compute_phases",
    "format_phaseroots",
    "mark_new_drafts",
    "parse_phaseroots",
    "retract",
    "roots_for",
]

PUBLIC, DRAFT, SECRET, ARCHIVED, INTERNAL = 0, 1, 2, 32, 96
ALL_PHASES = (PUBLIC, DRAFT, SECRET, ARCHIVED, INTERNAL)
HIDDEN_FROM = SECRET  # phases >= this are not served
NAMES = {PUBLIC: "public", DRAFT: "draft", SECRET: "secret", ARCHIVED: "archived", INTERNAL: "internal"}


def parse_phaseroots(data: bytes) -> list[tuple[int, bytes]]:
    """[(phase, node)] from phaseroots contents; malformed lines are skipped (as hg reports them)."""
    out = []
    for line in data.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        try:
            phase = int(parts[0])
            node = bytes.fromhex(parts[1].decode("ascii"))
        except ValueError:
            continue
        if len(node) == 20 and phase in ALL_PHASES and phase != PUBLIC:
            out.append((phase, node))
    return out


def format_phaseroots(roots: dict[int, Iterable[bytes]]) -> bytes:
    return b"".join(b"%d %s\n" % (phase, node.hex().encode())
                    for phase in sorted(roots) for node in sorted(roots[phase]))


def compute_phases(parents, roots: list[tuple[int, int]]) -> bytearray:
    """Phase of every revision, from [(phase, root rev)]."""
    n = len(parents)
    phase = bytearray(n)
    for p, r in roots:
        if 0 <= r < n and phase[r] < p:
            phase[r] = p
    for r in range(n):
        p1, p2 = parents[r]
        cur = phase[r]
        if p1 != NULLREV and phase[p1] > cur:
            cur = phase[p1]
        if p2 != NULLREV and phase[p2] > cur:
            cur = phase[p2]
        phase[r] = cur
    return phase


def roots_for(parents, phase: bytearray) -> dict[int, list[int]]:
    """Minimal roots describing `phase`: revs whose phase is higher than each parent's."""
    out: dict[int, list[int]] = {}
    for r in range(len(parents)):
        p = phase[r]
        if p == PUBLIC:
            continue
        p1, p2 = parents[r]
        parent_max = max(phase[p1] if p1 != NULLREV else 0, phase[p2] if p2 != NULLREV else 0)
        if p > parent_max:
            out.setdefault(p, []).append(r)
    return out



def advance(arr: bytearray, parents: Sequence[tuple[int, int]], revs: list[int], phase: int) -> None:
    """Move `revs` and their ancestors to `phase` or lower (public = 0), in place."""
    mask = dagop.ancestors_mask(parents, revs, len(parents))
    for r in range(len(parents)):
        if mask[r] and arr[r] > phase:
            arr[r] = phase


def retract(arr: bytearray, parents: Sequence[tuple[int, int]], revs: list[int], phase: int) -> None:
    """Move `revs` and their descendants to `phase` or higher, in place."""
    mask = dagop.descendants_mask(parents, revs)
    for r in range(len(parents)):
        if mask[r] and arr[r] < phase:
            arr[r] = phase


def mark_new_drafts(arr: bytearray, parents: Sequence[tuple[int, int]], first: int, count: int) -> None:
    """Revisions first..first+count-1 are new: draft, or their parents' phase if higher."""
    for r in range(first, first + count):
        p1, p2 = parents[r]
        arr[r] = max(DRAFT, arr[p1] if p1 >= 0 else 0, arr[p2] if p2 >= 0 else 0)


class PhaseState:
    """The phases of one repository: read from `phaseroots` (the array computed from them is
    kept with the changelog index, like every DAG-derived value), and the phases an open
    transaction changes, which `write` turns back into roots when it commits."""

    def __init__(self, path: Path):
        self.path = path
        # phases of every revision as the open transaction sees them (None: no change yet)
        self.pending: bytearray | None = None

    def read_roots(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""

    def array(self, index: Index, parents: Sequence[tuple[int, int]]) -> bytearray:
        """Phase of every revision of the changelog `index` (`parents`: its DAG)."""
        if self.pending is not None:
            return self.pending
        data = self.read_roots()
        got = index.derived.get("phases")
        if got is not None and got[0] == data:
            return got[1]
        nodemap = index.nodemap
        roots = [(p, nodemap[n]) for p, n in parse_phaseroots(data) if n in nodemap]
        arr = compute_phases(parents, roots)
        index.derived["phases"] = (data, arr)
        return arr

    def visible_mask(self, index: Index, parents: Sequence[tuple[int, int]]) -> bytearray:
        """1 for each served revision (phase below HIDDEN_FROM)."""
        arr = self.array(index, parents)
        if self.pending is None:
            got = index.derived.get("visible")
            if got is not None and got[0] is arr:
                return got[1]
        mask = bytearray(1 if p < HIDDEN_FROM else 0 for p in arr)
        if self.pending is None:
            index.derived["visible"] = (arr, mask)
        return mask

    def edit(self, current: bytearray, size: int) -> bytearray:
        """The transaction's phases, started from `current` on first use and grown to `size`
        revisions (revisions it adds are public until marked otherwise)."""
        if self.pending is None:
            self.pending = bytearray(current)
        if len(self.pending) < size:
            self.pending.extend(bytes(size - len(self.pending)))
        return self.pending

    def write(self, tr: Transaction, parents: Sequence[tuple[int, int]], nodes: list[bytes]) -> None:
        """Write the transaction's phases as roots, if that changes the file."""
        if self.pending is None:
            return
        roots = roots_for(parents, self.pending)
        data = format_phaseroots({p: [nodes[r] for r in rs] for p, rs in roots.items()})
        if data != self.read_roots():
            tr.replace_file(b"phaseroots", data)

    def pending_roots(self, parents: Sequence[tuple[int, int]], nodes: list[bytes]) -> bytes | None:
        """The phaseroots file the open transaction will write, or None if it changes no phase."""
        if self.pending is None:
            return None
        roots = roots_for(parents, self.pending)
        return format_phaseroots({p: [nodes[r] for r in rs] for p, rs in roots.items()})

    def reset(self) -> None:
        self.pending = None
