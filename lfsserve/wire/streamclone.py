"""Stream clones: the raw store files a client copies as they are, either in the legacy
`stream_out` answer or in a bundle2 `stream2` part. Plain synchronous code; no HTTP.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..hg import bundle2
from ..hg.bundle2 import OutPart
from ..hg.repository import Repository
from ..repos import ServedRepo, engine_repo
from .capabilities import stream_allowed, stream_requirements

__all__ = ["StreamPlan", "stream2_part", "stream_out", "stream_plan"]

STREAM_READ = 1024 * 1024


# Cache files hg itself copies in a stream clone (mercurial's cacheutil); the client checks each
# against the changelog before trusting it, so a stale one only costs it a recomputation.
_CACHE_FILE = re.compile(rb"(branch[23](-[a-z.-]+)?|rbc-names-v2|rbc-revs-v2|tags2(-[a-z.-]+)?|hgtagsfnodes1)\Z")
MAX_CACHE_FILE = 8 * 1024 * 1024


@dataclass
class StreamPlan:
    files: list[tuple[bytes, int]]          # store files, read from disk up to their size
    from_memory: dict[bytes, bytes]         # store files sent from a snapshot (phaseroots)
    caches: list[tuple[bytes, bytes]]       # .hg/cache files (stream2 only), snapshots

    def entries(self, stream2: bool) -> list[tuple[bytes, int]]:
        return self.files + ([(n, len(d)) for n, d in self.caches] if stream2 else [])


def stream_plan(repo: Repository) -> StreamPlan:
    """What a stream clone sends: the engine's store files with their sizes, plus, snapshotted
    under the lock: `phaseroots` when the server is not publishing (as hg; a publishing server
    leaves it out so the client sees everything public) and hg's cache files when present."""
    files = [(n, sz) for n, sz in repo.stream_files() if n != b"phaseroots"]
    memory: dict[bytes, bytes] = {}
    caches: list[tuple[bytes, bytes]] = []
    cache_dir = Path(repo.root) / ".hg" / "cache"
    with repo.lock():
        if not repo.publishing:
            try:
                with repo.open_store_file(b"phaseroots") as fh:
                    memory[b"phaseroots"] = fh.read()
            except FileNotFoundError:
                pass
        try:
            names = sorted(os.listdir(cache_dir))
        except (FileNotFoundError, NotADirectoryError):
            names = []
        for name in names:
            bname = os.fsencode(name)
            if not _CACHE_FILE.match(bname):
                continue
            try:
                with open(cache_dir / name, "rb") as fh:
                    data = fh.read(MAX_CACHE_FILE + 1)
            except OSError:
                continue
            if len(data) <= MAX_CACHE_FILE:
                caches.append((bname, data))
    files += [(n, len(d)) for n, d in memory.items()]
    return StreamPlan(files, memory, caches)


def stream2_part(repo: Repository, plan: StreamPlan) -> OutPart:
    entries = plan.entries(stream2=True)
    reqs = ",".join(stream_requirements(repo))
    params = [(b"requirements", urllib.parse.quote(reqs, safe="").encode("ascii")),
              (b"filecount", b"%d" % len(entries)), (b"bytecount", b"%d" % sum(sz for _, sz in entries))]
    return OutPart(b"STREAM2", params, data=_stream_file_data(repo, plan, stream2=True))


def _stream_file_data(repo: Repository, plan: StreamPlan, *, stream2: bool) -> Iterator[bytes]:
    for name, size in plan.files:
        bname = os.fsencode(name)
        yield (bundle2.stream2_entry_header(b"s", bname, size) if stream2
               else b"%s\0%d\n" % (bname, size))
        if name in plan.from_memory:
            yield plan.from_memory[name]
            continue
        yield from repo.read_store_file(name, size, STREAM_READ)
    if stream2:
        for name, data in plan.caches:
            yield bundle2.stream2_entry_header(b"c", name, len(data))
            yield data


def stream_out(config: Config, served: ServedRepo) -> Iterator[bytes]:
    """Legacy `stream_out`: `0\\n`, `<files> <bytes>\\n`, then `name\\0size\\n` + data per file."""
    if not stream_allowed(config, served):
        yield b"1\n"
        return
    repo = engine_repo(served)
    plan = stream_plan(repo)
    entries = plan.entries(stream2=False)
    yield b"0\n%d %d\n" % (len(entries), sum(size for _, size in entries))
    yield from _stream_file_data(repo, plan, stream2=False)
