"""The web UI's data against the real hg 7.2.4, on a varied repository built once for the module.

The engine (lfsserve/hg/diff.py, annotate.py): `hg export` (hg and git style), `hg diff`,
`hg annotate` on every changeset. The machine endpoints on a real lfsserve: raw-file vs `hg cat`,
raw-rev vs `hg export`, archive/ vs `hg archive` (byte for byte), atom/rss feeds that parse; LFS
files resolved from the blob store; hgweb's allow_archive; private repositories invisible; hostile
revisions and paths answered 4xx. One server for the module."""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lfsserve.hg import annotate as annotatemod
from lfsserve.hg import diff
from lfsserve.hg.annotate import AnnotateLimits, AnnotateTooExpensive, annotate
from lfsserve.hg.error import LookupError
from lfsserve.hg.repository import Repository
from tests.support import Hg, start_lfsserve

from .lfs_http import request
from .webdata_repo import NON_ASCII, build_webdata_repo

pytestmark = pytest.mark.interop

LFS_CONTENT = b"large file content \x00\x01 " * 1000
CONFIG = """
[web]
allow_archive = ["gz", "bz2", "zip"]
[[auth.rules]]
repos = "private/**"
read = ["alice"]
"""


@pytest.fixture(scope="module")
def webrepo(tmp_path_factory) -> tuple[Hg, Path]:
    """The varied repository (webdata_repo.py), built once for the module; read-only."""
    base = tmp_path_factory.mktemp("webdata-repo")
    hg = Hg(base / "home")
    return hg, build_webdata_repo(hg, base / "repo")


@pytest.fixture(scope="module")
def site(tmp_path_factory, webrepo):
    base = tmp_path_factory.mktemp("webdata")
    hg, repo = webrepo
    server = start_lfsserve(base / "server", config=CONFIG)
    try:
        for name in ("team/repo", "private/repo", "gzonly/repo"):
            shutil.copytree(repo, server.root / "repos" / name, symlinks=True)
        (server.root / "repos" / "gzonly/repo/.hg/hgrc").write_text("[web]\nallow-archive = gz\nallowbz2 = yes\n")
        # an LFS repository made by hg with the lfs extension (pointers in its filelogs), its blob
        # uploaded to our store through the repository's namespace
        lfs_hg = Hg(base / "lfs-home", "[extensions]\nlfs =\n[lfs]\ntrack = path:big\n")
        lrepo = base / "lfsrepo"
        lfs_hg("init", str(lrepo))
        (lrepo / "big").mkdir()
        (lrepo / "big" / "blob.bin").write_bytes(LFS_CONTENT)
        (lrepo / "small.txt").write_text("small\n")
        lfs_hg("commit", "-q", "-A", "-m", "lfs files", "-d", "1600000000 0", cwd=lrepo)
        assert "lfs" in (lrepo / ".hg" / "requires").read_text() + (lrepo / ".hg/store/requires").read_text()
        shutil.copytree(lrepo, server.root / "repos" / "lfs" / "repo", symlinks=True)
        oid = hashlib.sha256(LFS_CONTENT).hexdigest()
        assert request(f"{server.url}/lfs/repo/.hg/lfs/objects/{oid}", "PUT", LFS_CONTENT)[0] in (200, 201)
        yield {"hg": hg, "repo": repo, "server": server, "lfs_hg": lfs_hg, "lfsrepo": lrepo, "base": base}
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()[-4000:]


