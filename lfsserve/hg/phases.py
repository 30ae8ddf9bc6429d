"""Phases: public (0), draft (1), secret (2), plus the hidden archived (32) and internal (96).

`.hg/store/phaseroots` lists `<phase> <hex node>` lines: the roots of each non-public phase. A
changeset's phase is the highest phase of any root among its ancestors (itself included).
Secret, archived and internal changesets are never served.
"""

from __future__ import annotations

from typing import Iterable

from .node import NULLREV

__all__ = ["PUBLIC", "DRAFT", "SECRET", "ARCHIVED", "INTERNAL", "HIDDEN_FROM", "parse_phaseroots",
           "format_phaseroots", "compute_phases", "roots_for"]

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
