"""The Docker image, built and run for real (podman or docker), used the way README's Deployment says.

One image build and one data volume for the module: add a user with a one-off container, start
the server with nothing but the published port, the volume and the user settings, then push
and clone an hg repository with LFS files through it, check the admin commands, stop it with
SIGTERM (exit 0), and start a replacement container on the same volume (an upgrade).
"""

from __future__ import annotations

import os
import secrets
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ..support import Hg
from .container import find_engine, image_healthcheck

pytestmark = [pytest.mark.interop, pytest.mark.slow]

PASSWORD = "c0ntainer-" + secrets.token_hex(4)


@pytest.fixture(scope="module")
def image():
    engine = find_engine()
    tag = f"localhost/lfsserve-test-{secrets.token_hex(4)}:latest"
    try:
        engine.build(tag)
        yield engine, tag
    finally:
        engine.cleanup()


@pytest.fixture(scope="module")
def served(image):
    engine, tag = image
    volume = engine.volume()
    # README: users are added with a one-off container on the data volume, before the server starts.
    out = engine.run(tag, "adduser", "--htpasswd", "/data/htpasswd", "--password-stdin", "alice",
                     volume=volume, input=PASSWORD.encode() + b"\n")
    assert b"alice" in out.stdout
    env = {"LFSSERVE_AUTH_HTPASSWD": "/data/htpasswd", "LFSSERVE_AUTH_AUTHENTICATED": "write",
           "LFSSERVE_HG_CREATE_ON_PUSH": "true"}
    container = engine.start(tag, volume=volume, env=env)
    return engine, tag, volume, env, container


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_image_runs_as_documented(served):
    engine, tag, _, _, container = served
    assert container.exec("id", "-u").stdout.strip() == b"10001"  # not root
    assert container.exec(*image_healthcheck(engine, tag), check=False).returncode == 0
    assert get(container.url + "/readyz") == (200, b"ready\n")
    assert container.exec("lfsserve", "--version").stdout.startswith(b"lfsserve ")


def hg_client(home: Path, url: str, hgrc: str = "") -> Hg:
    return Hg(home, "[extensions]\nlfs =\n[lfs]\ntrack = size('>10KB')\n" + hgrc)


def test_hg_push_clone_and_lfs_through_container(served, tmp_path):
    _, _, _, _, container = served
    url = container.url + "/team/app"
    auth = (f"[auth]\nsrv.prefix = {container.url}\nsrv.username = alice\nsrv.password = {PASSWORD}\n")
    writer = hg_client(tmp_path / "writer-home", url, auth)
    work = tmp_path / "work"
    writer("init", str(work))
    (work / "README").write_text("hello from the container test\n")
    big = os.urandom(300_000)
    (work / "asset.bin").write_bytes(big)
    writer("add", cwd=work)
    writer("commit", "-m", "first", cwd=work)

    assert "remote: added 1 changesets" in writer.out("push", url, cwd=work)  # creates team/app
    anonymous = hg_client(tmp_path / "anon-home", url)
    clone = tmp_path / "clone"
    anonymous("clone", url, str(clone))  # fresh usercache: the LFS blob comes from the container
    assert (clone / "asset.bin").read_bytes() == big
    assert (clone / "README").read_text() == "hello from the container test\n"
    assert anonymous.out("log", "-T", "{desc}", cwd=clone) == "first"

    # anonymous clients may read, not write
    (clone / "README").write_text("anonymous change\n")
    anonymous("commit", "-m", "anonymous", cwd=clone)
    refused = anonymous("push", url, cwd=clone, check=False)
    assert refused.returncode != 0 and b"authorization" in (refused.stdout + refused.stderr).lower()


def test_admin_commands_sigterm_and_upgrade(served, tmp_path):
    engine, tag, volume, env, container = served
    repos = container.exec("lfsserve", "repos").stdout.decode()
    assert "team/app" in repos
    assert container.exec("lfsserve", "verify").returncode == 0
    logs = container.logs()
    assert "listening on http://0.0.0.0:8080" in logs and " rid=" in logs

    assert container.stop() == 0  # SIGTERM handled: clean exit, not 137/143

    # A new container on the same volume (what an upgrade is) serves the same data.
    replacement = engine.start(tag, volume=volume, env=env)
    status, body = get(replacement.url + "/team/app?cmd=heads")
    assert status == 200 and len(body.strip()) == 40
    assert replacement.stop() == 0
