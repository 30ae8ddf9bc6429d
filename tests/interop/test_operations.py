"""Operating a real server: graceful SIGTERM mid-upload, limits seen by real clients, metrics, JSON
logs, and the admin commands (repos, verify, gc) run next to a live server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ..support import REPO_ROOT, oid_of, require_program, run
from .lfs_http import batch, download, objects, request, upload

pytestmark = pytest.mark.interop


def admin(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LFSSERVE_")}
    res = subprocess.run([sys.executable, "-m", "lfsserve", *args, "--root", str(root)], cwd=REPO_ROOT,
                         capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def metric(server_url: str, name: str) -> float | None:
    _, _, body = request(server_url + "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or (line.startswith(name + "{") and name.endswith("}")):
            return float(line.rsplit(" ", 1)[1])
    return None


def upload_actions(endpoint: str, data: bytes) -> dict:
    status, _, answer = batch(endpoint, "upload", objects((oid_of(data), len(data))), transfers=["basic"])
    assert status == 200, answer
    return answer["objects"][0]["actions"]["upload"]


def start_put(action: dict, data: bytes, sent: int) -> socket.socket:
    """A PUT of `data` on a raw socket with only its first `sent` bytes sent so far."""
    url = urlsplit(action["href"])
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    head = [f"PUT {url.path} HTTP/1.1", f"Host: {url.netloc}", f"Content-Length: {len(data)}",
            "Content-Type: application/octet-stream"]
    head += [f"{k}: {v}" for k, v in action.get("header", {}).items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data[:sent])
    return sock


def test_sigterm_lets_uploads_finish_within_grace_and_drops_the_rest(lfsserve, tmp_path):
    root = tmp_path / "data"
    server = lfsserve(root=root, config="[server]\nshutdown_grace = 3.0\n")
    endpoint = server.url + "/team/app.git/info/lfs"
    finishing, stalled = os.urandom(2 << 20), os.urandom(2 << 20)
    a = start_put(upload_actions(endpoint, finishing), finishing, 1 << 20)
    b = start_put(upload_actions(endpoint, stalled), stalled, 1 << 20)
    time.sleep(0.5)  # both handlers are receiving
    t0 = time.monotonic()
    server.stopped = True  # exiting is expected from here on
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()  # no longer accepting
    a.sendall(finishing[1 << 20:])
    assert a.recv(100).startswith((b"HTTP/1.1 201", b"HTTP/1.1 200"))  # an in-flight request completes
    assert server.proc.wait(20) == 0
    elapsed = time.monotonic() - t0
    assert 2.5 < elapsed < 15, elapsed  # waited for the stalled upload, up to the grace period
    try:
        rest = b.recv(100)
    except ConnectionResetError:
        rest = b""
    assert not rest.startswith(b"HTTP/1.1 2")  # the stalled one was cut off, not accepted
    a.close(), b.close()
    assert "shutting down" in server.log()

    again = lfsserve(root=root)
    endpoint = again.url + "/team/app.git/info/lfs"
    assert download(endpoint, oid_of(finishing), len(finishing)) == (200, finishing)
    code, _ = download(endpoint, oid_of(stalled), len(stalled))
    assert code == 404  # the interrupted upload left nothing visible...
    leftovers = [p for p in (root / "lfs").rglob("*") if p.is_file() and oid_of(stalled) in p.name]
    assert leftovers == []  # ...and nothing behind at all


def test_limits_seen_by_clients(lfsserve):
    server = lfsserve(config="[lfs]\nmax_object_size = 1000\nmax_batch_objects = 3\n")
    endpoint = server.url + "/team/app.git/info/lfs"
    big = os.urandom(1001)
    status, _, answer = batch(endpoint, "upload", objects((oid_of(big), len(big))), transfers=["basic"])
    assert status == 200 and answer["objects"][0]["error"]["code"] == 413
    # a client that ignores the batch answer and PUTs anyway gets 413 too
    action = upload_actions(endpoint, os.urandom(10))
    status, _, body = request(action["href"], "PUT", big, action["header"])
    assert status == 413 and b"limit of 1000 bytes" in body
    status, _, answer = batch(endpoint, "upload", objects(*[(oid_of(bytes([i])), 1) for i in range(4)]),
                              transfers=["basic"])
    assert status == 413 and "too many objects" in answer["message"]


def test_git_lfs_retries_after_429(lfsserve, tmp_path):
    """per_client_concurrency = 1 with git-lfs pushing 4 objects 4 at a time: git-lfs waits for
    Retry-After and every object arrives."""
    require_program("git-lfs", "apt-get install -y git-lfs")
    server = lfsserve(config="[limits]\nper_client_concurrency = 1\n")
    files = {f"f{i}.bin": os.urandom(300_000) for i in range(4)}
    work = tmp_path / "git"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "LFSSERVE_"))},
           "HOME": str(tmp_path / "home"), "GIT_TERMINAL_PROMPT": "0"}
    (tmp_path / "home").mkdir()
    run(["git", "init", "-q", "-b", "main", str(work)], env=env)
    run(["git", "init", "-q", "--bare", str(tmp_path / "remote.git")], env=env)
    git = lambda *a: run(["git", "-C", str(work), *a], env=env)  # noqa: E731
    git("config", "user.email", "t@example.com"), git("config", "user.name", "T")
    git("lfs", "install", "--local")
    git("lfs", "track", "*.bin")
    for name, data in files.items():
        (work / name).write_bytes(data)
    git("config", "lfs.url", server.url + "/team/app.git/info/lfs")
    git("config", "lfs.concurrenttransfers", "4")
    git("config", "lfs.locksverify", "false")
    git("add", "."), git("commit", "-qm", "four objects")
    git("remote", "add", "origin", str(tmp_path / "remote.git"))
    git("push", "-q", "origin", "main")
    endpoint = server.url + "/team/app.git/info/lfs"
    for data in files.values():
        assert download(endpoint, oid_of(data), len(data)) == (200, data)
    assert (metric(server.url, 'lfsserve_limit_rejections_total{limit="concurrency"}') or 0) > 0


def test_metrics_and_json_logs_of_a_real_server(lfsserve):
    server = lfsserve(config='[log]\naccess_format = "json"\nformat = "json"\n')
    endpoint = server.url + "/team/app.git/info/lfs"
    blobs = [os.urandom(5000), os.urandom(7000)]
    for data in blobs:
        upload(endpoint, data)
    assert download(endpoint, oid_of(blobs[0]), 5000)[0] == 200
    assert metric(server.url, "lfsserve_lfs_objects") == 2
    assert metric(server.url, "lfsserve_lfs_stored_bytes") == 12000
    assert metric(server.url, "lfsserve_lfs_uploads_total") == 2
    assert metric(server.url, 'lfsserve_http_received_bytes_total{kind="lfs-object"}') >= 12000
    assert metric(server.url, 'lfsserve_http_sent_bytes_total{kind="lfs-object"}') >= 5000
    _status, headers, _ = request(server.url + "/healthz")
    rid = headers["X-Request-Id"]
    deadline = time.monotonic() + 10
    while rid not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [json.loads(ln) for ln in server.log().splitlines() if ln.startswith("{")]
    (entry,) = [e for e in lines if e.get("request_id") == rid]
    assert entry["path"] == "/healthz" and entry["status"] == 200 and entry["method"] == "GET"
    assert any(e.get("path", "").endswith("/objects/batch") for e in lines)


def test_admin_commands_next_to_a_live_server(lfsserve, tmp_path):
    root = tmp_path / "data"
    server = lfsserve(root=root)
    a_data, b_data, orphan = os.urandom(4000), os.urandom(6000), os.urandom(3000)
    a = upload(server.url + "/team/a.git/info/lfs", a_data)
    b = upload(server.url + "/team/b.git/info/lfs", b_data)
    # An object no namespace references, from long ago (e.g. of a repository deleted since).
    store = root / "lfs" / "objects"
    o = oid_of(orphan)
    path = store / o[:2] / o[2:4] / o
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orphan)
    old = time.time() - 3 * 86400
    os.utime(path, (old, old))

    out = admin(root, "repos").stdout
    assert "team/a (lfs only)" in out and "team/b (lfs only)" in out
    rows = {r["name"]: r for r in json.loads(admin(root, "repos", "--json").stdout)}
    assert (rows["team/a"]["lfs_objects"], rows["team/a"]["lfs_bytes"]) == (1, 4000)

    out = admin(root, "gc").stdout
    assert "would delete 1 " in out and "dry run" in out and path.exists()
    out = admin(root, "gc", "--grace", "0", "--forget", "team/b", "-v").stdout
    assert f"would delete {b}" in out and f"would delete {o}" in out and f"{a}" not in out
    out = admin(root, "gc", "--apply").stdout
    assert "deleted 1 " in out and not path.exists()
    assert download(server.url + "/team/b.git/info/lfs", b, 6000) == (200, b_data)  # young: kept
    admin(root, "gc", "--apply", "--grace", "0", "--forget", "team/b")
    assert download(server.url + "/team/b.git/info/lfs", b, 6000)[0] == 404
    assert download(server.url + "/team/a.git/info/lfs", a, 4000) == (200, a_data)

    # Corrupt a's stored copy (same size): verify reports it, quarantines it, exits 1.
    a_path = store / a[:2] / a[2:4] / a
    os.chmod(a_path, 0o644)
    a_path.write_bytes(bytes(4000))
    res = admin(root, "verify", "--blobs-only", check=False)
    assert res.returncode == 1 and f"corrupt: {a}" in res.stdout and "quarantine" in res.stdout
    assert not a_path.exists() and list((root / "lfs" / "quarantine").glob(a + ".*"))
    assert download(server.url + "/team/a.git/info/lfs", a, 4000)[0] == 404
    upload(server.url + "/team/a.git/info/lfs", a_data)  # the client re-uploads: repaired
    assert download(server.url + "/team/a.git/info/lfs", a, 4000) == (200, a_data)
    res = admin(root, "verify", "--blobs-only")
    assert "checked 1 LFS objects" in res.stdout and "corrupt" not in res.stdout
