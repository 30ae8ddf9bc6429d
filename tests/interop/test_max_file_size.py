"""hg.max_file_size: a push adding a big file to plain history is refused with what to do (real hg
shows it), nothing applied; the same file stored with LFS passes; a committed .hglfs makes every
clone store big files with LFS (the README's advice)."""

import os

import pytest

from ..support import Hg

pytestmark = pytest.mark.interop

MIB = 1024 * 1024
LFS_HGRC = "[extensions]\nlfs =\n"


def heads(hg: Hg, repo) -> str:
    return hg.out("log", "-R", str(repo), "-r", "all()", "-T", "{node}\n")


def test_big_plain_file_refused_same_file_via_lfs_accepted(lfsserve, hg, tmp_path):
    server = lfsserve(config=f"[hg]\nmax_file_size = {MIB}\ncreate_on_push = true\n")
    url = f"{server.url}/media"
    big = os.urandom(2 * MIB)

    work = tmp_path / "plain"
    hg("init", str(work))
    (work / "small.txt").write_text("fine\n")
    hg("commit", "-qAm", "small", "-u", "t", "-d", "1700000000 0", cwd=work)
    hg("push", url, cwd=work)
    before = heads(hg, server.root / "repos" / "media")

    (work / "big.bin").write_bytes(big)
    hg("commit", "-qAm", "big, plain", "-u", "t", "-d", "1700000060 0", cwd=work)
    res = hg("push", url, cwd=work, check=False)
    err = res.stderr.decode()
    assert res.returncode != 0
    assert "remote: big.bin is 2 MiB, over this server's limit of 1 MiB" in err and "hg.max_file_size" in err
    assert "abort: push failed on remote" in err
    assert ".hglfs" in err and 'size(">1MB")' in err and "lfs extension" in err
    assert heads(hg, server.root / "repos" / "media") == before  # nothing applied
    res = hg("push", "--config", "devel.legacy.exchange=bundle1", url, cwd=work, check=False)
    assert res.returncode != 0 and "hg.max_file_size" in (res.stdout + res.stderr).decode()
    assert heads(hg, server.root / "repos" / "media") == before
    hg("verify", "-R", str(server.root / "repos" / "media"))

    # The same file, committed with the lfs extension and a .hglfs rule: accepted.
    lfs = Hg(tmp_path / "lfs-home", hgrc=LFS_HGRC)
    src = tmp_path / "lfs"
    lfs("clone", "-q", url, str(src))
    (src / ".hglfs").write_text('[track]\n** = size(">1MB")\n')
    (src / "big.bin").write_bytes(big)
    lfs("commit", "-qAm", "big, lfs", "-u", "t", "-d", "1700000120 0", cwd=src)
    lfs("push", url, cwd=src)
    assert len(heads(hg, server.root / "repos" / "media").split()) == 2

    # A clone gets the .hglfs with the history: its next big file goes to LFS, and is accepted.
    clone = tmp_path / "clone"
    lfs("clone", "-q", url, str(clone))
    (clone / "other.bin").write_bytes(os.urandom(MIB + 1))
    lfs("commit", "-qAm", "another big one", "-u", "t", "-d", "1700000180 0", cwd=clone)
    lfs("push", url, cwd=clone)
    assert len(heads(hg, server.root / "repos" / "media").split()) == 3
    fresh = tmp_path / "fresh"
    lfs("clone", "-q", url, str(fresh))
    assert (fresh / "big.bin").read_bytes() == big


def test_limit_off_by_default(lfsserve, hg, tmp_path):
    server = lfsserve(config="[hg]\ncreate_on_push = true\n")
    work = tmp_path / "w"
    hg("init", str(work))
    (work / "big.bin").write_bytes(os.urandom(2 * MIB))
    hg("commit", "-qAm", "big", "-u", "t", cwd=work)
    hg("push", f"{server.url}/r", cwd=work)
