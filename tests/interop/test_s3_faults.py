"""S3 answering 503, 500, or too slowly (a fault-injecting proxy in front of moto, tests/s3proxy.py):
lfsserve answers its clients 503 with Retry-After, never 500 and never a hang beyond
`storage.read_timeout` (tried twice), shows nothing partial, and serves again once S3 does.

One server for the whole module, its bucket reached only through the proxy.
"""

from __future__ import annotations

import hashlib
import random
import time

import pytest

from ..s3proxy import FaultProxy
from ..support import oid_of
from .lfs_http import LFS, request

pytestmark = pytest.mark.interop

READ_TIMEOUT = 2  # seconds: storage.read_timeout of the server under test
SLOW = 5          # seconds the slow S3 takes to answer: beyond READ_TIMEOUT
BOUND = 40        # a refusal comes well within 2 × (READ_TIMEOUT + retry backoff); loaded-machine slack


@pytest.fixture(scope="module")
def setup(moto, tmp_path_factory):
    from ..support import start_lfsserve

    proxy = FaultProxy.start(moto.url)
    bucket = moto.create_bucket()
    storage = moto.storage_toml(bucket).replace(moto.url, proxy.url) + f"read_timeout = {READ_TIMEOUT}\n"
    server = start_lfsserve(tmp_path_factory.mktemp("faults") / "server", config=storage, env=moto.env)
    try:
        yield server, proxy, bucket
    finally:
        server.stop()
        proxy.stop()


def _objects(moto, bucket: str) -> set[str]:
    listed = moto.client().list_objects_v2(Bucket=bucket)
    return {o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", ())}


def _refused(url: str, method: str, body: bytes | None = None, headers: dict | None = None) -> bytes:
    """The request is answered 503 with Retry-After, within BOUND seconds."""
    started = time.monotonic()
    status, got, text = request(url, method, body, headers, timeout=120)
    assert status == 503, (status, text[:300])
    assert int(got["Retry-After"]) > 0
    assert time.monotonic() - started < BOUND, "lfsserve waited on S3 longer than its read timeout allows"
    return text


def test_s3_errors_and_slowness_become_503_and_pass(setup, moto):
    server, proxy, bucket = setup
    objects = f"{server.url}/team/app/.hg/lfs/objects"
    known = random.Random(1).randbytes(200_000)
    assert request(f"{objects}/{oid_of(known)}", "PUT", known)[0] == 201
    download = ('{"operation":"download","objects":[{"oid":"%s","size":%d}]}'
                % (oid_of(known), len(known))).encode()

    for n, fault in enumerate([{"status": 503}, {"status": 500}, {"delay": SLOW}]):
        # every request fails: the batch API and downloads (their first request is a HEAD)
        injected = proxy.fault(**fault)
        slow = "delay" in fault
        # (500 takes 503's path through lfsserve; the slow case costs 2 × READ_TIMEOUT a refusal:
        # both check fewer requests)
        full = fault.get("status") == 503
        text = _refused(f"{server.url}/team/app/.git/info/lfs/objects/batch", "POST", download,
                        {"Accept": LFS, "Content-Type": LFS})
        assert b"try again" in text
        if full:
            _refused(f"{objects}/{oid_of(known)}", "HEAD")
        assert injected.hits >= 2, injected  # each refusal after S3 failed twice
        # only the object's GET fails (the HEAD before it passed): still a 503, not a cut body
        proxy.clear()
        proxy.fault(method="GET", **fault)
        if full or slow:
            _refused(f"{objects}/{oid_of(known)}", "GET", headers={"Range": "bytes=10-99"})
        if not slow:
            _refused(f"{objects}/{oid_of(known)}", "GET")
        # only the PUT of an upload fails, after its content was received and hashed
        proxy.clear()
        put = proxy.fault(method="PUT", **fault)
        new = random.Random(100 + n).randbytes(100_000 + n)
        _refused(f"{objects}/{oid_of(new)}", "PUT", new)
        assert put.hits >= 2, put
        proxy.clear()
        # S3 is back. A failed PUT left nothing; a slow one may have been stored after lfsserve
        # gave up on it (it only ever sends verified content), but never partially.
        if not slow:
            assert oid_of(new) not in _objects(moto, bucket)
            assert request(f"{objects}/{oid_of(new)}", "GET")[0] == 404
        else:
            if oid_of(new) in _objects(moto, bucket):
                stored = moto.client().get_object(Bucket=bucket, Key=f"lfs/objects/{oid_of(new)[:2]}/"
                                                  f"{oid_of(new)[2:4]}/{oid_of(new)}")
                assert stored["Body"].read() == new and stored["Metadata"] == {"lfs-sha256": oid_of(new)}
        assert request(f"{objects}/{oid_of(new)}", "PUT", new)[0] in (200, 201)
        status, _, got = request(f"{objects}/{oid_of(new)}", "GET")
        assert status == 200 and got == new
        status, _, got = request(f"{objects}/{oid_of(known)}", "GET")
        assert status == 200 and got == known
        status, _, got = request(f"{objects}/{oid_of(known)}", "GET", headers={"Range": "bytes=10-99"})
        assert status == 206 and got == known[10:100]

    # A multipart upload (8 MiB parts) whose second part S3 refuses: the upload is aborted, no
    # object and no multipart upload is left in the bucket, and the next attempt stores it whole.
    big = random.Random(9).randbytes(16 * 1024 * 1024 + 7)  # parts of 8 MiB, 8 MiB, 7 bytes
    part2 = proxy.fault(status=500, method="PUT", query="partNumber=2")
    _refused(f"{objects}/{oid_of(big)}", "PUT", big)
    assert part2.hits >= 2  # tried, retried, given up
    proxy.clear()
    assert oid_of(big) not in _objects(moto, bucket)
    assert moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert request(f"{objects}/{oid_of(big)}", "GET")[0] == 404
    assert request(f"{objects}/{oid_of(big)}", "PUT", big, timeout=120)[0] == 201
    status, _, got = request(f"{objects}/{oid_of(big)}", "GET", timeout=120)
    assert status == 200 and hashlib.sha256(got).hexdigest() == oid_of(big)

    assert server.alive()
    log = server.log()
    assert 'HTTP/1.1" 500' not in log and "Traceback" not in log
