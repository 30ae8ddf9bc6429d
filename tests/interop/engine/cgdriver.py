"""Test-only driver: apply a changegroup file to a repository with lfsserve's engine.

    python cgdriver.py REPO CGFILE VERSION [--pause-at POINT] [--slow SECONDS] [--publish]

Prints "READY" when the lock is held and the transaction open, then "AT <point>" and sleeps at
the named point, so a test can SIGKILL it there:
  reading    while reading the changegroup (each read sleeps --slow seconds)
  files      after the file revisions are in, before the transaction closes
  state      after phaseroots/bookmarks/fncache are written, before the changelog is published
  published  after the changelog is published, before the journal is removed (the commit point)
Prints "DONE <return code>" on success.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from lfsserve.hg import changegroup, transaction
from lfsserve.hg.repository import Repository
from lfsserve.hg.revlog import RevlogWriter


def pause(args, point):
    if args.pause_at == point:
        print("AT", point, flush=True)
        time.sleep(3600)


class Slow:
    def __init__(self, f, delay, args):
        self.f, self.delay, self.args = f, delay, args
        self.n = 0

    def read(self, n):
        self.n += 1
        if self.n == 50:
            pause(self.args, "reading")
        if self.delay:
            time.sleep(self.delay)
        return self.f.read(n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("cgfile")
    ap.add_argument("version")
    ap.add_argument("--pause-at")
    ap.add_argument("--slow", type=float, default=0.0)
    ap.add_argument("--publish", action="store_true")
    args = ap.parse_args()

    orig_finalize_writer = changegroup.finalize_writer
    orig_finalize = RevlogWriter.finalize
    orig_close = transaction.Transaction.close

    def finalize_writer(repo, tr, writers):
        pause(args, "files")
        orig_finalize_writer(repo, tr, writers)

    def finalize(self):
        if self.delay:
            pause(args, "state")
        orig_finalize(self)
        if self.delay:
            pause(args, "published")

    changegroup.finalize_writer = finalize_writer
    RevlogWriter.finalize = finalize
    transaction.Transaction.close = orig_close

    repo = Repository.open(args.repo)
    with repo.lock(timeout=10), repo.transaction(b"push") as tr, open(args.cgfile, "rb") as f:
        print("READY", flush=True)
        res = repo.add_changegroup(tr, Slow(f, args.slow, args), args.version)
        if args.publish:
            repo.phases_advance(tr, 0, res.added)
    print("DONE", res.return_code, flush=True)


if __name__ == "__main__":
    main()
