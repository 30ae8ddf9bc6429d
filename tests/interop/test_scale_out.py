"""Several `lfsserve serve` processes behind one real nginx, sharing one PostgreSQL database and
one data directory, behave as one server: LFS objects and locks made through one instance are
seen and enforced through another, concurrent pushes to one repository through different
instances serialize, a killed instance leaves nothing partial and the others keep serving, and a
PostgreSQL restart fails requests cleanly (503 + Retry-After) until it is back.

The cluster is module-scoped (started once): three instances, the third (`victim`) is the one a
test kills; nginx's upstream has all three. Its LFS objects are on the shared data directory; the
last test runs two instances on one S3 bucket (moto) instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..bundle_build import LFS_FLAG, changegroup03, changegroup_bundle, lfs_pointer
from ..pgserver import PgServer
from ..s3server import MotoServer
from ..support import HG, REPO_ROOT, Hg, LfsserveProcess, hg_env, oid_of, run, start_lfsserve
from .lfs_http import LFS, batch, download, objects, request, upload
from .lfs_util import stored_oids
from .nginx import Nginx, start_nginx
from .test_lfs_git import Git

# One worker starts the (module-scoped) cluster once, under `pytest -n 2 --dist loadgroup`.
pytestmark = [pytest.mark.interop, pytest.mark.xdist_group("scale_out")]

TOKENS = {"alice": "alice-token-0123456789abcdef", "bob": "bob-token-0123456789abcdef"}
REPO = "team/proj"
LFS_REPO = "team/lfs"  # made by `lfsserve init` (hg lfs requirement), pushed to raw
COMMITS = 1  # per pushing client
FILES = 150  # per commit


@dataclass
class Cluster:
    root: Path
    a: LfsserveProcess
    b: LfsserveProcess
    victim: LfsserveProcess
    nginx: Nginx
    pg: PgServer

    def lfs(self, server: LfsserveProcess | Nginx, repo: str = REPO) -> str:
        return f"{server.url}/{repo}/info/lfs"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pg_server: PgServer) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("scale-out")
    root = base / "data"
    tokens = base / "tokens"
    tokens.write_text("".join(f"{u}:{hashlib.sha256(t.encode()).hexdigest()}\n" for u, t in TOKENS.items()))
    config = (f'[server]\ntrusted_proxies = ["127.0.0.1"]\n[auth]\nauthenticated = "write"\n'
              f'tokens = "{tokens}"\n[database]\nurl = "{pg_server.create_database()}"\n')
    servers: list[LfsserveProcess] = []
    nginx = None
    died: list[LfsserveProcess] = []
    try:
        for _ in range(3):
            servers.append(start_lfsserve(root, config=config))
        subprocess.run([sys.executable, "-m", "lfsserve", "init", "--root", str(root), LFS_REPO],
                       cwd=REPO_ROOT, check=True, capture_output=True)
        nginx = start_nginx(base / "nginx", [s.port for s in servers])
        yield Cluster(root, servers[0], servers[1], servers[2], nginx, pg_server)
        died = [s for s in servers if not s.alive() and not s.stopped]  # the victim was stopped on purpose
    finally:
        if nginx is not None:
            nginx.stop()
        for s in servers:  # all at once: each may take a moment to drain
            s.stopped = True
            if s.alive():
                s.proc.terminate()
        for s in servers:
            s.stop()
    assert not died, "an instance exited during the tests:\n" + "\n".join(s.log()[-3000:] for s in died)


def auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[user]}"}


def lock_call(base: str, path: str, body: dict, user: str, method: str = "POST") -> tuple[int, dict]:
    status, _, raw = request(f"{base}/{path}", method, json.dumps(body).encode() if method == "POST" else None,
                             {"Accept": LFS, "Content-Type": LFS, **auth(user)})
    return status, json.loads(raw)


def test_lfs_objects_and_locks_are_shared(cluster: Cluster):
    a, b = cluster.lfs(cluster.a), cluster.lfs(cluster.b)
    data = os.urandom(300_000)
    oid = upload(a, data)
    assert download(b, oid, len(data)) == (200, data)
    assert download(cluster.lfs(cluster.nginx), oid, len(data)) == (200, data)
    # visibility is per repository on every instance alike
    assert download(cluster.lfs(cluster.b, "other/repo"), oid, len(data))[0] == 404

    status, made = lock_call(a, "locks", {"path": "art/hero.psd"}, "alice")
    assert status == 201, made
    lock = made["lock"]
    status, listed = lock_call(b, "locks", {}, "bob", method="GET")
    assert status == 200 and listed["locks"] == [lock]
    # enforced through the other instance: bob can neither take it nor release it
    status, body = lock_call(b, "locks", {"path": "art/hero.psd"}, "bob")
    assert status == 409 and body["lock"] == lock
    status, body = lock_call(b, f"locks/{lock['id']}/unlock", {}, "bob")
    assert status == 403, body
    status, body = lock_call(b, "locks/verify", {}, "bob")
    assert status == 200 and body["theirs"] == [lock] and body["ours"] == []
    # racing lock attempts on a new path through all instances: exactly one wins
    results: list[int] = []
    servers = [a, b, cluster.lfs(cluster.nginx)] * 3
    threads = [threading.Thread(target=lambda base=base, user=user: results.append(
        lock_call(base, "locks", {"path": "race.bin"}, user)[0]))
        for base, user in zip(servers, ["alice", "bob"] * 5, strict=False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201] + [409] * (len(servers) - 1)
    # the owner releases it through the other instance
    status, body = lock_call(b, f"locks/{lock['id']}/unlock", {}, "alice")
    assert status == 200 and body["lock"] == lock
    status, listed = lock_call(a, "locks?path=art/hero.psd", {}, "alice", method="GET")
    assert listed["locks"] == []


def test_git_lfs_through_one_instance_and_the_other(cluster: Cluster, tmp_path: Path):
    """Real git-lfs: push and lock through one instance, pull, list and be refused through
    another, and the same through nginx."""
    git = Git(tmp_path / "home")
    remote, work, clone = tmp_path / "remote.git", tmp_path / "work", tmp_path / "clone"
    git("init", "-q", "--bare", str(remote))
    git("init", "-q", str(work))
    git("lfs", "install", "--local", cwd=work)
    git("config", "lfs.url", cluster.lfs(cluster.a, "team/game"), cwd=work)
    git("config", "lfs.locksverify", "true", cwd=work)
    git("remote", "add", "origin", str(remote), cwd=work)
    git("lfs", "track", "*.bin", cwd=work)
    asset = os.urandom(2 * 1024 * 1024)
    (work / "asset.bin").write_bytes(asset)
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "asset", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)  # uploads through instance a
    assert oid_of(asset) in stored_oids(cluster.root)

    git("clone", "-q", str(remote), str(clone), env={"GIT_LFS_SKIP_SMUDGE": "1"})
    git("config", "lfs.url", cluster.lfs(cluster.b, "team/game"), cwd=clone)
    git("lfs", "pull", cwd=clone)  # downloads through instance b
    assert (clone / "asset.bin").read_bytes() == asset

    assert "Locked asset.bin" in git.out("lfs", "lock", "asset.bin", cwd=work)  # through a
    assert "asset.bin" in git.out("lfs", "locks", cwd=clone)  # listed through b
    refused = git("lfs", "lock", "asset.bin", cwd=clone, check=False)  # and enforced there
    assert refused.returncode != 0 and b"already" in refused.stderr.lower(), refused
    git("config", "lfs.url", cluster.lfs(cluster.nginx, "team/game"), cwd=work)
    git("lfs", "unlock", "asset.bin", cwd=work)  # released through nginx
    assert "asset.bin" not in git.out("lfs", "locks", cwd=clone)


def test_hg_lfs_push_through_one_instance_clone_through_the_other(cluster: Cluster, tmp_path: Path):
    repo = "team/hglfs"
    subprocess.run([sys.executable, "-m", "lfsserve", "init", "--root", str(cluster.root), repo],
                   cwd=REPO_ROOT, check=True, capture_output=True)
    content = os.urandom(300_000)
    pusher = Hg(tmp_path / "pusher", f"[extensions]\nlfs =\n[lfs]\nurl = {cluster.a.url}/{repo}/.git/info/lfs\n"
                                     "track = all()\n")
    work = tmp_path / "work"
    pusher("init", str(work))
    (work / "big.dat").write_bytes(content)
    pusher("commit", "-A", "-q", "-m", "lfs file", cwd=work)
    out = pusher.out("push", f"{cluster.a.url}/{repo}", cwd=work)
    assert "lfs: uploaded 1 files" in out, out
    puller = Hg(tmp_path / "puller", f"[extensions]\nlfs =\n[lfs]\nurl = {cluster.b.url}/{repo}/.git/info/lfs\n")
    puller("clone", "-q", f"{cluster.b.url}/{repo}", str(tmp_path / "clone"))
    assert (tmp_path / "clone" / "big.dat").read_bytes() == content


def test_concurrent_pushes_through_different_instances_serialize(cluster: Cluster, tmp_path: Path):
    env = hg_env(tmp_path / "home")
    origin = tmp_path / "origin"
    run([HG, "init", str(origin)], env=env)
    (origin / "base.txt").write_text("base\n")
    run([HG, "commit", "-A", "-m", "base", "-R", str(origin)], env=env)
    repo = cluster.root / "repos" / REPO
    repo.parent.mkdir(parents=True, exist_ok=True)
    run([HG, "init", str(repo)], env=env)
    run([HG, "push", "-R", str(origin), f"{cluster.a.url}/{REPO}"], env=env)

    # Each client commits on its own named branch and pushes through another instance, all at
    # once: hg's check:updated-heads lets pushes to different branches all succeed, provided the
    # server applies them one at a time (else revlogs interleave or one push is lost).
    servers = [cluster.a, cluster.b, cluster.a, cluster.b]
    first = tmp_path / "c0"
    run([HG, "clone", "-q", f"{cluster.b.url}/{REPO}", str(first)], env=env)
    clones = [first] + [tmp_path / f"c{i}" for i in range(1, len(servers))]
    for clone in clones[1:]:
        shutil.copytree(first, clone, symlinks=True)
    for i, clone in enumerate(clones):
        run([HG, "branch", "-R", str(clone), f"b{i}"], env=env)
        # many files per push: applying one takes the server long enough for pushes to overlap
        for n in range(COMMITS):
            for f in range(FILES):
                (clone / f"d{f % 10}" / f"f{i}-{n}-{f}.txt").parent.mkdir(exist_ok=True)
                (clone / f"d{f % 10}" / f"f{i}-{n}-{f}.txt").write_bytes(os.urandom(1500).hex().encode())
            (clone / "shared.txt").write_text(f"client {i} commit {n}\n" * 200)
            run([HG, "commit", "-A", "-q", "-m", f"client {i} commit {n}", "-R", str(clone)], env=env)
    procs = [subprocess.Popen([HG, "push", "--new-branch", "-R", str(clone), f"{server.url}/{REPO}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for clone, server in zip(clones, servers, strict=True)]
    outputs = [p.communicate(timeout=120)[0].decode(errors="replace") for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(outputs)

    run([HG, "verify", "-q", "-R", str(repo)], env=env)
    assert run([HG, "log", "-R", str(repo), "-T", "{rev}\n"], env=env).stdout.count(b"\n") == 1 + COMMITS * len(servers)
    heads = run([HG, "heads", "-R", str(repo), "-T", "{branch}\n"], env=env).stdout.decode().split()
    assert sorted(heads) == [f"b{i}" for i in range(len(servers))] + ["default"]
    # what the instances serve (through nginx) is that same, complete history
    out = tmp_path / "check"
    run([HG, "clone", "-q", "-U", f"{cluster.nginx.url}/{REPO}", str(out)], env=env)
    assert run([HG, "log", "-R", str(out), "-T", "{node}\n"], env=env).stdout == \
        run([HG, "log", "-R", str(repo), "-T", "{node}\n"], env=env).stdout


def _start_upload(server: LfsserveProcess, repo: str, data: bytes, sent: int) -> socket.socket:
    """A PUT of `data` to `server` of which only the first `sent` bytes are sent (the upload
    action's href, from a batch answer)."""
    status, _, answer = batch(f"{server.url}/{repo}/info/lfs", "upload",
                              objects((oid_of(data), len(data))), transfers=["basic"])
    assert status == 200, answer
    action = answer["objects"][0]["actions"]["upload"]
    path = action["href"].split(f":{server.port}", 1)[1]
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = [f"PUT {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}",
            "Content-Type: application/octet-stream", f"Content-Length: {len(data)}"]
    head += [f"{k}: {v}" for k, v in action.get("header", {}).items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data[:sent])
    return sock


def _push_pointer(server: LfsserveProcess, oid: str, size: int) -> tuple[int, bytes]:
    """A raw hg push (bundle2) to LFS_REPO of one changeset whose file is an lfs pointer to `oid`."""
    bundle = changegroup_bundle(changegroup03(b"big.bin", lfs_pointer(oid, str(size).encode()), file_flags=LFS_FLAG))
    status, _, raw = request(f"{server.url}/{LFS_REPO}?cmd=unbundle", "POST", bundle,
                             {"X-HgArg-1": "heads=" + b"force".hex(), "Content-Type": "application/mercurial-0.1"})
    return status, raw


def _receiving(tmp: Path, oid: str) -> bool:
    """Whether an upload of `oid` has written bytes into its temp file."""
    for p in tmp.glob(f"{oid}.*") if tmp.exists() else []:
        try:
            if p.stat().st_size > 0:
                return True
        except FileNotFoundError:
            pass
    return False


def test_killed_instance_leaves_nothing_partial_and_database_restart(cluster: Cluster):
    # more than one 4 MiB receive buffer of a large upload is sent (lfs/receive.py writes whole
    # buffers), so bytes reach the temp file before the victim dies
    data = os.urandom(10 * 1024 * 1024)
    oid = oid_of(data)
    sock = _start_upload(cluster.victim, REPO, data, 9 * 1024 * 1024)
    try:
        # the victim is receiving the body (its temp file grows), then dies without a word
        deadline = time.monotonic() + 60
        while not _receiving(cluster.root / "lfs" / "tmp", oid):
            assert time.monotonic() < deadline, "the upload never reached the victim's temp file"
            time.sleep(0.05)
        cluster.victim.stop(signal.SIGKILL)
    finally:
        sock.close()
    assert oid not in stored_oids(cluster.root)
    for server in (cluster.a, cluster.b, cluster.nginx):
        status, _, answer = batch(cluster.lfs(server), "download", objects((oid, len(data))), transfers=["basic"])
        assert status == 200 and answer["objects"][0]["error"]["code"] == 404, answer
    # the others keep serving, nginx routes around the dead instance, and the upload can be redone
    for _ in range(3):
        assert request(f"{cluster.nginx.url}/healthz")[0] == 200
    assert upload(cluster.lfs(cluster.nginx), data) == oid
    assert download(cluster.lfs(cluster.b), oid, len(data)) == (200, data)

    # PostgreSQL restarts: requests needing it get a clean 503 with Retry-After, no 500, and
    # the instances recover by themselves once it is back.
    cluster.pg.stop()
    try:
        status, headers, body = batch(cluster.lfs(cluster.a), "download", objects((oid, len(data))))
        assert status == 503 and int(headers["Retry-After"]) > 0, body
        assert "database" in body["message"]
        status, body = lock_call(cluster.lfs(cluster.b), "locks", {"path": "during-outage"}, "alice")
        assert status == 503, body
        # an hg push whose lfs pointer must be vouched for: refused cleanly, nothing applied
        status, raw = _push_pointer(cluster.b, oid, len(data))
        assert status == 503, raw[:500]
        assert run([HG, "log", "-R", str(cluster.root / "repos" / LFS_REPO), "-T", "x"]).stdout == b""
        # what needs no metadata is still served
        assert request(f"{cluster.b.url}/{LFS_REPO}?cmd=capabilities")[0] == 200
    finally:
        cluster.pg.start()
    status, raw = _push_pointer(cluster.b, oid, len(data))
    assert status == 200 and b"error" not in raw.lower(), raw[:500]
    assert run([HG, "log", "-R", str(cluster.root / "repos" / LFS_REPO), "-T", "x"]).stdout == b"x"
    for server in (cluster.a, cluster.b):
        assert download(cluster.lfs(server), oid, len(data)) == (200, data)
        assert lock_call(cluster.lfs(server), "locks", {}, "alice", method="GET")[0] == 200
    for server in (cluster.a, cluster.b):
        assert "Traceback" not in server.log(), server.log()[-3000:]


def test_two_instances_share_an_s3_bucket(pg_server: PgServer, moto: MotoServer, tmp_path: Path):
    """The same deployment with the objects in one S3 bucket (moto): an object uploaded through
    one instance is served by the other and through nginx; an instance killed mid-upload leaves
    no object in the bucket and the other keeps serving."""
    bucket = moto.create_bucket()
    config = (f'[server]\ntrusted_proxies = ["127.0.0.1"]\n[database]\nurl = "{pg_server.create_database()}"\n'
              + moto.storage_toml(bucket))
    root = tmp_path / "data"
    servers = [start_lfsserve(root, config=config, env=moto.env) for _ in range(2)]
    nginx = start_nginx(tmp_path / "nginx", [s.port for s in servers])
    one, two = servers
    try:
        data = os.urandom(300_000)
        oid = upload(f"{one.url}/{REPO}/info/lfs", data)
        assert download(f"{two.url}/{REPO}/info/lfs", oid, len(data)) == (200, data)
        assert download(f"{nginx.url}/{REPO}/info/lfs", oid, len(data)) == (200, data)
        assert not (root / "lfs" / "objects").exists() or not stored_oids(root)  # the objects are in the bucket

        # Large enough for a multipart upload to the final key: kill the instance once it has begun.
        big = os.urandom(20 * 1024 * 1024)
        final = f"lfs/objects/{oid_of(big)[:2]}/{oid_of(big)[2:4]}/{oid_of(big)}"
        sock = _start_upload(two, REPO, big, 17 * 1024 * 1024)
        try:
            deadline = time.monotonic() + 60
            while not moto.client().list_multipart_uploads(Bucket=bucket, Prefix=final).get("Uploads"):
                assert time.monotonic() < deadline, "the upload never reached the bucket"
                time.sleep(0.1)
            two.stop(signal.SIGKILL)
        finally:
            sock.close()
        listed = moto.client().list_objects_v2(Bucket=bucket, Prefix=final)
        assert listed.get("KeyCount", 0) == 0, listed
        for base in (one.url, nginx.url):
            status, _, answer = batch(f"{base}/{REPO}/info/lfs", "download", objects((oid_of(big), len(big))))
            assert status == 200 and answer["objects"][0]["error"]["code"] == 404, answer
        assert upload(f"{nginx.url}/{REPO}/info/lfs", big) == oid_of(big)
        assert download(f"{one.url}/{REPO}/info/lfs", oid_of(big), len(big)) == (200, big)
        assert "Traceback" not in one.log(), one.log()[-3000:]
    finally:
        nginx.stop()
        for s in servers:
            s.stop()
