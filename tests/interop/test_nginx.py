"""Real nginx with deploy/nginx.conf in front of a real lfsserve: hg, hg lfs and git-lfs through the sub-path."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from ..support import Hg, oid_of, require_program, run
from .lfs_http import batch, objects, request
from .nginx import MOUNT, start_nginx

pytestmark = pytest.mark.interop

PROXY_CONFIG = '[server]\ntrusted_proxies = ["127.0.0.1"]\n[hg]\ncreate_on_push = true\n'


def wait_for(condition, timeout=10.0) -> bool:
    """Poll `condition` (log lines are written just after the response) until true or timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def proxied(lfsserve, tmp_path):
    """(lfsserve process, nginx) with lfsserve trusting nginx's forwarded headers."""
    server = lfsserve(config=PROXY_CONFIG)
    nginx = start_nginx(tmp_path / "nginx", server.port)
    yield server, nginx
    nginx.stop()


def test_probes_request_ids_and_private_metrics_through_nginx(proxied):
    server, nginx = proxied
    status, headers, body = request(nginx.url + "/healthz")
    assert (status, body) == (200, b"ok\n")
    rid = headers["X-Request-Id"]
    assert len(rid) == 32  # nginx's $request_id, taken over by lfsserve
    assert wait_for(lambda: f"rid={rid}" in server.log()), server.log()[-2000:]
    assert request(nginx.url + "/readyz")[0] == 200
    assert request(nginx.url + "/metrics")[0] == 404  # not published through the proxy
    assert request(server.url + "/metrics")[0] == 200  # but scrapeable on the backend
    status, headers, _ = request(f"http://127.0.0.1:{nginx.port}{MOUNT}")
    assert status == 301 and headers["Location"].endswith(f":{nginx.port}{MOUNT}/")


def assert_hrefs_point_at_nginx(answer: dict, nginx, backend_port: int, namespace: str) -> None:
    """Every action href of a batch answer is under nginx's public URL and sub-path."""
    hrefs = [a["href"] for obj in answer["objects"] for a in (obj.get("actions") or {}).values()]
    assert hrefs, answer
    for href in hrefs:
        assert href.startswith(f"{nginx.url}/{namespace}"), href
        assert f":{backend_port}" not in href, href


def write_random(path: Path, size: int, chunk: int = 1 << 20) -> str:
    """`size` random bytes into `path`, fast; returns their SHA-256."""
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        for done in range(0, size, chunk):
            data = os.urandom(min(chunk, size - done))
            h.update(data)
            fh.write(data)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while data := fh.read(1 << 20):
            h.update(data)
    return h.hexdigest()


@pytest.mark.slow
def test_git_lfs_100mb_through_nginx(proxied, tmp_path):
    require_program("git-lfs", "apt-get install -y git-lfs")
    server, nginx = proxied
    endpoint = f"{nginx.url}/team/big.git/info/lfs"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "LFSSERVE_"))},
           "HOME": str(tmp_path / "home"), "GIT_TERMINAL_PROMPT": "0"}
    (tmp_path / "home").mkdir()
    work, remote, clone = tmp_path / "work", tmp_path / "remote.git", tmp_path / "clone"
    git = lambda *a, cwd=work: run(["git", *a], cwd=cwd, env=env)  # noqa: E731
    git("init", "-q", "-b", "main", str(work), cwd=tmp_path)
    git("init", "-q", "--bare", "-b", "main", str(remote), cwd=tmp_path)
    git("config", "user.email", "t@example.com"), git("config", "user.name", "T")
    git("lfs", "install", "--local")
    git("lfs", "track", "*.bin")
    (work / ".lfsconfig").write_text(f"[lfs]\n\turl = {endpoint}\n\tlocksverify = false\n")
    size = 100 * 1024 * 1024
    digest = write_random(work / "big.bin", size)
    git("add", "."), git("commit", "-qm", "100 MB")
    git("remote", "add", "origin", str(remote))
    git("push", "-q", "origin", "main")

    # What git-lfs was told: actions at nginx's address under /hg, never the backend's port.
    status, _, answer = batch(endpoint, "download", objects((digest, size)), transfers=["basic"])
    assert status == 200
    assert_hrefs_point_at_nginx(answer, nginx, server.port, "team/big")
    status, _, answer = batch(endpoint, "upload", objects((oid_of(b"new"), 3)), transfers=["basic"])
    assert status == 200
    assert_hrefs_point_at_nginx(answer, nginx, server.port, "team/big")

    git("clone", "-q", str(remote), str(clone), cwd=tmp_path)
    assert (clone / "big.bin").stat().st_size == size and sha256_file(clone / "big.bin") == digest
    log = nginx.access_log()
    # the 100 MB went through nginx both ways, whole (nginx logs the body bytes it sent)
    assert re.search(rf'"PUT {MOUNT}/team/big\S*/{digest} HTTP/1.1" 20[01] ', log), log
    assert re.search(rf'"GET {MOUNT}/team/big\S*/{digest} HTTP/1.1" 200 {size} ', log), log
    shutil.rmtree(work), shutil.rmtree(clone)  # 300 MB that pytest would otherwise keep


