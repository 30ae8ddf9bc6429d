"""Build a synthetic repository quickly with Mercurial's own code (run with hg's Python).

    python hgbuild.py REPO CHANGESETS [--files N] [--desc BYTES] [--seed S] [--merges]

Commits in one transaction through Mercurial's in-memory commit API: text files edited a few
lines at a time, new files now and then, a named branch merged back every so often, descriptions
of about --desc bytes. Deterministic for a given seed. Used by the engine tests (revlogs big
enough to be split) and by bench/engine_bench.py (the 5,000-changeset repository).
"""

import argparse
import os
import random

from mercurial import context, hg
from mercurial import ui as uimod
from mercurial.node import nullid


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("changesets", type=int)
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--desc", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--merges", action="store_true")
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    u = uimod.ui.load()
    u.setconfig(b"ui", b"username", b"Builder <builder@example.com>")
    path = args.repo.encode()
    repo = hg.repository(u, path, create=not os.path.exists(os.path.join(args.repo, ".hg")))
    files: dict[bytes, list[bytes]] = {}
    names = [b"src/mod%03d/file%04d.txt" % (i % 17, i) for i in range(args.files)]

    def edit(name):
        lines = files.get(name)
        if lines is None:
            lines = files[name] = [b"%s line %d %d\n" % (name, i, rnd.randrange(10**6)) for i in range(40)]
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randrange(len(lines))
            op = rnd.random()
            if op < 0.6:
                lines[i] = b"edited %d\n" % rnd.randrange(10**9)
            elif op < 0.9:
                lines.insert(i, b"added %d\n" % rnd.randrange(10**9))
            elif len(lines) > 5:
                del lines[i]
        return b"".join(lines)

    with repo.wlock(), repo.lock(), repo.transaction(b"build"):
        default_tip = repo.changelog.tip()
        branch_tip = None
        for n in range(args.changesets):
            p1, p2 = default_tip, nullid
            branch = b"default"
            extra = {}
            k = n % 50
            if args.merges and k == 20:
                branch_tip = default_tip  # fork a named branch
            if args.merges and 20 <= k < 30 and branch_tip is not None:
                p1 = branch_tip
                branch = b"feature"
            if args.merges and k == 30 and branch_tip is not None:
                p2 = branch_tip  # merge it back
            touched = rnd.sample(names[: max(3, min(len(names), 5 + n // 2))], 3)
            contents = {name: edit(name) for name in touched}
            if p2 != nullid:
                contents[b"merged.txt"] = b"merge %d\n" % n
            desc = (b"change %d " % n) + bytes(rnd.choice(b"abcdefghij klmnop") for _ in range(args.desc))
            extra[b"branch"] = branch

            def filectx(repo_, mctx, path, contents=contents):
                return context.memfilectx(repo_, mctx, path, contents[path])

            ctx = context.memctx(repo, (p1, p2), desc, sorted(contents), filectx,
                                 date=(1_600_000_000 + n * 60, 0), extra=extra)
            node = ctx.commit()
            if branch == b"feature":
                branch_tip = node
            else:
                default_tip = node


if __name__ == "__main__":
    main()
