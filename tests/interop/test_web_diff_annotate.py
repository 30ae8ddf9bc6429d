"""The web UI's diff and annotate engine (lfsserve/hg/diff.py, annotate.py) against the real hg 7.2.4:
`hg export` (hg and git style) and `hg annotate` on every changeset of a varied repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lfsserve.hg import diff
from lfsserve.hg.annotate import AnnotateLimits, AnnotateTooExpensive, annotate
from lfsserve.hg.error import LookupError
from lfsserve.hg.repository import Repository
from tests.support import Hg

from .webdata_repo import NON_ASCII, build_webdata_repo

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def webrepo(tmp_path_factory) -> tuple[Hg, Path]:
    hg = Hg(tmp_path_factory.mktemp("hg-home"))
    return hg, build_webdata_repo(hg, tmp_path_factory.mktemp("web") / "repo")


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
        for rev in range(len(cl)):
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
