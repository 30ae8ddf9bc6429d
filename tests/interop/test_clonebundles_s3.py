"""Clone bundles kept in the S3 bucket (moto) of the S3 blob store: the manifest hands out presigned
GETs, the real hg 7.2.4 applies the bundle straight from the bucket, and the bytes never pass
through lfsserve (over SSH, the inline entry is streamed from the bucket). Wire protocol v2
content-redirect answers land in the bucket the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import urllib.request

import pytest

from lfsserve.config import load_config
from lfsserve.repos import RepoRegistry
from lfsserve.wire import clonebundles as cb

from ..support import REPO_ROOT, Hg, run
from .hgrepos import history, install, verify
from .test_clonebundles import _ssh_wrapper

pytestmark = pytest.mark.interop

CONFIG = """
[auth]
anonymous = "write"
[clonebundles]
auto_generate = true
delay = 0.3
min_new_changesets = 1
formats = ["zstd-v2"]
"""
PREFIX = "site/"


def _index(moto, bucket: str, repo: str) -> list[dict]:
    try:
        body = moto.client().get_object(Bucket=bucket, Key=f"{PREFIX}clonebundles/{repo}/.clonebundles/index.json")
    except moto.client().exceptions.NoSuchKey:
        return []
    return json.loads(body["Body"].read())["bundles"]


def _bundle_keys(moto, bucket: str) -> list[str]:
    listed = moto.client().list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}clonebundles/")
    return sorted(o["Key"] for o in listed.get("Contents", ()))


def test_clone_bundles_from_the_bucket(lfsserve, moto, tmp_path):
    hg = Hg(tmp_path / "home")
    src = tmp_path / "src"
    hg("init", str(src))
    for i in range(3):
        (src / f"f{i}.txt").write_text(f"file {i}\n" * 50)
        # public, as the publishing server shows them
        hg("commit", "-q", "-A", "-m", f"change {i}", "--config", "phases.new-commit=public", cwd=src)
    bucket = moto.create_bucket()
    # direct mode: clients are sent to the bucket (presigned URLs)
    server = lfsserve(config=moto.storage_toml(bucket, transfer="direct", prefix=PREFIX) + CONFIG, env=moto.env)
    served = install(server, src, "team/app")
    url = f"{server.url}/team/app"

    # built by the admin command, into the bucket (nothing under <root>/clonebundles but the lock)
    cfg = server.root.parent / f"{server.root.name}-config.toml"
    res = run([sys.executable, "-m", "lfsserve", "clonebundles", "build", "--config", str(cfg), "--root",
               str(server.root), "team/app"], cwd=REPO_ROOT, env={**os.environ, **moto.env}, check=False)
    assert res.returncode == 0, res.stderr.decode()
    (entry,) = _index(moto, bucket, "team/app")
    assert entry["revs"] == 3
    key = f"{PREFIX}clonebundles/team/app/.clonebundles/{entry['name']}"
    assert _bundle_keys(moto, bucket) == sorted([key, f"{PREFIX}clonebundles/team/app/.clonebundles/index.json"])
    local = server.root / "clonebundles" / "team" / "app" / ".clonebundles"
    assert not [p.name for p in local.iterdir() if p.name != "lock"]

    # the manifest points at a presigned GET of the bucket; hg applies it from there
    c1 = tmp_path / "c1"
    log = hg("clone", "--debug", url, str(c1)).stdout.decode()
    assert f"applying clone bundle from {moto.url}/{bucket}/{key}?" in log, log
    assert "X-Amz-Signature=" in log and "finished applying clone bundle" in log, log
    assert "added 3 changesets" in log and log.count("added ") == 1, log
    verify(hg, c1)
    assert history(hg, served) == history(hg, c1)  # the same nodes: the same content
    assert "/.hg/clonebundles/" not in server.log()  # the bytes never passed through lfsserve

    # a push: the background build uploads a new bundle, then publishes the new index
    (c1 / "new.txt").write_text("after the bundle\n")
    hg("commit", "-q", "-A", "-m", "after the bundle", cwd=c1)
    hg("push", "-q", "-r", ".", url, cwd=c1)
    deadline = time.monotonic() + 60
    while not any(e["revs"] == 4 for e in _index(moto, bucket, "team/app")):
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.2)
    assert len(_bundle_keys(moto, bucket)) == 3  # keep = 2 bundles, and the index

    # the new bundle, over SSH: the entry is inline (peer-bundle-cache://), streamed by lfsserve
    # from the bucket
    ssh_config = tmp_path / "ssh.toml"
    ssh_config.write_text(f'[server]\nroot = "{server.root}"\n' + moto.storage_toml(bucket, prefix=PREFIX) + CONFIG)
    hg.env.update(moto.env)  # (the wrapper's `lfsserve ssh` finds its S3 credentials there)
    c3 = tmp_path / "c3"
    log = hg("clone", "--debug", "--config", f"ui.ssh={_ssh_wrapper(tmp_path, ssh_config)}",
             "ssh://lfsserve/team/app", str(c3)).stdout.decode()
    assert "applying clone bundle from peer-bundle-cache://zstd-v2-4-" in log, log
    assert "added 4 changesets" in log and log.count("added ") == 1, log
    assert history(hg, served) == history(hg, c3)
    assert "Traceback" not in server.log()

    # wire protocol v2 content redirects: the cached answer goes to the bucket, its location is
    # a presigned URL whose bytes carry the hashes the location states
    from lfsserve.wire.v2 import commands, redirect
    from lfsserve.wire.v2.framing import CommandRequest

    os.environ.update(moto.env)
    try:
        config = load_config(cfg, env={"LFSSERVE_ROOT": str(server.root)})
        store = cb.open_bundle_store(config)
        assert store is cb.open_bundle_store(config)  # one client per configuration
        with RepoRegistry(config.repos_dir).open("team/app") as repo:
            r = redirect.Redirector(store, "team/app", lambda k: store.presigned_url(k, 600) or "")
            args = {b"revisions": [{b"type": b"changesetdagrange", b"roots": [], b"heads": repo.heads()}],
                    b"fields": {b"revision", b"parents"}}
            req = CommandRequest(1, b"changesetdata", args, {b"targets": [b"lfsserve"], b"hashes": [b"sha256"]})
            loc = r.location(commands.Context(repo), req)  # type: ignore[arg-type]
            assert loc is not None and loc[b"url"].startswith(f"{moto.url}/{bucket}/{PREFIX}clonebundles/".encode())
            with urllib.request.urlopen(loc[b"url"].decode(), timeout=30) as resp:
                data = resp.read()
            assert len(data) == loc[b"size"] and [[b"sha256", hashlib.sha256(data).digest()]] == loc[b"fullhashes"]
            before = _bundle_keys(moto, bucket)
            again = r.location(commands.Context(repo), req)  # answered from the bucket, not rebuilt
            assert again is not None and again[b"fullhashes"] == loc[b"fullhashes"]
            assert _bundle_keys(moto, bucket) == before
    finally:
        for k in moto.env:
            os.environ.pop(k, None)

    # proxy mode (clients may not reach the bucket): a second instance on the same data serves
    # the bundle itself, streamed from the bucket
    proxy = lfsserve(config=moto.storage_toml(bucket, prefix=PREFIX) + CONFIG, env=moto.env, root=server.root)
    c4 = tmp_path / "c4"
    log = hg("clone", "--debug", f"{proxy.url}/team/app", str(c4)).stdout.decode()
    assert f"applying clone bundle from {proxy.url}/team/app/.hg/clonebundles/" in log, log
    assert "X-Amz-Signature=" not in log and "added 4 changesets" in log and log.count("added ") == 1, log
    assert history(hg, served) == history(hg, c4)
    assert "Traceback" not in proxy.log()