@pytest.mark.parametrize("git", [False, True], ids=["hg-style", "git-style"])
def test_export_and_diffs_match_hg(webrepo, git: bool) -> None:
    hg, path = webrepo
    style = ["--git"] if git else []
    with Repository.open(path) as repo:
        cl = repo.changelog
        # one hg run for all changesets: the patches follow one another
        want = hg("export", "-R", str(path), "-r", "all()", *style).stdout.split(b"# HG changeset patch\n")[1:]
        assert len(want) == len(cl)
        for rev in range(len(cl)):
            node = cl.node(rev)
            patch = b"".join(diff.export_patch(repo, node, git=git))
            assert patch == b"# HG changeset patch\n" + want[rev], f"export of {rev}"
            # `hg diff -c` is the export's body
            body = patch[len(diff.export_header(repo, node)):]
            assert diff.changeset_diff(repo, node, git=git) == body
            assert b"".join(fd.text() for fd in diff.changeset_file_diffs(repo, node, git=git)) == body
        names = sorted(["src/main.py", NON_ASCII, "bin.dat", "empty", "lib/copy.py"], key=str.encode)
        want_files = hg("diff", "-R", str(path), "-r", "0", "-r", "tip", *style, *(str(path / n) for n in names)).stdout
        got = [diff.file_diff(repo, cl.node(0), cl.node(len(cl) - 1), n.encode(), git=git) for n in names]
        assert b"".join(fd.text() for fd in got if fd) == want_files
        assert diff.file_diff(repo, cl.node(0), cl.node(1), b"src/copy.py") is None  # in neither


def test_diff_pieces_and_bounds(webrepo) -> None:
    _, path = webrepo
    with Repository.open(path) as repo:
        cl = repo.changelog
        node = cl.node(2)  # copy, renames, a removal, an empty file
        ops = {(fd.path1, fd.path2): fd.op for fd in diff.changeset_file_diffs(repo, node, git=True)}
        assert ops[(b"README", b"README.txt")] == "renamed"
        assert ops[(b"src/main.py", b"src/copy.py")] == "copied"
        assert ops[(b"no-eol.txt", b"no-eol.txt")] == "removed"
        small = diff.DiffLimits(max_file_bytes=100, max_output_bytes=10**6)
        big = [fd for fd in diff.changeset_file_diffs(repo, cl.node(1), limits=small) if fd.too_large]
        assert {fd.path2 for fd in big} >= {b"src/main.py", b"bin.dat"}
        with pytest.raises(diff.DiffTooLarge):
            diff.changeset_diff(repo, cl.node(1), limits=small)
        with pytest.raises(diff.DiffTooLarge):
            list(diff.export_patch(repo, cl.node(1), limits=diff.DiffLimits(max_output_bytes=500)))


def test_annotate_matches_hg(webrepo) -> None:
    hg, path = webrepo
    with Repository.open(path) as repo:
        cl = repo.changelog
        for rev in (2, 5, 6):  # copies and renames, a merge, a rename with edits
            node = cl.node(rev)
            files = sorted(repo.manifestlog.read(cl.read(rev).manifest))
            want = json.loads(hg("annotate", "-Tjson", "-n", "-c", "-u", "-l", "-r", str(rev),
                                 *[f.decode() for f in files], cwd=path).stdout)
            assert len(want) == len(files)
            for item in want:
                res = annotate(repo, node, item["path"].encode())
                got = [{"line": ln.text.decode(), "lineno": ln.lineno, "node": ln.node.hex(), "rev": ln.rev,
                        "user": ln.user.decode()} for ln in res.lines]
                assert res.binary == (item["path"] == "bin.dat" and rev < 6)
                assert got == item.get("lines", []), (rev, item["path"])
        # the renamed copy is followed back to the lines of src/main.py in changeset 0
        res = annotate(repo, cl.node(len(cl) - 1), b"lib/copy.py")
        assert res.lines[1].path == b"src/main.py" and res.lines[1].rev == 0
        assert res.lines[0].path == b"lib/copy.py"
        unfollowed = annotate(repo, cl.node(len(cl) - 1), b"lib/copy.py", follow=False)
        assert {ln.rev for ln in unfollowed.lines} == {len(cl) - 1}
        with pytest.raises(AnnotateTooExpensive):
            annotate(repo, cl.node(len(cl) - 1), b"src/main.py", limits=AnnotateLimits(max_file_revisions=2))
        with pytest.raises(LookupError):
            annotate(repo, cl.node(0), b"no/such/file")


def get(site, path: str, headers: dict | None = None):
    return request(site["server"].url + path, headers=headers)


def nodes(hg: Hg, repo: Path) -> list[str]:
    return hg.out("log", "-R", str(repo), "-r", "all()", "-T", "{node}\n").split()


