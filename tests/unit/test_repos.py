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


def test_creation_never_captures_existing_content(tmp_path):
    from lfsserve.repos import CannotCreate
    reg = RepoRegistry(tmp_path)
    make_repo(tmp_path / "team" / "app")
    with pytest.raises(CannotCreate, match="holds repository team/app"):
        reg.check_creatable("team")
    with pytest.raises(RepoPathError, match="inside repository team/app"):
        reg.check_creatable("team/app/sub")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    with pytest.raises(CannotCreate, match="not empty"):
        reg.check_creatable("notes")
    with pytest.raises(CannotCreate, match="not a directory"):
        reg.check_creatable("notes/todo.txt")
    (tmp_path / "empty").mkdir()
    assert reg.check_creatable("empty") == tmp_path / "empty"
    assert reg.check_creatable("team/new/deep") == tmp_path / "team" / "new" / "deep"


def test_failed_creation_removes_only_what_it_made(tmp_path):
    from lfsserve.repos import make_dirs, remove_created
    (tmp_path / "team").mkdir()
    target = tmp_path / "team" / "new" / "deep"
    made = make_dirs(target)
    assert made == [tmp_path / "team" / "new", target]
    make_repo(target)
    remove_created(target, made)
    assert sorted(os.listdir(tmp_path)) == ["team"] and os.listdir(tmp_path / "team") == []
    # something another request put next to ours stays, and so do its parents
    made = make_dirs(target)
    make_repo(target)
    make_repo(tmp_path / "team" / "new" / "other")
    remove_created(target, made)
    assert sorted(os.listdir(tmp_path / "team" / "new")) == ["other"]
    # an existing empty directory: only the .hg written into it goes
    (tmp_path / "empty").mkdir()
    assert make_dirs(tmp_path / "empty") == []
    make_repo(tmp_path / "empty")
    remove_created(tmp_path / "empty", [])
    assert (tmp_path / "empty").is_dir() and os.listdir(tmp_path / "empty") == []
