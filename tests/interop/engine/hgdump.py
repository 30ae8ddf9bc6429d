"""Dump every revision of a repository through Mercurial's own code (run with hg's Python).

Used by the engine tests as the reference: `python hgdump.py REPO` prints JSON with, for the
changelog, the manifest and every filelog: node, parents, linkrev, flags and the sha1 of the
raw text of every revision; plus phases, bookmarks, tags, branch heads, listkeys and the legacy
discovery answers of the served view (what a server shows), and `lookup` of any extra KEY args.
"""

import hashlib
import json
import sys

from mercurial import commands, extensions, hg  # noqa: F401 (commands: for extensions)
from mercurial import ui as uimod
from mercurial.node import hex, nullid


def revlog_dump(rl):
    out = []
    for rev in rl:
        p1, p2 = rl.parentrevs(rev)
        raw = rl.rawdata(rev)
        out.append([hex(rl.node(rev)).decode(), p1, p2, rl.linkrev(rev), rl.flags(rev),
                    hashlib.sha1(raw).hexdigest(), len(raw)])
    return out


def lookups(served, keys):
    """What the served view (the wire protocol's `lookup`) answers for each key."""
    out = {}
    for key in keys:
        try:
            out[key] = hex(served.lookup(key.encode())).decode()
        except Exception as exc:  # RepoLookupError, FilteredRepoLookupError...
            out[key] = "error: " + type(exc).__name__
    return out


def main(path, keys=()):
    u = uimod.ui.load()
    u.setconfig(b"extensions", b"lfs", b"")
    extensions.loadall(u)
    repo = hg.repository(u, path.encode())
    unfi = repo.unfiltered()
    served = repo.filtered(b"served")
    data = {
        "changelog": revlog_dump(unfi.changelog),
        "manifest": revlog_dump(unfi.manifestlog.getstorage(b"")._revlog),
        "files": {},
        "phases": [unfi[r].phase() for r in unfi],
        "heads": [hex(n).decode() for n in served.heads()],
        "branchmap": {b.decode(): [hex(n).decode() for n in served.branchmap().branchheads(b, closed=True)]
                      for b in served.branchmap()},
        "bookmarks": {k.decode(): hex(v).decode() for k, v in served._bookmarks.items()},
        "tags": {k.decode(): hex(v).decode() for k, v in served.tags().items()},
        "listkeys": {ns: {k.decode(): v.decode() for k, v in served.listkeys(ns.encode()).items()}
                     for ns in ("namespaces", "phases", "bookmarks")},
        # the legacy discovery commands, from every head down to the root
        "between": [[hex(n).decode() for n in found]
                    for found in served.between([(h, nullid) for h in served.heads()])],
        "branches": [[hex(n).decode() for n in b] for b in served.branches(served.heads())],
        "lookup": lookups(served, keys),
    }
    for entry in unfi.store.data_entries():
        if entry.is_filelog:
            fl = unfi.file(entry.target_id)
            data["files"][entry.target_id.decode("utf-8", "surrogateescape")] = revlog_dump(fl._revlog)
    json.dump(data, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
