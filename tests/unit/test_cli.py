"""The admin commands as a new user meets them: run from the wrong directory, without a terminal."""

import asyncio
import hashlib
import os
import subprocess
import sys

import pytest

from lfsserve.admin import open_lfs
from lfsserve.config import load_config

from ..support import REPO_ROOT


def lfsserve(*args: str, cwd, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LFSSERVE_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run([sys.executable, "-m", "lfsserve", *args], cwd=cwd, env=env, text=True,
                          input=stdin if stdin is not None else "", capture_output=True, timeout=120)


@pytest.mark.parametrize("command", ["repos", "verify", "gc"])
def test_admin_commands_fail_without_a_data_directory_and_name_it(tmp_path, command):
    res = lfsserve(command, cwd=tmp_path)
    assert res.returncode == 1
    assert f"no data directory at {tmp_path / 'data'}" in res.stderr
    assert not (tmp_path / "data").exists()  # nothing created by looking
    res = lfsserve(command, "--root", str(tmp_path / "elsewhere"), cwd=tmp_path)
    assert res.returncode == 1 and str(tmp_path / "elsewhere") in res.stderr


def test_repos_names_the_directory_and_aligns_lfs_only_namespaces(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    res = lfsserve("repos", "--root", str(root), cwd=tmp_path)
    assert res.returncode == 0
    assert f"no repositories in {root / 'repos'}" in res.stdout and "lfsserve init" in res.stdout
    assert f"data directory: {root}" in res.stderr

    assert lfsserve("init", "--root", str(root), "ab", cwd=tmp_path).returncode == 0
    # An LFS-only namespace (objects uploaded with git-lfs, no hg repository).
    data = b"an object"

    async def upload():
        async def chunks():
            yield data
        async with open_lfs(load_config(env={"LFSSERVE_ROOT": str(root)})) as service:
            await service.receive("team/some-long-name", hashlib.sha256(data).hexdigest(), chunks())

    asyncio.run(upload())
    res = lfsserve("repos", "--root", str(root), cwd=tmp_path)
    lines = res.stdout.splitlines()
    assert lines[0].startswith("REPOSITORY") and any("(lfs only)" in ln for ln in lines)
    # Every column starts where its header does.
    assert len({len(ln) for ln in lines}) == 1, res.stdout


def test_adduser_without_a_terminal_points_at_password_stdin(tmp_path):
    htpasswd = tmp_path / "htpasswd"
    res = lfsserve("adduser", "--htpasswd", str(htpasswd), "bob", cwd=tmp_path)
    assert res.returncode != 0 and "Traceback" not in res.stderr and "EOFError" not in res.stderr
    assert "--password-stdin" in res.stderr and not htpasswd.exists()
    res = lfsserve("adduser", "--htpasswd", str(htpasswd), "--password-stdin", "bob", cwd=tmp_path,
                   stdin="s3cret\n")
    assert res.returncode == 0 and htpasswd.read_text().startswith("bob:$2")
