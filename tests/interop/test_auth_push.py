"""Pushing with a password under the default configuration (issue 10, part 1), with real hg.

The setup is the README's: anonymous clients may read (the default), users in an htpasswd file
made by `lfsserve adduser --password-stdin`, `auth.authenticated = "write"`, and the client's
password in an `[auth]` section of the clone's .hg/hgrc, or in the URL. hg learns that it needs
credentials only from the 401 on `unbundle`, and then sends the same request again: that retry
must carry the whole push. Every hg command runs with a timeout, so a server waiting for a body
that never comes fails the test instead of hanging the suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..support import REPO_ROOT, Hg
from .lfs_util import oid_of, stored_oids

pytestmark = pytest.mark.interop

PASSWORD = "s3cret pass"
# Long enough for a loaded 2-core machine; a hang is forever.
TIMEOUT = 120
BIG = b"large file content\n" * 4000  # 76 KB, above the lfs.track threshold below


def lfsserve_cli(*args: str, input: bytes | None = None) -> str:
    res = subprocess.run([sys.executable, "-m", "lfsserve", *args], cwd=REPO_ROOT, input=input,
                         capture_output=True, timeout=TIMEOUT, check=False)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode()


def readme_server(lfsserve, tmp_path: Path):
    """A server configured as the README says, with repository team/app and user alice."""
    htpasswd = tmp_path / "htpasswd"
    lfsserve_cli("adduser", "--htpasswd", str(htpasswd), "--password-stdin", "alice",
                 input=PASSWORD.encode() + b"\n")
    root = tmp_path / "data"
    lfsserve_cli("init", "--root", str(root), "team/app")
    server = lfsserve(root=root, anonymous=None,
                      config=f'[auth]\nhtpasswd = "{htpasswd}"\nauthenticated = "write"\n')
    assert "listening on" in server.log()
    return server


def client(tmp_path: Path, name: str, exe: str | None, lfs: bool) -> Hg:
    extra = '[extensions]\nlfs =\n[lfs]\ntrack = size(">10KB")\n' if lfs else ""
    return Hg(tmp_path / f"home-{name}", extra, **({"exe": exe} if exe else {}))


def clone_with_auth_section(hg: Hg, server, dest: Path) -> None:
    """Clone anonymously, then add the README's [auth] section to the clone's hgrc."""
    hg("clone", f"{server.url}/team/app", str(dest), timeout=TIMEOUT)
    with open(dest / ".hg" / "hgrc", "a") as fh:
        fh.write(f"\n[auth]\nexample.prefix = {server.url}/team/\nexample.username = alice\n"
                 f"example.password = {PASSWORD}\n")


def commit(hg: Hg, repo: Path, name: str, data: bytes) -> None:
    (repo / name).write_bytes(data)
    hg("commit", "-A", "-m", f"add {name}", cwd=repo)


def assert_server_has(hg: Hg, server, tmp_path: Path, files: dict[str, bytes], name: str) -> None:
    """A fresh anonymous clone sees the pushed changesets and file contents."""
    check = tmp_path / f"check-{name}"
    hg("clone", f"{server.url}/team/app", str(check), timeout=TIMEOUT)
    for fname, data in files.items():
        assert (check / fname).read_bytes() == data
    assert "Traceback" not in server.log()


@pytest.fixture
def hg_exe(request) -> str | None:
    return request.getfixturevalue("hg593_path") if request.param == "hg593" else None


@pytest.mark.parametrize("hg_exe", ["hg7", "hg593"], indirect=True)
@pytest.mark.parametrize("lfs", [False, True], ids=["plain", "lfs"])
def test_push_with_password_in_hgrc_auth_section(lfsserve, tmp_path, hg_exe, lfs):
    server = readme_server(lfsserve, tmp_path)
    hg = client(tmp_path, "alice", hg_exe, lfs)
    repo = tmp_path / "clone"
    clone_with_auth_section(hg, server, repo)
    commit(hg, repo, "small.txt", b"hello\n")
    commit(hg, repo, "big.bin", BIG)
    res = hg("push", cwd=repo, timeout=TIMEOUT)
    assert b"added 2 changesets" in res.stdout, res.stdout
    if lfs:
        assert stored_oids(server.root) == {oid_of(BIG)}
    reader = client(tmp_path, "reader", hg_exe, lfs)
    assert_server_has(reader, server, tmp_path, {"small.txt": b"hello\n", "big.bin": BIG}, "1")
    # A second push in the same configuration works as well (nothing cached server-side).
    commit(hg, repo, "small.txt", b"hello again\n")
    hg("push", cwd=repo, timeout=TIMEOUT)
    assert_server_has(reader, server, tmp_path, {"small.txt": b"hello again\n"}, "2")


@pytest.mark.parametrize("hg_exe", ["hg7", "hg593"], indirect=True)
@pytest.mark.parametrize("lfs", [False, True], ids=["plain", "lfs"])
def test_push_with_password_in_url(lfsserve, tmp_path, hg_exe, lfs):
    server = readme_server(lfsserve, tmp_path)
    hg = client(tmp_path, "alice", hg_exe, lfs)
    repo = tmp_path / "clone"
    hg("clone", f"{server.url}/team/app", str(repo), timeout=TIMEOUT)
    commit(hg, repo, "big.bin", BIG)
    host = server.url.removeprefix("http://")
    res = hg("push", f"http://alice:{PASSWORD.replace(' ', '%20')}@{host}/team/app", cwd=repo, timeout=TIMEOUT)
    assert b"added 1 changesets" in res.stdout, res.stdout
    if lfs:
        assert stored_oids(server.root) == {oid_of(BIG)}
    assert_server_has(client(tmp_path, "reader", hg_exe, lfs), server, tmp_path, {"big.bin": BIG}, "1")


def test_anonymous_push_refused_and_wrong_password(lfsserve, tmp_path):
    server = readme_server(lfsserve, tmp_path)
    hg = client(tmp_path, "anon", None, False)
    repo = tmp_path / "clone"
    hg("clone", f"{server.url}/team/app", str(repo), timeout=TIMEOUT)
    commit(hg, repo, "a", b"a\n")
    res = hg("push", cwd=repo, check=False, timeout=TIMEOUT)
    assert res.returncode != 0 and b"http authorization required" in res.stderr, res.stderr
    host = server.url.removeprefix("http://")
    res = hg("push", f"http://alice:wrong@{host}/team/app", cwd=repo, check=False, timeout=TIMEOUT)
    assert res.returncode != 0 and b"authorization failed" in res.stderr, res.stderr
    assert "Traceback" not in server.log()


def test_httppostargs_only_where_no_401_can_follow(lfsserve, tmp_path):
    """The root of the hang: hg cannot replay a body that carries httppostargs arguments."""
    import base64
    import http.client

    server = readme_server(lfsserve, tmp_path)

    def caps(headers: dict[str, str]) -> list[str]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        conn.request("GET", "/team/app?cmd=capabilities", headers=headers)
        body = conn.getresponse().read().decode()
        conn.close()
        return body.split(" ")

    assert "httppostargs" not in caps({})  # anonymous may read but not write: a 401 would follow
    alice = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert "httppostargs" in caps({"Authorization": f"Basic {alice}"})


def test_a_push_slower_than_aiohttp_draining_still_gets_its_401(lfsserve, tmp_path):
    """hg sends the whole push before reading the answer, then resends it with credentials.
    The 401 must wait for the body: aiohttp alone drains an unread body for 10 s only and then
    closes the connection, which a slow upload sees as a reset instead of a challenge."""
    import socket
    import time

    server = readme_server(lfsserve, tmp_path)
    piece = b"\0" * 1000
    pieces = 12
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /team/app?cmd=unbundle HTTP/1.1\r\nHost: x\r\nX-HgArg-1: heads=666f726365\r\n"
                     b"Content-Type: application/mercurial-0.1\r\n"
                     b"Content-Length: %d\r\n\r\n" % (len(piece) * pieces))
        for _ in range(pieces):  # 12 s in all, a piece a second: well within limits.idle_timeout
            sock.sendall(piece)
            time.sleep(1)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:300]
    assert b"WWW-Authenticate: Basic" in answer
