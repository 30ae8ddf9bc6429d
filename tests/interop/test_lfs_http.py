"""Raw HTTP against a real `lfsserve serve`: bad input, broken clients, crashes, tokens, proxies.

Every bad request gets its 4xx with an LFS JSON message, leaves no object and no temp file
behind, and the server keeps serving.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pytest

from lfsserve.auth import Authenticator, Principal
from lfsserve.config import load_config

from ..support import oid_of
from .lfs_http import LFS, batch, request
from .lfs_util import object_path, stored_oids, temp_files

pytestmark = pytest.mark.interop

J = {"Accept": LFS, "Content-Type": LFS}
GOOD = b"good content\n"
BATCH = "/team/app/.git/info/lfs/objects/batch"
OBJ = "/team/app/.hg/lfs/objects/"


def _bad_requests():
    many = json.dumps({"operation": "upload", "objects": [{"oid": "a" * 64, "size": 1}] * 6})
    yield "batch GET", "GET", BATCH, J, None, 405
    yield "batch text/plain", "POST", BATCH, {"Content-Type": "text/plain"}, b"{}", 415
    yield "batch Accept html", "POST", BATCH, {"Accept": "text/html", "Content-Type": LFS}, b"{}", 406
    yield "batch not json", "POST", BATCH, J, b"{\"operation\": ", 400
    yield "batch not utf-8", "POST", BATCH, J, b"\xff\xfe\x00", 400
    yield "batch array", "POST", BATCH, J, b"[]", 422
    yield "batch op", "POST", BATCH, J, b'{"operation": "delete", "objects": []}', 422
    yield "batch transfers", "POST", BATCH, J, b'{"operation": "upload", "objects": [], "transfers": ["x"]}', 422
    yield "batch hash", "POST", BATCH, J, b'{"operation": "upload", "objects": [], "hash_algo": "md5"}', 409
    yield "batch too many", "POST", BATCH, J, many.encode(), 413
    yield "batch too big", "POST", BATCH, J, b" " * (64 * 1024 + 5 * 256 + 1), 413
    yield "PUT mismatch", "PUT", OBJ + oid_of(b"other"), {}, GOOD, 422
    yield "PUT too large", "PUT", OBJ + oid_of(b"x" * 2000), {}, b"x" * 2000, 413
    yield "PUT short oid", "PUT", OBJ + "abc", {}, GOOD, 400
    yield "PUT upper oid", "PUT", OBJ + oid_of(GOOD).upper(), {}, GOOD, 400
    yield "PUT traversal", "PUT", "/team/../etc/.hg/lfs/objects/" + oid_of(GOOD), {}, GOOD, 400
    yield "PUT encoded", "PUT", "/team/%2e%2e/x/.hg/lfs/objects/" + oid_of(GOOD), {}, GOOD, 400
    yield "DELETE object", "DELETE", OBJ + oid_of(GOOD), {}, None, 405
    yield "GET missing", "GET", OBJ + oid_of(GOOD), {}, None, 404
    yield "verify GET", "GET", "/team/app/.hg/lfs/verify", {}, None, 405
    yield "verify junk", "POST", "/team/app/.hg/lfs/verify", J, b"junk", 400
    yield "verify no oid", "POST", "/team/app/.hg/lfs/verify", J, b'{"size": 1}', 422
    yield ("verify unknown", "POST", "/team/app/.hg/lfs/verify", J,
           json.dumps({"oid": oid_of(GOOD), "size": 13}).encode(), 404)
    yield "lock no path", "POST", "/team/app.git/info/lfs/locks", J, b"{}", 422
    yield "unlock unknown", "POST", "/team/app.git/info/lfs/locks/nope/unlock", J, b"{}", 404
    yield "lfs unknown endpoint", "POST", "/team/app.git/info/lfs/objects/other", J, b"{}", 400


BAD = list(_bad_requests())


def test_bad_input_gets_4xx_and_leaves_nothing(lfsserve):
    server = lfsserve(config="[lfs]\nmax_batch_objects = 5\nmax_object_size = 1000\n")
    for name, method, path, headers, body, expected in BAD:
        status, hdrs, raw = request(server.url + path, method, body, headers)
        assert status == expected, (name, status, raw[:300])
        # Every answer is LFS JSON, including paths routing refuses before the LFS front end.
        assert hdrs["Content-Type"] == LFS, name
        answer = json.loads(raw)
        assert answer["message"] and answer["request_id"] == hdrs["X-Request-Id"], name
    # Chunked body over the size limit: refused while streaming.
    def chunks():
        for _ in range(3):
            yield b"y" * 600
    status, _, _ = request(server.url + OBJ + oid_of(b"y" * 1800), "PUT", chunks(), {"Transfer-Encoding": "chunked"})
    assert status == 413
    assert stored_oids(server.root) == set() and temp_files(server.root) == []
    assert "Traceback" not in server.log()
    # Still serving: a good upload works.
    assert request(server.url + OBJ + oid_of(GOOD), "PUT", GOOD)[0] == 201
    assert request(server.url + OBJ + oid_of(GOOD))[2] == GOOD


def _partial_put(url: str, oid: str, total: int, sent: int) -> socket.socket:
    host, port = url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(f"PUT /team/app/.hg/lfs/objects/{oid} HTTP/1.1\r\nHost: {host}\r\n"
              f"Content-Length: {total}\r\nContent-Type: application/octet-stream\r\n\r\n".encode())
    s.sendall(os.urandom(sent))
    return s


def _wait_for(predicate, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_client_disconnecting_mid_upload_leaves_nothing(lfsserve):
    server = lfsserve()
    oid = oid_of(b"never completed")
    s = _partial_put(server.url, oid, 20 << 20, 3 << 20)
    assert _wait_for(lambda: len(temp_files(server.root)) == 1)
    s.close()
    assert _wait_for(lambda: temp_files(server.root) == [])
    assert stored_oids(server.root) == set()
    assert request(server.url + "/healthz")[0] == 200


def test_abandoned_temp_files_are_removed_at_startup(lfsserve, tmp_path):
    root = tmp_path / "srv"
    server = lfsserve(root=root)
    s = _partial_put(server.url, oid_of(b"crash"), 20 << 20, 2 << 20)
    assert _wait_for(lambda: len(temp_files(root)) == 1)
    server.stop(signal.SIGKILL)
    s.close()
    assert len(temp_files(root)) == 1  # a crash leaves it behind...
    again = lfsserve(root=root)
    assert temp_files(root) == []  # ...and the next start removes it
    assert request(again.url + "/healthz")[0] == 200


def test_concurrent_uploads_of_one_object(lfsserve):
    server = lfsserve()
    data = os.urandom(3 << 20)
    oid = oid_of(data)
    statuses: list[int] = []

    def put() -> None:
        statuses.append(request(f"{server.url}/team/app/.hg/lfs/objects/{oid}", "PUT", data)[0])

    threads = [threading.Thread(target=put) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(statuses)) in ([201], [200, 201]) and len(statuses) == 6
    assert object_path(server.root, oid).read_bytes() == data
    assert temp_files(server.root) == []


def test_tokens_expire_and_stay_in_scope(lfsserve, tmp_path):
    root = tmp_path / "srv"
    server = lfsserve(root=root, anonymous="none", config='[[auth.rules]]\nrepos = "**"\nread = ["anonymous"]\n')
    # Upload as an admin would: no writer exists, so plant the object with a signed token.
    auth = Authenticator(load_config(overrides={"server": {"root": str(root)}}, env={}))
    oid = oid_of(GOOD)
    later = int(time.time()) + 60

    def bearer(op: str, expires_at: int, ns: str = "team/app", o: str = oid) -> dict:
        return {"Authorization": "Bearer " + auth.sign_action(Principal("admin", "basic"), ns, o, op, expires_at)}

    url = f"{server.url}/team/app/.hg/lfs/objects/{oid}"
    assert request(url, "PUT", GOOD)[0] == 401  # anonymous may only read
    assert request(url, "PUT", GOOD, bearer("download", later))[0] == 401
    assert request(url, "PUT", GOOD, bearer("upload", later, "team/other"))[0] == 401
    status, _, body = request(url, "PUT", GOOD, bearer("upload", int(time.time()) - 1))
    assert status == 401 and b"expired" in body
    assert request(url, "PUT", GOOD, bearer("upload", later))[0] == 201
    assert request(url)[2] == GOOD  # anonymous read
    # A token works for its own object only.
    other = oid_of(b"other")
    assert request(f"{server.url}/team/app/.hg/lfs/objects/{other}", "PUT", b"other", bearer("upload", later))[0] == 401


@pytest.mark.parametrize("trusted", [True, False])
def test_hrefs_from_trusted_proxy_headers(lfsserve, trusted):
    config = '[server]\ntrusted_proxies = ["127.0.0.0/8"]\n' if trusted else None
    server = lfsserve(config=config)
    fwd = {"Forwarded": 'for=10.0.0.1;proto=https;host="lfs.example.org"', "X-Forwarded-Prefix": "/git"}
    _status, _, body = batch(f"{server.url}/team/app/.git/info/lfs", "upload", [{"oid": oid_of(b"p"), "size": 1}], fwd)
    href = body["objects"][0]["actions"]["upload"]["href"]
    base = "https://lfs.example.org/git" if trusted else server.url
    assert href == f"{base}/team/app/.hg/lfs/objects/{oid_of(b'p')}"


def test_base_url_setting_wins(lfsserve):
    server = lfsserve(config='[server]\nbase_url = "https://hg.example.com/mirror/"\n')
    _status, _, body = batch(f"{server.url}/team/app.git/info/lfs", "download", [{"oid": oid_of(b"p"), "size": 1}])
    assert body["objects"][0]["error"]["code"] == 404
    _, _, body = batch(f"{server.url}/team/app.git/info/lfs", "upload", [{"oid": oid_of(b"p"), "size": 1}])
    assert body["objects"][0]["actions"]["upload"]["href"].startswith("https://hg.example.com/mirror/team/app/")


def test_large_download_and_clients_leaving_mid_download(lfsserve):
    """Whole-object GETs go out with sendfile; clients that vanish cost no descriptor and no error."""
    server = lfsserve()
    data = os.urandom(24 << 20)
    oid = oid_of(data)
    url = f"{server.url}/team/app/.hg/lfs/objects/{oid}"
    assert request(url, "PUT", data)[0] == 201
    status, headers, body = request(url)
    assert status == 200 and body == data and headers["Content-Type"] == "application/octet-stream"
    fds = lambda: len(os.listdir(f"/proc/{server.proc.pid}/fd"))  # noqa: E731
    before = fds()
    host, port = server.url.split("//")[1].split(":")
    for _ in range(5):
        s = socket.create_connection((host, int(port)))
        s.sendall(f"GET /team/app/.hg/lfs/objects/{oid} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.close()
    assert _wait_for(lambda: fds() <= before)
    status, _, body = request(url, headers={"Range": "bytes=1000-1999"})
    assert status == 206 and body == data[1000:2000]
    assert request(url)[2] == data
    assert "Traceback" not in server.log()


def test_cross_namespace_oid_guessing_is_refused(lfsserve):
    server = lfsserve()
    secret = b"team/app's private asset\n"
    oid = oid_of(secret)
    assert request(f"{server.url}/team/app/.hg/lfs/objects/{oid}", "PUT", secret)[0] == 201
    status, _, body = batch(f"{server.url}/other/repo.git/info/lfs", "download", [{"oid": oid, "size": len(secret)}])
    assert status == 200 and body["objects"][0]["error"]["code"] == 404
    assert request(f"{server.url}/other/repo/.hg/lfs/objects/{oid}")[0] == 404
    _, _, body = batch(f"{server.url}/other/repo.git/info/lfs", "upload", [{"oid": oid, "size": len(secret)}])
    assert "upload" in body["objects"][0]["actions"]  # no "already there" hint either
    assert request(f"{server.url}/other/repo/.hg/lfs/objects/{oid}", "PUT", b"guess" * 5)[0] == 422
    assert request(f"{server.url}/other/repo/.hg/lfs/objects/{oid}")[0] == 404
