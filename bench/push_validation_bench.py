"""Cost of validating pushed manifest revisions (issue 10 part 4): whole text vs. what the delta touched.

Builds a flat manifest of FILES entries and REVS revisions, each a small line-aligned delta
against the previous one (as hg sends them: a few file nodes changed, one file added), and times
in-process, per revision:

- full: what `on_manifest` did before: `check_manifest` on the whole text plus `changed_entries`
  of the delta;
- delta: `check_manifest_delta` (the checks limited to the lines the delta touched);
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

from lfsserve.hg.manifest import changed_entries, check_manifest, check_manifest_delta
from lfsserve.hg.mdiff import patch


def entry(path: bytes, rnd: random.Random) -> bytes:
    return path + b"\0" + rnd.randbytes(20).hex().encode() + rnd.choice([b"", b"", b"x"]) + b"\n"


def revisions(files: int, revs: int, rnd: random.Random):
    """(base text, [(delta, new text)]), each delta changing 3 entries and adding one."""
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
        text = patch(text, delta)
        out.append((delta, text))
    return base, out


def main() -> None:
    files = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    revs = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    base, revisions_ = revisions(files, revs, random.Random(0))
    check_manifest(base)
    print(f"manifest: {files} files, {len(base) / 2**20:.1f} MiB; {revs} revisions, "
          f"deltas of {sum(len(d) for d, _ in revisions_) / revs:.0f} bytes on average")

    def timed(label: str, fn) -> float:
        t0 = time.perf_counter()
        for delta, text in revisions_:
            fn(delta, text)
        dt = time.perf_counter() - t0
        print(f"{label:<42} {dt:8.3f} s total  {dt / revs * 1000:9.3f} ms/revision")
        return dt

    def full(delta, text):
        check_manifest(text)
        changed_entries(delta)

    def incremental(delta, text):
        check_manifest_delta(text, delta)

    prev = [base]

    def inherent(delta, text):
        new = patch(prev[0], delta)
        hashlib.sha1(new).digest()
        prev[0] = new

    old = timed("full check (before)", full)
    new = timed("check_manifest_delta (after)", incremental)
    timed("patch + sha1 (every revision, for scale)", inherent)
    print(f"speed-up of the validation: {old / new:.0f}x")


if __name__ == "__main__":
    main()