def test_raw_file_matches_hg_cat(site):
    hg, repo = site["hg"], site["repo"]
    all_nodes = nodes(hg, repo)
    for rev in (0, len(all_nodes) - 1):
        node = all_nodes[rev]
        files = hg.out("files", "-R", str(repo), "-r", node, "-T", "{path}\n").splitlines()
        out = site["base"] / f"cat{rev}"
        hg("cat", "-r", node, "-o", str(out / "%p"), *[f"path:{f}" for f in files], cwd=repo)
        for f in files:
            status, headers, body = get(site, f"/team/repo/raw-file/{node}/{urllib.parse.quote(f)}")
            assert status == 200, (f, body[:200])
            assert body == (out / f).read_bytes(), f
            assert "immutable" in headers["Cache-Control"] and headers["ETag"]
            assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, body = get(site, "/team/repo/raw-file/tip/" + urllib.parse.quote(NON_ASCII))
    assert status == 200 and body == (repo / NON_ASCII).read_bytes()
    assert headers["Content-Type"] == "text/plain; charset=utf-8" and "Cache-Control" not in headers
    status, headers, _ = get(site, "/team/repo/raw-file/1/bin.dat")
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    # `file?style=raw` is the same endpoint (hgweb's spelling)
    assert get(site, "/team/repo/file/tip/src/main.py?style=raw")[2] == (repo / "src/main.py").read_bytes()
    # a revalidation of an immutable URL costs nothing
    url = f"/team/repo/raw-file/{all_nodes[0]}/README"
    etag = get(site, url)[1]["ETag"]
    assert get(site, url, {"If-None-Match": etag})[0] == 304


def test_raw_rev_matches_hg_export(site):
    hg, repo = site["hg"], site["repo"]
    want = hg("export", "-R", str(repo), "-r", "all()").stdout.split(b"# HG changeset patch\n")[1:]
    for rev, node in enumerate(nodes(hg, repo)):
        status, headers, body = get(site, f"/team/repo/raw-rev/{node}")
        assert status == 200 and body == b"# HG changeset patch\n" + want[rev], rev
        assert headers["Content-Type"].startswith("text/plain")
    git = hg("export", "--git", "-R", str(repo), "-r", "2").stdout
    assert get(site, "/team/repo/raw-rev/2?git=1")[2] == git
    assert get(site, "/team/repo/rev/2?style=raw")[2].startswith(b"# HG changeset patch\n")


def test_archive_identical_to_hg_archive(site):
    hg, repo = site["hg"], site["repo"]
    node = nodes(hg, repo)[-1]
    for suffix, kind in ((".tar.gz", "tgz"), (".tar.bz2", "tbz2"), (".zip", "zip")):
        status, headers, body = get(site, f"/team/repo/archive/{node}{suffix}")
        assert status == 200, body[:300]
        want = hg("archive", "-R", str(repo), "-r", node, "-t", kind, "-p", f"repo-{node[:12]}", "-").stdout
        assert body == want, suffix
        assert headers["Content-Disposition"] == f'attachment; filename="repo-{node[:12]}{suffix}"'
    # asked again: sent from the archive cache, the same bytes
    cached = sorted((site["server"].root / "cache" / "web-archives").iterdir())
    assert len(cached) >= 3 and not [p for p in cached if p.name.endswith(".tmp")]
    for p in cached:
        os.utime(p, (0, 0))
    assert get(site, f"/team/repo/archive/{node}.zip")[2] == want
    assert len([p for p in cached if p.stat().st_mtime > 0]) == 1  # the one sent was marked used
    # a symbolic name is the archive's prefix, as in hgweb; .hg_archival.txt names the latest tag
    body = get(site, "/team/repo/archive/stable.tar.gz")[2]
    assert body == hg("archive", "-R", str(repo), "-r", "stable", "-t", "tgz", "-p", "repo-stable", "-").stdout


