"""Helpers for the LFS interop tests: reading a server's store and log (its HTTP client is lfs_http.py)."""

from __future__ import annotations

import time
from pathlib import Path


def object_path(root: Path, oid: str) -> Path:
    return root / "lfs" / "objects" / oid[:2] / oid[2:4] / oid


def stored_oids(root: Path) -> set[str]:
    return {p.name for p in (root / "lfs" / "objects").glob("*/*/*")}


def temp_files(root: Path) -> list[Path]:
    tmp = root / "lfs" / "tmp"
    return list(tmp.iterdir()) if tmp.exists() else []


def corrupt(path: Path) -> None:
    path.chmod(0o644)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def count_in_log(server, needle: str, settle: float = 0.3) -> int:
    """Occurrences of `needle` in the server's output, once the access log has caught up."""
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        n = server.log().count(needle)
        if n != last:
            last, stable_since = n, time.monotonic()
        elif time.monotonic() - stable_since >= settle:
            break
        time.sleep(0.05)
    return last
