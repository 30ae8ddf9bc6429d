"""Real git-lfs 3.x against a real `lfsserve serve`: push --all, pull, a 25 MB object, locks, auth.

The git remote is a local bare repository; `lfs.url` points git-lfs at lfsserve. git and git-lfs
run with their own HOME and global config, so the developer's settings play no part.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import bcrypt
import pytest

from ..support import oid_of, require_program, run
from .lfs_util import count_in_log, object_path, stored_oids, temp_files

pytestmark = pytest.mark.interop


class Git:
    def __init__(self, home: Path):
        home.mkdir(parents=True, exist_ok=True)
        self.git = require_program("git", "apt-get install -y git")
        require_program("git-lfs", "apt-get install -y git-lfs")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "LFSSERVE_"))}
        self.env.update({"HOME": str(home), "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
                         "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", "LANG": "C"})
        self("config", "--global", "user.name", "Test User")
        self("config", "--global", "user.email", "test@example.com")
        self("config", "--global", "init.defaultBranch", "main")
        self("lfs", "install", "--skip-repo")

    def __call__(self, *args: str, cwd: Path | None = None, check: bool = True, env: dict | None = None):
        return run([self.git, *args], cwd=cwd, env={**self.env, **(env or {})}, check=check, timeout=300)

    def out(self, *args: str, cwd: Path | None = None) -> str:
        res = self(*args, cwd=cwd)
        return (res.stdout + res.stderr).decode()


def _random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_git_lfs_push_all_pull_and_locks(lfsserve, tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode() + "\n"
                        "bob:" + bcrypt.hashpw(b"builder", bcrypt.gensalt(4)).decode() + "\n")
    server = lfsserve(anonymous="none", config=f"""
[auth]
htpasswd = "{htpasswd}"
[[auth.rules]]
repos = "team/**"
read = ["bob"]
write = ["alice"]
""")
    git = Git(tmp_path / "home")
    host = server.url.split("//")[1]
    creds = tmp_path / "credentials"
    creds.write_text(f"http://alice:wonderland@{host}\n")
    git("config", "--global", "credential.helper", f"store --file={creds}")
    lfs_url = f"{server.url}/team/game.git/info/lfs"

    remote, work = tmp_path / "remote.git", tmp_path / "work"
    git("init", "-q", "--bare", str(remote))
    git("init", "-q", str(work))
    git("lfs", "install", "--local", cwd=work)
    git("config", "lfs.url", lfs_url, cwd=work)
    git("remote", "add", "origin", str(remote), cwd=work)
    git("lfs", "track", "*.bin", cwd=work)
    big = _random_bytes(25 * 1024 * 1024, 1)
    small = b"small lfs object\n"
    (work / "big.bin").write_bytes(big)
    (work / "small.bin").write_bytes(small)
    (work / "notes.txt").write_text("not in lfs\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "assets", cwd=work)

    out = git.out("lfs", "push", "--all", "origin", cwd=work)
    assert count_in_log(server, 'HTTP/1.1" 401') >= 1  # challenged, then used the credential helper
    assert stored_oids(server.root) == {oid_of(big), oid_of(small)}, out
    assert object_path(server.root, oid_of(big)).read_bytes() == big
    # git-lfs got no verify action (the PUT is answered only once the object is checked and
    # stored, see lfs/adapters.py): one request per object, and none to the verify endpoint.
    assert count_in_log(server, "/.hg/lfs/verify") == 0
    assert count_in_log(server, '"PUT /team/game/.hg/lfs/objects/') == 2
    # git push runs the pre-push hook: lock verification, then nothing left to upload.
    puts_before = count_in_log(server, '"PUT ')
    git("push", "-q", "origin", "main", cwd=work)
    assert count_in_log(server, '"PUT ') == puts_before

    clone = tmp_path / "clone"
    git("clone", "-q", str(remote), str(clone), env={"GIT_LFS_SKIP_SMUDGE": "1"})
    git("config", "lfs.url", lfs_url, cwd=clone)
    assert (clone / "big.bin").read_bytes().startswith(b"version https://git-lfs.github.com/spec/v1")
    git("lfs", "pull", cwd=clone)
    assert (clone / "big.bin").read_bytes() == big and (clone / "small.bin").read_bytes() == small

    # File locking.
    assert "Locked small.bin" in git.out("lfs", "lock", "small.bin", cwd=work)
    listing = git.out("lfs", "locks", cwd=clone)
    assert "small.bin" in listing and "alice" in listing
    git("lfs", "unlock", "small.bin", cwd=work)
    assert "small.bin" not in git.out("lfs", "locks", cwd=clone)
    assert temp_files(server.root) == []

    # A reader cannot upload: git-lfs reports the refusal and the server stores nothing new.
    creds.write_text(f"http://bob:builder@{host}\n")
    (clone / "new.bin").write_bytes(b"bob's new object\n")
    git("add", "new.bin", cwd=clone)
    git("commit", "-q", "-m", "bob", cwd=clone)
    refusals = count_in_log(server, 'objects/batch HTTP/1.1" 403')
    res = git("lfs", "push", "--all", "origin", cwd=clone, check=False)
    assert res.returncode != 0
    assert count_in_log(server, 'objects/batch HTTP/1.1" 403') > refusals
    assert oid_of(b"bob's new object\n") not in stored_oids(server.root)
    assert "Traceback" not in server.log()
