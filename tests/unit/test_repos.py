import os

import pytest

from lfsserve.repos import RepoPathError, RepoRegistry


def make_repo(path):
    (path / ".hg").mkdir(parents=True)


def test_names_and_nesting(tmp_path):
    reg = RepoRegistry(tmp_path)
    for name in ["a", "team/b", "team/c/d"]:
        make_repo(tmp_path / name)
    (tmp_path / "a" / "sub").mkdir()
    (tmp_path / ".hidden" / ".hg").mkdir(parents=True)
    assert list(reg.names()) == ["a", "team/b", "team/c/d"]
    assert reg.exists("team/b") and not reg.exists("team") and not reg.exists("nope")
    with pytest.raises(RepoPathError, match="inside repository a"):
        reg.path_of("a/sub")
    assert reg.path_of("team/new") == tmp_path / "team" / "new"


def test_symlink_escape(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    make_repo(outside)
    os.symlink(outside, root / "link")
    reg = RepoRegistry(root)
    with pytest.raises(RepoPathError, match="outside"):
        reg.path_of("link")
    assert not reg.exists("link")


async def test_write_lock_shared_per_name(tmp_path):
    reg = RepoRegistry(tmp_path)
    a = reg.write_lock("x")
    assert reg.write_lock("x") is a and reg.write_lock("y") is not a