def test_hg_lfs_push_and_pull_through_nginx(proxied, tmp_path):
    """hg's lfs extension uploading to and downloading from lfs.url behind nginx's sub-path."""
    _server, nginx = proxied
    url = f"{nginx.url}/team/app/.git/info/lfs"
    rc = f"[extensions]\nlfs =\n[lfs]\nurl = {url}\ntrack = size('>1KB')\n"
    writer, reader = Hg(tmp_path / "w", rc), Hg(tmp_path / "r", rc)
    src, dst = tmp_path / "src", tmp_path / "dst"
    writer("init", str(src))
    blob = os.urandom(200_000)
    (src / "asset.bin").write_bytes(blob)
    (src / "small.txt").write_text("small\n")
    writer("commit", "-A", "-m", "with a blob", cwd=src)
    writer("init", str(dst))
    out = writer.out("push", "-v", str(dst), cwd=src)
    assert "lfs: uploaded 1 files" in out
    copy = tmp_path / "copy"
    reader("clone", str(dst), str(copy))  # empty usercache: the blob comes through nginx
    assert (copy / "asset.bin").read_bytes() == blob
    assert f"POST {MOUNT}/team/app/.git/info/lfs/objects/batch" in nginx.access_log()


def test_hg_clone_push_and_lfs_through_nginx(proxied, tmp_path):
    """hg push (creating the repository) with an LFS file, a clone by a client without the lfs
    extension, and a push back, all through nginx; blobs use hg's default lfs.url, so they too
    go through the sub-path."""
    server, nginx = proxied
    url = f"{nginx.url}/team/app"
    lfs = Hg(tmp_path / "lfs-home", "[extensions]\nlfs =\n[lfs]\ntrack = size('>1KB')\n")
    plain = Hg(tmp_path / "plain-home")
    src, clone = tmp_path / "src", tmp_path / "clone"
    lfs("init", str(src))
    blob = os.urandom(300_000)
    (src / "asset.bin").write_bytes(blob)
    (src / "notes.txt").write_text("first\n")
    lfs("commit", "-A", "-m", "first", cwd=src)
    out = lfs.out("push", url, cwd=src)
    assert "lfs: uploaded 1 files" in out and "remote: added 1 changesets" in out

    plain("clone", url, str(clone))
    assert (clone / "asset.bin").read_bytes() == blob
    (clone / "notes.txt").write_text("second\n")
    plain("commit", "-m", "second", cwd=clone)
    assert "remote: added 1 changesets" in plain.out("push", url, cwd=clone)
    lfs("pull", "-u", url, cwd=src)
    assert (src / "notes.txt").read_text() == "second\n"
    assert lfs.out("log", "-T", "{desc} ", cwd=src) == "second first "

    _, _, metrics = request(server.url + "/metrics")
    assert b'lfsserve_hg_pushes_total{result="accepted"} 2.0' in metrics
    assert b"lfsserve_hg_push_duration_seconds_count 2.0" in metrics
    log = nginx.access_log()
    assert f"POST {MOUNT}/team/app?cmd=unbundle" in log
    assert f"{MOUNT}/team/app?cmd=getbundle" in log
    assert f"POST {MOUNT}/team/app/.git/info/lfs/objects/batch" in log
