"""Write the raw changegroup hg itself would send (run with hg's Python).

    python hgcg.py REPO VERSION OUTFILE [--common HEX]... [--heads HEX]...

Without --heads: every head of the served view. The output is the bare changegroup stream (what
a client pushes inside its bundle), produced by Mercurial's own changegroup packer.
"""

import argparse

from mercurial import changegroup, commands, discovery, extensions, hg  # noqa: F401
from mercurial import ui as uimod
from mercurial.node import bin


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("version")
    ap.add_argument("out")
    ap.add_argument("--common", action="append", default=[])
    ap.add_argument("--heads", action="append", default=[])
    args = ap.parse_args()
    u = uimod.ui.load()
    u.setconfig(b"extensions", b"lfs", b"")
    extensions.loadall(u)
    repo = hg.repository(u, args.repo.encode()).filtered(b"served")
    heads = [bin(h) for h in args.heads] or repo.heads()
    common = [bin(c) for c in args.common]
    out = discovery.outgoing(repo, common, heads)
    stream = changegroup.makestream(repo, out, args.version.encode(), b"push")
    with open(args.out, "wb") as f:
        for chunk in stream:
            f.write(chunk)


if __name__ == "__main__":
    main()