def test_archive_allowed_per_repository(site):
    assert get(site, "/gzonly/repo/archive/tip.tar.gz")[0] == 200
    assert get(site, "/gzonly/repo/archive/tip.tar.bz2")[0] == 200
    status, _, body = get(site, "/gzonly/repo/archive/tip.zip")
    assert status == 403 and b"Archive type not allowed" in body
    assert get(site, "/team/repo/archive/tip.tar.xz")[0] == 404


def test_lfs_files_resolved(site):
    lfs_hg, lrepo = site["lfs_hg"], site["lfsrepo"]
    status, headers, body = get(site, "/lfs/repo/raw-file/tip/big/blob.bin")
    assert status == 200 and body == LFS_CONTENT
    assert headers["Content-Length"] == str(len(LFS_CONTENT))
    assert get(site, "/lfs/repo/raw-file/tip/small.txt")[2] == b"small\n"
    node = lfs_hg.out("log", "-R", str(lrepo), "-r", "tip", "-T", "{node}")
    # raw-rev diffs the content, not the pointer (binary here, as hg export with the lfs extension says)
    assert get(site, "/lfs/repo/raw-rev/tip")[2] == lfs_hg("export", "-R", str(lrepo), "-r", "tip").stdout
    # the same history under another path: its namespace never received the blob, so nothing
    # of it is served there, and the archive is refused before it starts
    shutil.copytree(site["server"].root / "repos" / "lfs" / "repo", site["server"].root / "repos" / "lfs" / "copy",
                    symlinks=True)
    status, _, body = get(site, "/lfs/copy/raw-file/tip/big/blob.bin")
    assert status == 404 and b"not in this server" in body, (status, body[:300])
    status, _, body = get(site, "/lfs/copy/archive/tip.zip")
    assert status == 404 and b"not in this server" in body
    # many at once: writers waiting for blobs must not starve the threads the blob reads need
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: get(site, "/lfs/repo/archive/tip.tar.gz"), range(12)))
    assert {(status, body) for status, _, body in answers} == {(200, answers[0][2])}
    body = get(site, f"/lfs/repo/archive/{node}.zip")[2]
    assert body == lfs_hg("archive", "-R", str(lrepo), "-r", node, "-t", "zip", "-p", f"repo-{node[:12]}", "-").stdout


def test_feeds_parse(site):
    hg, repo = site["hg"], site["repo"]
    descs = hg.out("log", "-R", str(repo), "-l", "3", "-T", "{branch}\t{desc|firstline}\n").splitlines()
    status, headers, body = get(site, "/team/repo/atom-log?revcount=3")
    assert status == 200 and headers["Content-Type"].startswith("application/atom+xml")
    ns = {"a": "http://www.w3.org/2005/Atom"}
    feed = ET.fromstring(body)
    titles = [e.findtext("a:title", namespaces=ns) for e in feed.findall("a:entry", ns)]
    assert titles == [f"[{d.split(chr(9))[0]}] {d.split(chr(9))[1]}" for d in descs]
    assert feed.find("a:entry/a:author/a:email", ns).text.endswith("@example.com")
    status, headers, body = get(site, "/team/repo/rss-log")
    assert status == 200 and headers["Content-Type"].startswith("application/rss+xml")
    items = ET.fromstring(body).findall("channel/item")
    assert len(items) == len(nodes(hg, repo)) and items[0].findtext("link").endswith("/team/repo/rev/" +
                                                                                     nodes(hg, repo)[-1][:12])


def test_private_and_hostile(site):
    for path in ("raw-file/tip/README.txt", "raw-rev/tip", "archive/tip.tar.gz", "atom-log", "rss-log"):
        status, _, body = get(site, f"/private/repo/{path}")
        assert status == 404 and b"README" not in body, path
        assert get(site, f"/nosuch/repo/{path}")[0] == 404
    for path in ("raw-file/tip/../../etc/passwd", "raw-file/tip/%2e%2e/x", "raw-file/tip/a%00b",
                 "raw-file/" + "f" * 300 + "/README.txt", "raw-file/no-such-rev/README.txt", "raw-file/tip/nope",
                 "raw-file/tip", "raw-file/tip/src", "raw-rev/no-such-rev", "raw-rev/tip/extra", "raw-rev/null",
                 "archive/no-such-rev.zip", "archive/.zip", "archive/tip", "archive/tip.zip/sub", "archive/null.zip",
                 "atom-log/no-such-rev", "rss-log?revcount=0", "rss-log?revcount=x", "raw-file/\u00e9\u00e9/x",
                 "raw-file/tip/" + "x/" * 3000):
        status, _, body = get(site, "/team/repo/" + urllib.parse.quote(path, safe="/%?="))
        assert 400 <= status < 500, (path, status, body[:200])


