"""LFS objects in an S3 bucket (moto in server mode): real hg and git-lfs, proxy and direct mode,
S3 going away mid-test.

In proxy mode the bytes pass through lfsserve (multipart to the bucket, Range passed through);
in direct mode the batch answers are presigned S3 URLs and lfsserve sees no object bytes: hg's
uploads (hg never calls verify) are checked and installed when its push names them, git-lfs's
by the verify action.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lfsserve.admin import collect_garbage, open_lfs, usage, verify_blobs
from lfsserve.config import load_config

from ..s3server import MotoServer
from ..support import oid_of
from .lfs_http import batch, request
from .lfs_util import count_in_log
from .test_lfs_git import Git
from .test_lfs_hg import clear_local_blobs, lfs_hg

pytestmark = pytest.mark.interop

LFS = "application/vnd.git-lfs+json"


def _keys(moto: MotoServer, bucket: str) -> set[str]:
    out: set[str] = set()
    for page in moto.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.update(o["Key"] for o in page.get("Contents", ()))
    return out


def _final(oid: str) -> str:
    return f"lfs/objects/{oid[:2]}/{oid[2:4]}/{oid}"


@pytest.mark.parametrize("mode", ["proxy", "direct"])
def test_hg_and_git_lfs_through_a_bucket(lfsserve, moto, tmp_path, mode):
    bucket = moto.create_bucket()
    server = lfsserve(config=moto.storage_toml(bucket, transfer=mode) + "[hg]\ncreate_on_push = true\n",
                      env=moto.env)
    a, big = b"THIS-IS-LFS\n", random.Random(7).randbytes(3 * 1024 * 1024 + 11)

    # hg: push to the server's repository; the push's pointers must name stored blobs.
    hg = lfs_hg(tmp_path, f"{server.url}/team/app/.git/info/lfs")
    work = tmp_path / "hgwork"
    hg("init", str(work))
    (work / "a").write_bytes(a)
    (work / "big").write_bytes(big)
    hg("commit", "-A", "-m", "blobs", cwd=work)
    hg("push", f"{server.url}/team/app", cwd=work)
    assert _keys(moto, bucket) == {_final(oid_of(a)), _final(oid_of(big))}  # installed, nothing staged
    clone = tmp_path / "hgclone"
    hg("clone", "-U", f"{server.url}/team/app", str(clone))
    clear_local_blobs(hg, clone)
    hg("update", "tip", cwd=clone)
    assert (clone / "big").read_bytes() == big and (clone / "a").read_bytes() == a

    # git-lfs: push --all, then pull into a clone.
    git = Git(tmp_path / "githome")
    remote, gwork = tmp_path / "remote.git", tmp_path / "gitwork"
    git("init", "-q", "--bare", str(remote))
    git("init", "-q", str(gwork))
    git("config", "lfs.url", f"{server.url}/team/game.git/info/lfs", cwd=gwork)
    git("remote", "add", "origin", str(remote), cwd=gwork)
    git("lfs", "track", "*.bin", cwd=gwork)
    # proxy: one 100 MB object, resumed with a Range request below; direct: a few MB.
    size = 100 * 1024 * 1024 if mode == "proxy" else 5 * 1024 * 1024 + 3
    huge = random.Random(8).randbytes(size)
    small = b"small git object\n"
    (gwork / "huge.bin").write_bytes(huge)
    (gwork / "small.bin").write_bytes(small)
    git("add", ".", cwd=gwork)
    git("commit", "-q", "-m", "assets", cwd=gwork)
    git("push", "-q", "origin", "main", cwd=gwork)
    assert {_final(oid_of(huge)), _final(oid_of(small))} <= _keys(moto, bucket)
    assert not [k for k in _keys(moto, bucket) if not k.startswith("lfs/objects/")]
    # Direct uploads are checked and installed by the verify action; proxied ones need none (the
    # PUT through lfsserve is answered only once the object is checked and stored).
    assert count_in_log(server, 'POST /team/game/.hg/lfs/verify HTTP/1.1" 200') == (2 if mode == "direct" else 0)

    gclone = tmp_path / "gitclone"
    git("clone", "-q", str(remote), str(gclone), env={"GIT_LFS_SKIP_SMUDGE": "1"})
    git("config", "lfs.url", f"{server.url}/team/game.git/info/lfs", cwd=gclone)
    if mode == "proxy":
        # An interrupted download: git-lfs resumes it from what it has with a Range request.
        incoming = gclone / ".git" / "lfs" / "incomplete"
        incoming.mkdir(parents=True, exist_ok=True)
        for name in (f"{oid_of(huge)}.part", f"{oid_of(huge)}.tmp"):  # git-lfs 3.x, 2.x
            (incoming / name).write_bytes(huge[:size // 2 + 5])
    git("lfs", "pull", cwd=gclone)
    assert (gclone / "huge.bin").read_bytes() == huge and (gclone / "small.bin").read_bytes() == small
    if mode == "proxy":
        assert count_in_log(server, f'GET /team/game/.hg/lfs/objects/{oid_of(huge)} HTTP/1.1" 206') == 1
    else:
        # Object bytes never passed through lfsserve.
        assert count_in_log(server, '"PUT /') == 0 and count_in_log(server, "/.hg/lfs/objects/") == 0
        # Downloads are presigned S3 GETs that git-lfs must not send credentials to.
        status, _, answer = batch(f"{server.url}/team/game.git/info/lfs", "download",
                                  [{"oid": oid_of(small), "size": len(small)}])
        (obj,) = answer["objects"]
        action = obj["actions"]["download"]
        assert status == 200 and obj["authenticated"] is True and action["href"].startswith(moto.url)
        assert "X-Amz-Signature=" in action["href"] and "Authorization" not in action.get("header", {})
        # Uploads go to a staging key, bound to their size and SHA-256; verify is this server's.
        new = b"one more object\n"
        status, _, answer = batch(f"{server.url}/team/game.git/info/lfs", "upload",
                                  [{"oid": oid_of(new), "size": len(new)}])
        actions = answer["objects"][0]["actions"]
        assert "/lfs/incoming/" in actions["upload"]["href"] and actions["verify"]["href"].startswith(server.url)
        assert "content-length%3Bhost%3Bx-amz-checksum-sha256" in actions["upload"]["href"]
        assert request(actions["upload"]["href"], "PUT", new, actions["upload"]["header"])[0] == 200
        # Staged, not yet an object: invisible until checked (here by the download batch, as for hg).
        assert _final(oid_of(new)) not in _keys(moto, bucket)
        status, _, answer = batch(f"{server.url}/team/game.git/info/lfs", "download",
                                  [{"oid": oid_of(new), "size": len(new)}])
        assert "actions" in answer["objects"][0] and _final(oid_of(new)) in _keys(moto, bucket)
    assert "Traceback" not in server.log()


def test_s3_outage_answers_503_with_retry_after_and_recovers(lfsserve, tmp_path):
    own = MotoServer.start()  # this test stops it: not the session's server
    try:
        bucket = own.create_bucket()
        server = lfsserve(config=own.storage_toml(bucket), env=own.env)
        base = f"{server.url}/team/app/.git/info/lfs"
        data = random.Random(3).randbytes(300_000)
        oid = oid_of(data)
        obj = f"{server.url}/team/app/.hg/lfs/objects/{oid}"
        assert request(obj, "PUT", data)[0] == 201
        # Ranges and HEAD pass through to S3.
        status, headers, got = request(obj, "GET", headers={"Range": "bytes=1000-1999"})
        assert status == 206 and got == data[1000:2000] and headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
        status, headers, got = request(obj, "GET", headers={"Range": "bytes=-10"})
        assert status == 206 and got == data[-10:]
        status, headers, _ = request(obj, "GET", headers={"Range": f"bytes={len(data)}-"})
        assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
        status, headers, got = request(obj, "HEAD")
        assert status == 200 and int(headers["Content-Length"]) == len(data) and got == b""

        own.stop()
        started = time.monotonic()
        body = ('{"operation":"download","objects":[{"oid":"%s","size":%d}]}' % (oid, len(data))).encode()
        status, headers, text = request(base + "/objects/batch", "POST", body,
                                        {"Accept": LFS, "Content-Type": LFS}, timeout=120)
        assert status == 503 and int(headers["Retry-After"]) > 0, text
        assert b"try again" in text
        status, headers, _ = request(obj, "GET", timeout=120)
        assert status == 503 and headers["Retry-After"]
        other = random.Random(4).randbytes(20 * 1024 * 1024)  # a multipart upload: refused, not half-stored
        status, headers, _ = request(f"{server.url}/team/app/.hg/lfs/objects/{oid_of(other)}", "PUT", other,
                                     timeout=120)
        assert status == 503 and headers["Retry-After"]
        assert time.monotonic() - started < 100  # failed over, not hung

        own.restart()  # moto comes back empty: the client uploads again and all is well
        assert request(obj, "GET")[0] == 404  # the bucket lost it; the server says so plainly
        assert request(obj, "PUT", data)[0] == 201
        status, _, got = request(obj, "GET")
        assert status == 200 and got == data
        assert server.alive() and "Traceback" not in server.log()
    finally:
        own.stop()


async def test_storage_copy_verify_repos_gc_on_a_bucket(moto, tmp_path):
    """`lfsserve storage copy --to s3` (the command), then the admin operations behind `verify`,
    `repos` and `gc` (admin.py, as the CLI runs them) on the bucket."""
    root = tmp_path / "data"
    root.mkdir()
    bucket = moto.create_bucket()
    cfg = tmp_path / "s3.toml"
    cfg.write_text(moto.storage_toml(bucket, prefix="mig/"))
    local = load_config(env={"LFSSERVE_ROOT": str(root)})
    blobs = [random.Random(i).randbytes(n) for i, n in enumerate((10, 70_000, 9 * 1024 * 1024))]

    async def chunks(data: bytes):
        yield data

    async with open_lfs(local) as svc:  # a local store with objects visible in team/app
        for blob in blobs:
            await svc.receive("team/app", oid_of(blob), chunks(blob))

    # As if an earlier run was interrupted after copying the first object.
    client = moto.client()
    first = oid_of(blobs[0])
    client.put_object(Bucket=bucket, Key="mig/" + _final(first), Body=blobs[0], Metadata={"lfs-sha256": first})
    res = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "lfsserve", "storage", "copy", "--to", "s3", "--root", str(root),
                         "--config", str(cfg)],
        env={**moto.env, "PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).parents[2])
    assert res.returncode == 0, res.stderr
    assert "copied 2 LFS objects" in res.stdout and "1 were already there" in res.stdout
    assert _keys(moto, bucket) == {"mig/" + _final(oid_of(b)) for b in blobs}

    s3 = load_config(cfg, env={"LFSSERVE_ROOT": str(root), **moto.env})
    os.environ.update(moto.env)  # the S3 credentials, from the standard chain as in production
    try:
        # verify finds an object another tool damaged in the bucket, and quarantines it ...
        bad = oid_of(blobs[1])
        client.put_object(Bucket=bucket, Key="mig/" + _final(bad), Body=blobs[1][:-1] + b"!")
        result = await verify_blobs(s3)
        assert result.checked == 3 and result.corrupt == [bad]
        assert result.quarantined[bad].startswith(f"s3://{bucket}/mig/lfs/quarantine/{bad}.")
        # ... repos counts what the bucket holds for each repository ...
        rows = {row.name: row for row in await usage(s3)}
        assert rows["team/app"].lfs_objects == 2
        assert rows["team/app"].lfs_bytes == len(blobs[0]) + len(blobs[2])
        # ... and gc deletes what no repository references any more.
        gc = await collect_garbage(s3, 0, apply=True, forget=["team/app"])
        assert sorted(gc.deleted) == sorted([first, oid_of(blobs[2])])
        assert [k for k in _keys(moto, bucket) if "/objects/" in k] == []
    finally:
        for key in moto.env:
            os.environ.pop(key, None)
