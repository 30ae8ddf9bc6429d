"""Real Mercurial 7.2.4 (`[extensions] lfs=`) against a real `lfsserve serve` as its lfs.url.

The flow follows Mercurial's own test-lfs-test-server.t: pushes upload only what the server
lacks; update / archive / cat / revert fetch everything they need in one batch; a blob corrupted
or missing on the server makes the client abort without keeping anything; a blob corrupted in the
client's store is refused before it is uploaded. The hg repositories are local directories; only
LFS traffic goes to the server.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import bcrypt
import pytest

from lfsserve.auth import hash_token

from ..support import Hg, oid_of
from .lfs_http import request
from .lfs_util import corrupt, count_in_log, object_path, stored_oids, temp_files

pytestmark = pytest.mark.interop

BATCH = "/objects/batch HTTP/1.1"


def lfs_hg(tmp_path: Path, url: str, extra: str = "", name: str = "home") -> Hg:
    return Hg(tmp_path / name, f"[extensions]\nlfs =\n[lfs]\nurl = {url}\ntrack = all()\n{extra}")


def clear_local_blobs(hg: Hg, repo: Path) -> None:
    shutil.rmtree(Path(hg.env["HOME"]) / "lfs-usercache", ignore_errors=True)
    shutil.rmtree(repo / ".hg" / "store" / "lfs", ignore_errors=True)


def local_blob_paths(hg: Hg, repo: Path, oid: str) -> list[Path]:
    return [p for p in (Path(hg.env["HOME"]) / "lfs-usercache" / oid[:2] / oid[2:],
                        repo / ".hg" / "store" / "lfs" / "objects" / oid[:2] / oid[2:]) if p.exists()]


A = b"THIS-IS-LFS\n"
B = b"THIS-IS-ANOTHER-LFS\n"
BIG = bytes(range(256)) * 4000  # ~1 MB: several chunks on the server side


def test_push_update_archive_cat_revert(lfsserve, tmp_path):
    server = lfsserve()
    hg = lfs_hg(tmp_path, f"{server.url}/team/app/.git/info/lfs")
    r1, r2 = tmp_path / "repo1", tmp_path / "repo2"
    hg("init", str(r1))
    (r1 / "a").write_bytes(A)
    hg("commit", "-A", "-m", "a", cwd=r1)
    hg("init", str(r2))
    out = hg.out("push", "-v", str(r2), cwd=r1)
    assert f"lfs: uploading {oid_of(A)} (12 bytes)" in out and "lfs: uploaded 1 files (12 bytes)" in out
    assert stored_oids(server.root) == {oid_of(A)}

    # A second push uploads only the new blobs, not the one the server already has.
    (r1 / "b").write_bytes(B)
    (r1 / "big").write_bytes(BIG)
    (r1 / "a-copy").write_bytes(A)
    hg("commit", "-A", "-m", "more", cwd=r1)
    out = hg.out("push", "-v", str(r2), cwd=r1)
    assert f"lfs: uploading {oid_of(A)}" not in out
    assert f"lfs: uploading {oid_of(B)}" in out and f"lfs: uploading {oid_of(BIG)}" in out
    assert stored_oids(server.root) == {oid_of(A), oid_of(B), oid_of(BIG)}
    assert object_path(server.root, oid_of(BIG)).read_bytes() == BIG

    # update: every blob of the working copy in one batch.
    r3 = tmp_path / "repo3"
    hg("clone", "-U", str(r2), str(r3))
    clear_local_blobs(hg, r3)
    before = count_in_log(server, BATCH)
    out = hg.out("update", "-v", "tip", cwd=r3)
    assert "lfs: need to transfer 3 objects" in out
    assert count_in_log(server, BATCH) == before + 1
    assert (r3 / "big").read_bytes() == BIG and (r3 / "a-copy").read_bytes() == A

    # archive, cat and revert each fetch what they need in one batch too.
    for args, check in (
        (["archive", "-r", "tip", str(tmp_path / "arch")], lambda: (tmp_path / "arch" / "big").read_bytes() == BIG),
        (["cat", "-r", "tip", "-o", str(tmp_path / "cat-%s"), "a", "b", "big"],
         lambda: [(tmp_path / f"cat-{n}").read_bytes() for n in ("a", "b", "big")] == [A, B, BIG]),
    ):
        clear_local_blobs(hg, r3)
        before = count_in_log(server, BATCH)
        hg(*args, cwd=r3)
        assert count_in_log(server, BATCH) == before + 1, args
        assert check(), args
    (r3 / "a").write_bytes(b"local edit\n")
    (r3 / "b").write_bytes(b"local edit\n")
    clear_local_blobs(hg, r3)
    before = count_in_log(server, BATCH)
    hg("revert", "a", "b", cwd=r3)
    assert count_in_log(server, BATCH) == before + 1
    assert (r3 / "a").read_bytes() == A and (r3 / "b").read_bytes() == B
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("rehash", ["in-batch", "while-streaming"])
def test_blob_corrupted_on_server_is_never_kept(lfsserve, tmp_path, rehash):
    # in-batch: the batch re-hashes the changed file and answers 422. while-streaming: with no
    # re-hash budget the batch hands out a download, and the GET is cut short.
    config = "[lfs]\nbatch_rehash_bytes = 0\n" if rehash == "while-streaming" else None
    server = lfsserve(config=config)
    hg = lfs_hg(tmp_path, f"{server.url}/team/app")  # the bare lfs.url prefix form
    r1, r2 = tmp_path / "repo1", tmp_path / "repo2"
    hg("init", str(r1))
    (r1 / "big").write_bytes(BIG)
    hg("commit", "-A", "-m", "big", cwd=r1)
    hg("init", str(r2))
    hg("push", str(r2), cwd=r1)
    corrupt(object_path(server.root, oid_of(BIG)))

    r3 = tmp_path / "repo3"
    hg("clone", "-U", str(r2), str(r3))
    clear_local_blobs(hg, r3)
    res = hg("update", "tip", cwd=r3, check=False)
    err = res.stderr.decode()
    assert res.returncode != 0
    if rehash == "in-batch":
        assert 'LFS server error for "big": Validation error' in err
    else:
        assert "does not match Content-Length" in err or "corrupt remote lfs object" in err, err
    assert local_blob_paths(hg, r3, oid_of(BIG)) == []
    assert not (r3 / "big").exists()
    # Any push of the blob repairs it: the upload batch asks for the corrupt object again.
    hg("init", str(tmp_path / "repo2b"))
    out = hg.out("push", "-v", str(tmp_path / "repo2b"), cwd=r1)
    assert f"lfs: uploading {oid_of(BIG)}" in out
    clear_local_blobs(hg, r3)
    hg("update", "tip", cwd=r3)
    assert (r3 / "big").read_bytes() == BIG


def test_blob_missing_on_server(lfsserve, tmp_path):
    server = lfsserve()
    hg = lfs_hg(tmp_path, f"{server.url}/team/app/.git/info/lfs")
    r1, r2 = tmp_path / "repo1", tmp_path / "repo2"
    hg("init", str(r1))
    (r1 / "a").write_bytes(A)
    hg("commit", "-A", "-m", "a", cwd=r1)
    hg("init", str(r2))
    hg("push", str(r2), cwd=r1)
    object_path(server.root, oid_of(A)).unlink()
    r3 = tmp_path / "repo3"
    hg("clone", "-U", str(r2), str(r3))
    clear_local_blobs(hg, r3)
    res = hg("update", "tip", cwd=r3, check=False)
    assert res.returncode != 0
    assert 'LFS server error for "a": The object does not exist' in res.stderr.decode()


def test_locally_corrupted_blob_is_not_uploaded(lfsserve, tmp_path):
    server = lfsserve()
    hg = lfs_hg(tmp_path, f"{server.url}/team/app/.git/info/lfs")
    r1 = tmp_path / "repo1"
    hg("init", str(r1))
    (r1 / "a").write_bytes(A)
    hg("commit", "-A", "-m", "a", cwd=r1)
    for p in local_blob_paths(hg, r1, oid_of(A)):
        p.chmod(0o644)
        p.write_bytes(b"THIS-IS-LFS-BAD\n")
    hg("init", str(tmp_path / "repo2"))
    res = hg("push", str(tmp_path / "repo2"), cwd=r1, check=False)
    assert res.returncode != 0
    assert f"detected corrupt lfs object: {oid_of(A)}" in res.stderr.decode()
    assert stored_oids(server.root) == set() and temp_files(server.root) == []
    # The server refuses the bad bytes even from a client that does not check first.
    status, _, body = request(f"{server.url}/team/app/.hg/lfs/objects/{oid_of(A)}", "PUT", b"THIS-IS-LFS-BAD\n")
    assert status == 422 and oid_of(b"THIS-IS-LFS-BAD\n").encode() in body
    assert stored_oids(server.root) == set() and temp_files(server.root) == []


def test_hg_with_users_tokens_and_rules(lfsserve, tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode() + "\n"
                        "bob:" + bcrypt.hashpw(b"builder", bcrypt.gensalt(4)).decode() + "\n")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"carol:{hash_token('carol-secret-token')}\n")
    server = lfsserve(anonymous="none", config=f"""