REPEATED_SCRIPT = r'''
import random, sys
from mercurial import context, hg, ui as uimod
from mercurial.node import nullid
rng = random.Random(11)
u = uimod.ui.load()
repo = hg.repository(u, sys.argv[1].encode(), create=True)
vocab = [b"\n", b"}\n", b"{\n", b"    return x\n", b"    pass\n", b"# note\n", b"x = 1\n"]
lines = [rng.choice(vocab) if rng.random() < 0.6 else b"unique %d\n" % i for i in range(150)]
p1 = nullid
with repo.wlock(), repo.lock(), repo.transaction(b"t"):
    for i in range(60):
        if i:
            for _ in range(rng.randint(1, 4)):
                k = rng.randrange(len(lines))
                op = rng.randrange(4)
                if op == 0:
                    lines[k] = rng.choice(vocab)
                elif op == 1:
                    lines[k:k] = [rng.choice(vocab) for _ in range(rng.randint(1, 3))]
                elif op == 2:
                    del lines[k:k + rng.randint(1, 4)]
                else:
                    lines[k] = b"rev %d line %d\n" % (i, k)
        data = b"".join(lines) + (b"no newline" if i % 7 == 3 else b"")
        names = [b"f.txt"] + ([b"g.txt"] if i == 30 else [])
        def filectx(repo, mctx, p, _d=data):
            if p == b"g.txt":  # a copy of f.txt, edited afterwards in the history of neither
                return context.memfilectx(repo, mctx, p, _d, copysource=b"f.txt")
            return context.memfilectx(repo, mctx, p, _d)
        ctx = context.memctx(repo, (p1, nullid), b"edit %d" % i, names, filectx,
                             user=b"U%d <u@example.com>" % (i % 3), date=(1700000000 + i, 0))
        p1 = ctx.commit()
'''


def test_annotate_repeated_lines_matches_hg(tmp_path) -> None:
    """A file of mostly repeated lines (blank lines, braces) edited 60 times by hg, then copied:
    annotate, reading some line diffs off the deltas hg stored and matching the others, agrees
    with `hg annotate`."""
    hg = Hg(tmp_path / "home")
    path = tmp_path / "repeated"
    subprocess.run([sys.executable, "-c", REPEATED_SCRIPT, str(path)], check=True, env=hg.env)
    with Repository.open(path) as repo:
        cl = repo.changelog
        fl = repo.file(b"f.txt")
        olds = [fl.revision(r) for r in range(len(fl) - 1)]
        from_deltas = sum(annotatemod._delta_blocks(fl, r + 1, r, old, annotatemod._line_count(old),
                                                    collections.Counter(diff.line_keys(old))) is not None
                          for r, old in enumerate(olds))
        # edits of unique lines are read off the deltas, those moving repeated lines are matched
        assert 0 < from_deltas < len(fl) - 1
        for rev, name in ((15, "f.txt"), (44, "f.txt"), (len(cl) - 1, "f.txt"), (len(cl) - 1, "g.txt")):
            want = json.loads(hg("annotate", "-Tjson", "-n", "-c", "-u", "-l", "-r", str(rev), name,
                                 cwd=path).stdout)[0]["lines"]
            res = annotate(repo, cl.node(rev), name.encode())
            got = [{"line": ln.text.decode(), "lineno": ln.lineno, "node": ln.node.hex(), "rev": ln.rev,
                    "user": ln.user.decode()} for ln in res.lines]
            assert got == want, (rev, name)
