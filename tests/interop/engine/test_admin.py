"""`lfsserve init` creates what `hg init` creates; `lfsserve verify` finds every kind of damage."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lfsserve.hg.repository import Repository
from lfsserve.hg.verify import verify
from tests.support import REPO_ROOT

pytestmark = pytest.mark.interop


def lfsserve_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LFSSERVE_")}
    return subprocess.run([sys.executable, "-m", "lfsserve", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def tree(path: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


def test_init_creates_what_hg_init_creates(tmp_path, session_hg):
    root = tmp_path / "root"
    res = lfsserve_cli("init", "--root", str(root), "team/app")
    assert res.returncode == 0, res.stderr
    session_hg("init", str(tmp_path / "byhg"))
    assert tree(root / "repos" / "team" / "app") == tree(tmp_path / "byhg")
    # hg works with it: commit in a clone, push back, and we read what hg wrote
    session_hg("clone", "-q", str(root / "repos" / "team" / "app"), str(tmp_path / "wc"))
    (tmp_path / "wc" / "f").write_text("hello\n")
    session_hg("commit", "-A", "-m", "first", cwd=tmp_path / "wc")
    session_hg("push", "-q", cwd=tmp_path / "wc")
    repo = Repository.open(root / "repos" / "team" / "app")
    assert repo.changelog.read(0).description == b"first"
    # refusals
    assert lfsserve_cli("init", "--root", str(root), "team/app").returncode == 1
    res = lfsserve_cli("init", "--root", str(root), "team/app/inner")
    assert res.returncode == 1 and "inside repository" in res.stderr
    res = lfsserve_cli("init", "--root", str(root), "withlfs", "--lfs")
    assert res.returncode == 0
    reqs = (root / "repos" / "withlfs" / ".hg" / "store" / "requires").read_text().split()
    assert "lfs" in reqs and Repository.open(root / "repos" / "withlfs").has_lfs


def test_verify_accepts_sound_repositories(built):
    for name, path in built.items():
        assert verify(Repository.open(path)) == [], name


def _chunk_span(repo: Repository, rl, rev: int) -> tuple[str, int, int]:
    """(file, offset, length) of a revision's stored chunk."""
    if rl.index.inline:
        return rl.index_path, rl.index.positions[rev], rl.length(rev)
    return rl.data_path, rl.start(rev), rl.length(rev)


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x55]))


@pytest.mark.parametrize("target", ["split filelog", "inline filelog", "manifest", "changelog", "index"])
def test_verify_names_the_flipped_byte(built, session_hg, tmp_path, target):
    root = tmp_path / "root"
    repo_path = root / "repos" / "broken"
    shutil.copytree(built["varied"], repo_path, symlinks=True)
    repo = Repository.open(repo_path)
    if target == "split filelog":
        rl, rev = repo.file(b"big.bin"), 3
    elif target == "inline filelog":
        rl, rev = repo.file(b"a.txt"), 2
    elif target == "manifest":
        rl, rev = repo.manifestlog.revlog, 6
    else:
        rl, rev = repo.changelog, 5
    if target == "index":
        # the first parent field of an index entry
        _flip(rl.index_path, rev * 64 + 27)
    else:
        path, offset, length = _chunk_span(repo, rl, rev)
        _flip(path, offset + length // 2)
    res = lfsserve_cli("verify", "--root", str(root))
    assert res.returncode == 1
    first = res.stderr.strip().splitlines()[-1]
    assert f"broken: {rl.name} revision {rev}" in first, res.stdout + res.stderr
    # hg agrees that the repository is damaged
    assert session_hg("verify", "-q", cwd=repo_path, check=False).returncode != 0


def test_verify_cross_checks(built, tmp_path):
    """Damage that every revision survives on its own: a missing filelog, a missing fncache entry."""
    path = tmp_path / "r"
    shutil.copytree(built["varied"], path, symlinks=True)
    repo = Repository.open(path)
    os.unlink(repo.file(b"copied.txt").index_path)
    problems = [str(p) for p in verify(Repository.open(path))]
    assert any("data/copied.txt.i" in p and "missing" in p for p in problems)
    fncache = path / ".hg" / "store" / "fncache"
    fncache.write_bytes(b"".join(line + b"\n" for line in fncache.read_bytes().splitlines()
                                 if line != b"data/a.txt.i"))
    problems = [str(p) for p in verify(Repository.open(path))]
    assert "data/a.txt.i: missing from the fncache" in problems


def test_verify_cli_reports_and_progress(built, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(built["synthetic"], root / "repos" / "a" / "synth", symlinks=True)
    res = lfsserve_cli("verify", "--root", str(root))
    assert res.returncode == 0
    assert "a/synth: ok (400 changesets" in res.stdout
    assert "\r" not in res.stderr  # no progress bar when stderr is not a terminal
    res = lfsserve_cli("verify", "--root", str(root), "nope")
    assert res.returncode == 1 and "nope" in res.stdout