[auth]
htpasswd = "{htpasswd}"
tokens = "{tokens}"
[[auth.rules]]
repos = "team/**"
read = ["bob"]
write = ["alice", "carol"]
""")
    url = f"{server.url}/team/app/.git/info/lfs"

    def as_user(user: str | None, password: str | None, name: str) -> Hg:
        extra = ""
        if user:
            extra = f"[auth]\ns.prefix = {server.url}\ns.username = {user}\ns.password = {password}\n"
        return lfs_hg(tmp_path, url, extra, name)

    alice = as_user("alice", "wonderland", "alice")
    r1 = tmp_path / "repo1"
    alice("init", str(r1))
    (r1 / "a").write_bytes(A)
    alice("commit", "-A", "-m", "a", cwd=r1)
    for name, who, ok, why in (
        ("anon", as_user(None, None, "anon"), False, "401"),
        ("wrong", as_user("alice", "nope", "wrong"), False, "401"),
        ("bob", as_user("bob", "builder", "bob"), False, "403"),
        ("carol", as_user("carol", "carol-secret-token", "carol"), True, ""),
    ):
        dest = tmp_path / f"dest-{name}"
        who("init", str(dest))
        res = who("push", str(dest), cwd=r1, check=False)
        assert (res.returncode == 0) == ok, (name, res.stderr)
        if not ok:
            err = res.stderr.decode()
            assert why in err or "authorization" in err.lower(), (name, err)
    assert stored_oids(server.root) == {oid_of(A)}
    # bob can read what carol uploaded.
    bob = as_user("bob", "builder", "bob")
    r3 = tmp_path / "repo3"
    bob("clone", "-U", str(tmp_path / "dest-carol"), str(r3))
    bob("update", "tip", cwd=r3)
    assert (r3 / "a").read_bytes() == A
