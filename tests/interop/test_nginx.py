"""Real nginx with deploy/nginx.conf in front of a real lfsserve: hg, hg lfs and git-lfs through the sub-path."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from .nginx import MOUNT, start_nginx

pytestmark = pytest.mark.interop

PROXY_CONFIG = '[server]\ntrusted_proxies = ["127.0.0.1"]\n'


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def fetch(url, data=None, headers=None, method=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


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
    status, headers, body = fetch(nginx.url + "/healthz")
    assert (status, body) == (200, b"ok\n")
    rid = headers["X-Request-Id"]
    assert len(rid) == 32  # nginx's $request_id, taken over by lfsserve
    assert wait_for(lambda: f"rid={rid}" in server.log()), server.log()[-2000:]
    assert fetch(nginx.url + "/readyz")[0] == 200
    assert fetch(nginx.url + "/metrics")[0] == 404  # not published through the proxy
    assert fetch(server.url + "/metrics")[0] == 200  # but scrapeable on the backend
    status, headers, _ = fetch(f"http://127.0.0.1:{nginx.port}{MOUNT}")
    assert status == 301 and headers["Location"].endswith(f":{nginx.port}{MOUNT}/")
