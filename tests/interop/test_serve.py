"""The `lfsserve` command itself: it starts, answers, shuts down cleanly, and rejects bad configs."""

import signal
import subprocess
import sys

import pytest

from ..support import REPO_ROOT
from .lfs_http import request

pytestmark = pytest.mark.interop


def test_serve_health_request_id_and_sigterm(lfsserve):
    server = lfsserve()
    status, headers, body = request(server.url + "/healthz")
    assert status == 200 and body == b"ok\n"
    assert len(headers["X-Request-Id"]) == 16
    status, _, body = request(server.url + "/a/%2e%2e/b")
    assert status == 400 and b"percent-encoded" in body
    assert server.stop(signal.SIGTERM) == 0


def test_version_and_bad_config(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lfsserve", "--version"], capture_output=True, text=True,
                         cwd=REPO_ROOT)
    assert out.returncode == 0 and out.stdout.startswith("lfsserve ")
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[server]\nport = 'eighty'\n")
    out = subprocess.run([sys.executable, "-m", "lfsserve", "serve", "--config", str(cfg)],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=30)
    assert out.returncode == 2 and "server.port" in out.stderr
