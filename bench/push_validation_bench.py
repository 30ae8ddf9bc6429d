"""Cost of validating pushed manifest revisions (issue 10 part 4): whole text vs. what the delta touched.

Builds a flat manifest of FILES entries and REVS revisions, each a small line-aligned delta
against the previous one (as hg sends them: a few file nodes changed, one file added), and times
in-process, per revision:

- full: what `on_manifest` did before: `check_manifest` on the whole text plus `changed_entries`
  of the delta;
- delta: what it does now: `check_manifest_delta` (the checks limited to the lines the delta
  touched) and `line_aligned` (whether the delta can be stored as received);
- for scale, what every pushed revision costs anyway: applying the delta and hashing the text.

    PYTHONPATH=$PWD python bench/push_validation_bench.py [FILES] [REVS]
"""

from __future__ import annotations

import bisect
import hashlib
import random
import struct
import sys
import time

from lfsserve.hg.manifest import changed_entries, check_manifest, check_manifest_delta, line_aligned
from lfsserve.hg.mdiff import patch


def entry(path: bytes, rnd: random.Random) -> bytes:
    return path + b"\0" + rnd.randbytes(20).hex().encode() + rnd.choice([b"", b"", b"x"]) + b"\n"


def revisions(files: int, revs: int, rnd: random.Random):
    """(first text, [delta]), each delta changing 3 entries of the previous text and adding one."""
    paths = sorted(b"src/mod%03d/pkg%02d/file%06d.py" % (i % 997, i % 37, i) for i in range(files))
    text = b"".join(entry(p, rnd) for p in paths)
    base = text
    out = []
    def line_start(path: bytes) -> int:
        return 0 if text.startswith(path + b"\0") else text.index(b"\n" + path + b"\0") + 1

    for r in range(revs):
        hunks = []
        for i in sorted(rnd.sample(range(len(paths)), 3)):
            s = line_start(paths[i])
            hunks.append((s, text.index(b"\n", s) + 1, entry(paths[i], rnd)))
        new_path = b"src/new/r%05d.py" % r
        at = bisect.bisect(paths, new_path)
        pos = line_start(paths[at]) if at < len(paths) else len(text)
        hunks.append((pos, pos, entry(new_path, rnd)))
        paths.insert(at, new_path)
        hunks.sort()
        delta = b"".join(struct.pack(">lll", s, e, len(d)) + d for s, e, d in hunks)
        out.append(delta)
        text = patch(text, delta)
    return base, out


def main() -> None:
    files = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    revs = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    base, revisions_ = revisions(files, revs, random.Random(0))
    check_manifest(base)
    print(f"manifest: {files} files, {len(base) / 2**20:.1f} MiB; {revs} revisions, "
          f"deltas of {sum(map(len, revisions_)) / revs:.0f} bytes on average")

    def timed(label: str, fn) -> float:
        dt, text = 0.0, base  # the texts are rebuilt on the way, not all held (~1.4 GB)
        for delta in revisions_:
            prev, text = text, patch(text, delta)
            t0 = time.perf_counter()
            fn(prev, delta, text)
            dt += time.perf_counter() - t0
        print(f"{label:<42} {dt:8.3f} s total  {dt / revs * 1000:9.3f} ms/revision")
        return dt

    def full(_base, delta, text):
        check_manifest(text)
        changed_entries(delta)

    def incremental(base, delta, text):
        check_manifest_delta(text, delta)
        assert line_aligned(base, delta)

    def inherent(base, delta, _text):
        hashlib.sha1(patch(base, delta)).digest()

    old = timed("full check (before)", full)
    new = timed("check_manifest_delta (after)", incremental)
    timed("patch + sha1 (every revision, for scale)", inherent)
    print(f"speed-up of the validation: {old / new:.0f}x")


if __name__ == "__main__":
    main()
