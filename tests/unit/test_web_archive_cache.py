"""The web UI's archive cache (lfsserve/web/archive.py ArchiveCache): kept, found, evicted LRU."""

from __future__ import annotations

import os

from lfsserve.web.archive import ArchiveCache


def _put(cache: ArchiveCache, key: str, data: bytes) -> None:
    f = cache.writer(key)
    assert f is not None
    f.write(data)
    cache.commit(f)


def test_archive_cache_keeps_finds_and_evicts(tmp_path):
    cache = ArchiveCache(tmp_path / "c", 100)
    k1, k2, k3 = (ArchiveCache.key("team/r", "ab" * 20, "gz", f"r-{i}", b"meta") for i in range(3))
    assert len({k1, k2, k3}) == 3 and ArchiveCache.key("team/r", "ab" * 20, "gz", "r-0", b"other") != k1
    assert cache.open(k1) is None
    _put(cache, k1, b"1" * 40)
    _put(cache, k2, b"2" * 40)
    os.utime(tmp_path / "c" / k1, (1, 1))
    os.utime(tmp_path / "c" / k2, (2, 2))
    f = cache.open(k1)  # used again: now the most recent
    assert f is not None and f.read() == b"1" * 40
    f.close()
    _put(cache, k3, b"3" * 40)  # 120 bytes > 100: the least recently used (k2) goes
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted([k1, k3])
    # one archive over the whole limit is not kept; an unfinished one leaves nothing behind
    _put(cache, "big", b"x" * 101)
    f = cache.writer("gone")
    assert f is not None
    f.write(b"partial")
    cache.discard(f)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted([k1, k3])
