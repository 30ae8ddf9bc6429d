"""Hostile input against a real `lfsserve serve` (issue 10, parts 5 and 6): each request that used to
end in a 500 (or in the server holding hundreds of MiB) gets its 4xx, or hg's own abort form for a
push, with a message saying what is wrong; the server keeps serving.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lfsserve.auth import SIGNED_PREFIX

from ..bundle_build import LFS_FLAG, bundle2, changegroup03, changegroup_bundle, lfs_pointer, part
from ..support import REPO_ROOT
from .lfs_util import LFS, oid_of, request

pytestmark = pytest.mark.interop

J = {"Accept": LFS, "Content-Type": LFS}
BATCH = "/team/app/.git/info/lfs/objects/batch"
LOCKS = "/team/app.git/info/lfs/locks"
VERIFY = "/team/app/.hg/lfs/verify"
OID = oid_of(b"x")
HUGE = "9" * 5000  # past Python's int-string conversion limit (4300 digits)


def _init(root: Path, name: str = "team/app") -> None:
    subprocess.run([sys.executable, "-m", "lfsserve", "init", "--root", str(root), name],
                   cwd=REPO_ROOT, check=True, capture_output=True)


def _json_error(status: int, raw: bytes) -> str:
    assert 400 <= status < 500, (status, raw[:300])
    return json.loads(raw)["message"]


def _healthy(server) -> None:
    assert request(server.url + "/healthz")[0] == 200
    assert "Traceback" not in server.log(), server.log()[-3000:]


def test_lfs_json_and_numbers_get_4xx(lfsserve):
    server = lfsserve()
    deep = b'{"operation": "upload", "objects": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    status, _, raw = request(server.url + BATCH, "POST", deep, J)
    assert status == 400 and "nested too deeply" in _json_error(status, raw)

    digits = f'{{"operation": "upload", "objects": [{{"oid": "{OID}", "size": {HUGE}}}]}}'.encode()
    status, _, raw = request(server.url + BATCH, "POST", digits, J)
    assert status == 400 and "not valid JSON" in _json_error(status, raw)

    # 4,000 digits parse: the object gets its own error; a float overflow (1e999) too
    for size in ("9" * 4000, "1e999", "18446744073709551616"):
        body = f'{{"operation": "download", "objects": [{{"oid": "{OID}", "size": {size}}}]}}'.encode()
        status, _, raw = request(server.url + BATCH, "POST", body, J)
        assert status == 200, raw[:300]
        (obj,) = json.loads(raw)["objects"]
        assert obj["error"]["code"] == 422 and "64-bit" in obj["error"]["message"] and obj["size"] is None

    for cursor in ("99999999999999999999999", "%C2%B2", "-1"):
        status, _, raw = request(f"{server.url}{LOCKS}?cursor={cursor}", "GET", None, {"Accept": LFS})
        assert status == 422 and "cursor" in _json_error(status, raw), cursor
    status, _, raw = request(f"{server.url}{LOCKS}/verify", "POST", b'{"cursor": %s}' % HUGE[:30].encode(), J)
    assert status == 422 and "cursor" in _json_error(status, raw)
    status, _, raw = request(f"{server.url}{LOCKS}?path=%FF%FE", "GET", None, {"Accept": LFS})
    assert status in (200, 422), raw  # aiohttp may decode undecodable bytes either way: never a 500
    status, _, raw = request(server.url + LOCKS, "POST", b'{"path": "\\ud800"}', J)
    assert status == 422 and "UTF-8" in _json_error(status, raw)
    status, _, raw = request(f"{server.url}{LOCKS}/%FF%00/unlock", "POST", b"{}", J)
    assert 400 <= status < 500, raw

    for size in (HUGE, "9" * 4000):  # over the verify body's 4 KiB; within it but not an int64
        status, _, raw = request(server.url + VERIFY, "POST", f'{{"oid": "{OID}", "size": {size}}}'.encode(), J)
        assert status in (413, 422) and _json_error(status, raw)
    _healthy(server)


def test_verify_checks_credentials_before_the_body(lfsserve):
    server = lfsserve(anonymous="read")
    body = f'{{"oid": "{OID}", "size": {HUGE}}}'.encode()
    status, hdrs, raw = request(server.url + VERIFY, "POST", body, J)
    assert status == 401 and "WWW-Authenticate" in hdrs, raw
    _healthy(server)


def test_malformed_authorization_headers_get_401(lfsserve):
    server = lfsserve()
    for value in ("Bearer \xff\xfe", "Basic \xe9t\xe9", f"Bearer {SIGNED_PREFIX}\u00b2.dXNlcg.mac".encode().decode("latin-1"),
                  f"Bearer {SIGNED_PREFIX}{HUGE}.dXNlcg.mac"):
        status, _, raw = request(server.url + BATCH, "POST", b'{"operation": "download", "objects": []}',
                                 {**J, "Authorization": value})
        assert status == 401, (value[:40], status, raw[:200])
        status, _, _ = request(f"{server.url}/team/app/.hg/lfs/objects/{OID}", "GET", None,
                               {"Authorization": value})
        assert status == 401
    _healthy(server)


def _wire(server, repo: str, cmd: str, args: bytes, extra: dict | None = None) -> tuple[int, bytes]:
    status, _, raw = request(f"{server.url}/{repo}?cmd={cmd}", "POST", args,
                             {"X-HgArgs-Post": str(len(args)), "Content-Type": "application/mercurial-0.1",
                              **(extra or {})})
    return status, raw


def test_discovery_arguments_are_bounded(lfsserve, tmp_path):
    root = tmp_path / "srv"
    _init(root)
    server = lfsserve(root=root)
    node = b"1" * 40
    status, raw = _wire(server, "team/app", "known", b"nodes=" + b" ".join([node] * 100_001))
    assert status == 400 and b"too many nodes" in raw, raw[:200]
    pair = node + b"-" + b"0" * 40
    status, raw = _wire(server, "team/app", "between", b"pairs=" + b"+".join([pair] * 10_001))
    assert status == 400 and b"too many pairs" in raw, raw[:200]
    # within the bounds: answered
    status, raw = _wire(server, "team/app", "known", b"nodes=" + b"+".join([node] * 1000))
    assert status == 200 and raw.endswith(b"0" * 1000), raw[:200]
    _healthy(server)


def _post_unbundle(server, repo: str, bundle: bytes) -> tuple[int, bytes]:
    status, _, raw = request(f"{server.url}/{repo}?cmd=unbundle", "POST", bundle,
                             {"X-HgArg-1": "heads=" + b"force".hex(), "Content-Type": "application/mercurial-0.1"})
    return status, raw


def test_lfs_pointer_with_a_huge_size_is_refused(lfsserve, tmp_path):
    root = tmp_path / "srv"
    _init(root)
    server = lfsserve(root=root)
    pointer = lfs_pointer(OID, HUGE.encode())
    status, raw = _post_unbundle(server, "team/app", changegroup_bundle(changegroup03(b"big.bin", pointer,
                                                                                      file_flags=LFS_FLAG)))
    assert status == 200, raw[:300]
    assert b"error:abort" in raw.lower() and b"lfs pointer size is not a number" in raw, raw[:400]
    _healthy(server)


def test_compressed_bundle_bombs_are_refused(lfsserve, tmp_path):
    root = tmp_path / "srv"
    _init(root)
    server = lfsserve(root=root, config="[hg]\nmax_revision_size = 1048576\nmax_unpacked_push_size = 3145728\n")
    big = b"\0" * (2 << 20)  # one 2 MiB revision: a few KiB once compressed
    for algo in ("ZS", "GZ"):
        bundle = changegroup_bundle(changegroup03(b"zeros.bin", big), algo)
        assert len(bundle) < 20_000
        status, raw = _post_unbundle(server, "team/app", bundle)
        assert status == 200 and b"a revision of 2 MiB is larger than this server's limit of 1 MiB" in raw, raw[:400]
        assert b"hg.max_revision_size" in raw
    # many revisions under the revision limit, together past the unpacked limit
    parts = [part(b"CHANGEGROUP", changegroup03(b"f%d" % i, b"\0" * 900_000 + b"%d" % i), [(b"version", b"03")])
             for i in range(4)]
    status, raw = _post_unbundle(server, "team/app", bundle2(parts, "ZS"))
    assert status == 200 and b"push unpacks to more than this server's limit of 3 MiB" in raw, raw[:400]
    _healthy(server)


def test_real_hg_push_of_a_revision_over_the_limit(lfsserve, hg, tmp_path):
    """hg 7.2.4 pushes a file over hg.max_revision_size: a clear abort, nothing kept; under it: pushed."""
    root = tmp_path / "srv"
    _init(root)
    server = lfsserve(root=root, config="[hg]\nmax_revision_size = 1048576\n")
    work = tmp_path / "work"
    hg("clone", f"{server.url}/team/app", str(work))
    (work / "small.bin").write_bytes(bytes(range(256)) * 1024)  # 256 KiB
    hg("commit", "-Am", "small", cwd=work)
    hg("push", cwd=work)
    (work / "big.bin").write_bytes(bytes(range(256)) * 8192)  # 2 MiB, as one full text
    hg("commit", "-Am", "big", cwd=work)
    res = hg("push", cwd=work, check=False)
    err = res.stderr.decode()
    assert res.returncode != 0
    assert ("remote: a revision of 2 MiB is larger than this server's limit of 1 MiB (hg.max_revision_size)\n"
            "remote: (track large files with the lfs extension" in err), err
    assert "abort: push failed on remote" in err
    res = hg("outgoing", "-T", "{desc}\n", cwd=work, check=False)
    assert res.stdout.decode().splitlines()[-1:] == ["big"]  # the refused changeset is still outgoing
    _healthy(server)
