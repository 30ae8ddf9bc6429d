"""The LFS front end in-process (aiohttp test client): batch, transfer, verify, auth, namespaces."""

from __future__ import annotations

import json
import os
import time

import aiohttp
import pytest

from lfsserve.auth import ANONYMOUS, Principal
from lfsserve.kernel import CTX
from tests.support import oid_of

from .lfs_support import ALICE, BOB, CAROL, LFS, H, basic, batch, call, store_of, upload


async def test_upload_then_download_through_signed_hrefs(client):
    data = os.urandom(300_000)
    oid = oid_of(data)
    obj = await upload(client, "team/app", data)
    up = obj["actions"]["upload"]
    assert up["href"] == f"http://127.0.0.1:{client.port}/team/app/.hg/lfs/objects/{oid}"
    assert up["header"]["Accept"] == "application/vnd.git-lfs"
    assert up["header"]["Authorization"].startswith("Bearer lfs1.")
    assert up["expires_in"] == 3600 and up["expires_at"].endswith("Z")
    # No verify action: the PUT was answered only once the object was hashed, stored and granted,
    # so a verify request would add a round trip per object and no guarantee.
    assert obj["actions"].keys() == {"upload"}
    # Present now: an upload batch asks for nothing.
    status, body = await batch(client, "team/app", "upload", [{"oid": oid, "size": len(data)}])
    assert status == 200 and body["objects"] == [{"oid": oid, "size": len(data)}]
    assert body["transfer"] == "basic" and body["hash_algo"] == "sha256"
    status, body = await batch(client, "team/app", "download", [{"oid": oid, "size": len(data)}], BOB)
    assert status == 403  # bob may not read team/app
    status, body = await batch(client, "team/app", "download", [{"oid": oid, "size": len(data)}])
    dl = body["objects"][0]["actions"]["download"]
    status, headers, got = await call(client, "GET", dl["href"], dl["header"])
    assert status == 200 and got == data and headers["Content-Type"] == "application/octet-stream"
    status, headers, got = await call(client, "GET", dl["href"], {**dl["header"], "Range": "bytes=100-199"})
    assert status == 206 and got == data[100:200] and headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    status, headers, got = await call(client, "HEAD", dl["href"], dl["header"])
    assert status == 200 and got == b"" and int(headers["Content-Length"]) == len(data)
    # Plain credentials work too, with the usual permission check.
    assert (await call(client, "GET", dl["href"], ALICE))[0] == 200
    assert (await call(client, "GET", dl["href"]))[0] == 401
    assert (await call(client, "PUT", up["href"], BOB, data))[0] == 403


async def test_hg_style_request_and_content_type_parameters(client):
    # Exactly what hg sends: no transfers/ref/hash_algo, ", " separators.
    oid = oid_of(b"x")
    body = '{"objects": [{"oid": "%s", "size": 1}], "operation": "download"}' % oid
    r = await client.post("/team/app/.git/info/lfs/objects/batch", data=body, headers={**H, **ALICE})
    assert r.status == 200 and r.headers["Content-Type"] == LFS
    assert (await r.json(content_type=None))["objects"][0]["error"] == {
        "code": 404, "message": "The object does not exist"}
    # git-lfs: a charset parameter, the .git suffix spelling, and the bare lfs.url prefix spelling.
    for path in ("/team/app.git/info/lfs/objects/batch", "/team/app/objects/batch"):
        r = await client.post(path, data=body, headers={**ALICE, "Accept": LFS + "; charset=utf-8",
                                                        "Content-Type": LFS + "; charset=utf-8"})
        assert r.status == 200, path


@pytest.mark.parametrize("method,headers,body,status,needle", [
    ("GET", H, None, 405, "POST"),
    ("POST", {"Accept": "text/html", "Content-Type": LFS}, "{}", 406, "Accept"),
    ("POST", {"Accept": LFS, "Content-Type": "text/plain"}, "{}", 415, "text/plain"),
    ("POST", H, "{not json", 400, "JSON"),
    ("POST", H, "[1, 2]", 422, "JSON object"),
    ("POST", H, '{"operation": "delete", "objects": []}', 422, "delete"),
    ("POST", H, '{"operation": "upload"}', 422, "objects"),
    ("POST", H, '{"operation": "upload", "objects": [], "transfers": ["tus"]}', 422, "basic"),
    ("POST", H, '{"operation": "upload", "objects": [], "hash_algo": "sha512"}', 409, "sha512"),
    ("POST", H, '{"operation": "upload", "objects": [1]}', 422, "objects[0]"),
    ("POST", H, '{"operation": "upload", "objects": [], "ref": "main"}', 422, "ref"),
    ("POST", H, '{"operation": "upload", "objects": [%s]}' % ",".join(['{"oid": "%s", "size": 1}' % ("a" * 64)] * 4),
     413, "too many"),
])
async def test_bad_batch_requests(make_client, method, headers, body, status, needle):
    client = await make_client('[lfs]\nmax_batch_objects = 3\n')
    r = await client.request(method, "/team/app/.git/info/lfs/objects/batch", data=body, headers={**headers, **ALICE})
    assert r.status == status
    assert r.headers["Content-Type"] == LFS
    answer = await r.json(content_type=None)
    assert needle in answer["message"] and answer["request_id"] == r.headers["X-Request-Id"]
    assert [x async for x in store_of(client).list()] == []


async def test_per_object_validation(client):
    good = oid_of(b"good")
    status, body = await batch(client, "team/app", "upload", [
        {"oid": "A" * 64, "size": 1}, {"oid": good, "size": -1}, {"oid": good, "size": True},
        {"oid": good[:-1], "size": 1}, {"size": 3}, {"oid": good, "size": 4}])
    assert status == 200
    errors = [o.get("error", {}).get("code") for o in body["objects"]]
    assert errors == [422, 422, 422, 422, 422, None]
    assert "oid" in body["objects"][0]["error"]["message"] and "size" in body["objects"][1]["error"]["message"]


async def test_put_mismatch_and_limits_leave_nothing(make_client, tmp_path):
    client = await make_client('[lfs]\nmax_object_size = 1000\n')
    claimed = oid_of(b"claimed")
    href = f"/team/app/.hg/lfs/objects/{claimed}"
    r = await client.put(href, data=b"something else", headers=ALICE)
    assert r.status == 422
    assert oid_of(b"something else") in (await r.json(content_type=None))["message"]
    r = await client.put(f"/team/app/.hg/lfs/objects/{oid_of(b'y' * 1001)}", data=b"y" * 1001, headers=ALICE)
    assert r.status == 413
    _, body = await batch(client, "team/app", "upload", [{"oid": oid_of(b"z" * 2000), "size": 2000}])
    assert body["objects"][0]["error"]["code"] == 413
    assert [x async for x in store_of(client).list()] == []
    assert list((tmp_path / "data" / "lfs" / "tmp").iterdir()) == []
    r = await client.put(f"/team/app/.hg/lfs/objects/{'0' * 63}", data=b"", headers=ALICE)
    assert r.status == 400  # routing refuses a malformed oid
    r = await client.post(f"/team/app/.hg/lfs/objects/{claimed}", data=b"", headers=ALICE)
    assert r.status == 405
    # Same oid, same content, twice: 201 then 200.
    data = b"small"
    assert (await client.put(f"/team/app/.hg/lfs/objects/{oid_of(data)}", data=data, headers=ALICE)).status == 201
    assert (await client.put(f"/team/app/.hg/lfs/objects/{oid_of(data)}", data=data, headers=ALICE)).status == 200


async def test_knowing_an_oid_does_not_open_another_namespace(client):
    secret = os.urandom(5000)
    oid = oid_of(secret)
    await upload(client, "team/app", secret)
    _, body = await batch(client, "other/repo", "download", [{"oid": oid, "size": len(secret)}])
    assert body["objects"][0]["error"]["code"] == 404
    r = await client.get(f"/other/repo/.hg/lfs/objects/{oid}", headers=ALICE)
    assert r.status == 404
    r = await client.post("/other/repo/.hg/lfs/verify", data=json.dumps({"oid": oid, "size": len(secret)}),
                          headers={**H, **ALICE})
    assert r.status == 404
    # An upload batch does not reveal that the object exists elsewhere...
    _, body = await batch(client, "other/repo", "upload", [{"oid": oid, "size": len(secret)}])
    assert "upload" in body["objects"][0]["actions"]
    # ...and claiming it needs the content.
    r = await client.put(f"/other/repo/.hg/lfs/objects/{oid}", data=b"x" * len(secret), headers=ALICE)
    assert r.status == 422
    r = await client.put(f"/other/repo/.hg/lfs/objects/{oid}", data=secret, headers=ALICE)
    assert r.status == 200  # proved possession: visible now, stored once
    assert (await client.get(f"/other/repo/.hg/lfs/objects/{oid}", headers=ALICE)).status == 200


async def test_signed_tokens_are_scoped_and_expire(client):
    data = b"scoped content"
    oid = oid_of(data)
    obj = await upload(client, "team/app", data)
    other = oid_of(b"other")
    await upload(client, "team/app", b"other")
    put_token = obj["actions"]["upload"]["header"]
    _, body = await batch(client, "team/app", "download", [{"oid": oid, "size": len(data)}])
    get_token = body["objects"][0]["actions"]["download"]["header"]
    assert (await client.get(f"/team/app/.hg/lfs/objects/{oid}", headers=get_token)).status == 200
    assert (await client.get(f"/team/app/.hg/lfs/objects/{other}", headers=get_token)).status == 401
    assert (await client.get(f"/team/app/.hg/lfs/objects/{oid}", headers=put_token)).status == 401
    assert (await client.put(f"/team/app/.hg/lfs/objects/{oid}", data=data, headers=get_token)).status == 401
    assert (await client.get(f"/team/elsewhere/.hg/lfs/objects/{oid}", headers=get_token)).status == 401
    # A signed token is not a credential for the batch API or locks.
    r = await client.post("/team/app/.git/info/lfs/objects/batch", headers={**get_token, **H},
                          data=json.dumps({"operation": "download", "objects": []}))
    assert r.status == 401
    auth = client.server.app[CTX].auth
    expired = auth.sign_action(Principal("alice", "basic"), "team/app", oid, "download", int(time.time()) - 1)
    r = await client.get(f"/team/app/.hg/lfs/objects/{oid}", headers={"Authorization": f"Bearer {expired}"})
    assert r.status == 401 and "expired" in (await r.json(content_type=None))["message"]
    # A token issued to an anonymous reader works for its object only.
    anon = auth.sign_action(ANONYMOUS, "team/app", oid, "download", int(time.time()) + 60)
    r = await client.get(f"/team/app/.hg/lfs/objects/{oid}", headers={"Authorization": f"Bearer {anon}"})
    assert r.status == 200


async def test_401_challenges_and_403(client):
    r = await client.post("/team/app/.git/info/lfs/objects/batch", headers=H,
                          data=json.dumps({"operation": "download", "objects": []}))
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith('Basic realm="lfsserve"')
    assert r.headers["LFS-Authenticate"].startswith("Basic ")
    assert (await batch(client, "team/app", "download", [], basic("alice", "wrong")))[0] == 401
    assert (await batch(client, "shared/x", "download", [], BOB))[0] == 200
    assert (await batch(client, "shared/x", "upload", [], BOB))[0] == 403
    assert (await batch(client, "shared/x", "upload", [], CAROL))[0] == 200
    assert (await batch(client, "team/app", "download", [], BOB))[0] == 403


async def test_anonymous_read_server(make_client):
    client = await make_client(anonymous="read")
    await upload(client, "pub/repo", b"public", BOB)  # no rule for pub/**: any user may write
    status, body = await batch(client, "pub/repo", "download", [{"oid": oid_of(b"public"), "size": 6}], {})
    assert status == 200 and "download" in body["objects"][0]["actions"]
    assert (await batch(client, "pub/repo", "upload", [], {}))[0] == 401
    assert (await batch(client, "team/app", "download", [], {}))[0] == 401  # a rule, not listing anonymous


def damage(client, oid):
    path = store_of(client).path(oid)
    os.chmod(path, 0o644)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


async def test_corrupt_object_is_reported_and_repairable(client):
    data = os.urandom(100_000)
    oid = oid_of(data)
    await upload(client, "team/app", data)
    damage(client, oid)
    _, body = await batch(client, "team/app", "download", [{"oid": oid, "size": len(data)}])
    assert body["objects"][0]["error"] == {"code": 422, "message": "The object is corrupt"}
    assert (await client.get(f"/team/app/.hg/lfs/objects/{oid}", headers=ALICE)).status == 422
    r = await client.post("/team/app/.hg/lfs/verify", data=json.dumps({"oid": oid, "size": len(data)}),
                          headers={**H, **ALICE})
    assert r.status == 422
    # An upload batch asks for it again, and the upload repairs it.
    _, body = await batch(client, "team/app", "upload", [{"oid": oid, "size": len(data)}])
    assert "upload" in body["objects"][0]["actions"]
    assert (await client.put(f"/team/app/.hg/lfs/objects/{oid}", data=data, headers=ALICE)).status == 201
    r = await client.get(f"/team/app/.hg/lfs/objects/{oid}", headers=ALICE)
    assert r.status == 200 and await r.read() == data


async def test_corruption_found_while_streaming_cuts_the_download(make_client):
    client = await make_client("[lfs]\nbatch_rehash_bytes = 0\n")
    data = os.urandom(3 * 1024 * 1024)
    oid = oid_of(data)
    await upload(client, "team/app", data)
    damage(client, oid)
    _, body = await batch(client, "team/app", "download", [{"oid": oid, "size": len(data)}])
    assert "download" in body["objects"][0]["actions"]  # over budget: not re-hashed here
    got = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.session.get(client.make_url(f"/team/app/.hg/lfs/objects/{oid}"), headers=ALICE) as r:
            assert r.status == 200 and r.content_length == len(data)
            async for chunk in r.content.iter_any():
                got += chunk
    assert len(got) < len(data)
    _, body = await batch(client, "team/app", "download", [{"oid": oid, "size": len(data)}])
    assert body["objects"][0]["error"]["code"] == 422  # remembered
    r = await client.get("/healthz")
    assert r.status == 200


async def test_range_of_changed_object_is_verified_first(make_client):
    client = await make_client("[lfs]\nbatch_rehash_bytes = 0\n")
    data = os.urandom(200_000)
    oid = oid_of(data)
    await upload(client, "team/app", data)
    path = store_of(client).path(oid)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # changed, same bytes
    r = await client.get(f"/team/app/.hg/lfs/objects/{oid}", headers={**ALICE, "Range": "bytes=-10"})
    assert r.status == 206 and await r.read() == data[-10:]
    damage(client, oid)
    r = await client.get(f"/team/app/.hg/lfs/objects/{oid}", headers={**ALICE, "Range": "bytes=0-9"})
    assert r.status == 422


async def test_verify_action(client):
    data = b"verify me"
    oid = oid_of(data)
    await upload(client, "team/app", data)
    url = "/team/app/.hg/lfs/verify"
    post = lambda body, h=ALICE: client.post(url, data=json.dumps(body), headers={**H, **h})  # noqa: E731
    assert (await post({"oid": oid, "size": len(data)})).status == 200
    assert (await post({"oid": oid, "size": len(data) + 1})).status == 422
    assert (await post({"oid": oid_of(b"nope"), "size": 4})).status == 404
    assert (await post({"oid": "zz", "size": 4})).status == 422
    assert (await post({"oid": oid, "size": len(data)}, BOB)).status == 403
    assert (await client.get(url, headers=ALICE)).status == 405
    # The signed verify token a direct-upload batch answer carries (or an older answer did):
    # valid for its own object only.
    auth = client.server.app[CTX].auth
    later = int(time.time()) + 60
    token = auth.sign_action(Principal("alice", "basic"), "team/app", oid, "verify", later)
    signed = {"Authorization": f"Bearer {token}"}
    assert (await post({"oid": oid, "size": len(data)}, signed)).status == 200
    assert (await post({"oid": oid_of(b"nope"), "size": 4}, signed)).status == 401


async def test_size_mismatch_on_existing_object(client):
    data = b"sized"
    oid = oid_of(data)
    await upload(client, "team/app", data)
    _, body = await batch(client, "team/app", "download", [{"oid": oid, "size": 99}])
    assert body["objects"][0]["error"]["code"] == 422
    _, body = await batch(client, "team/app", "upload", [{"oid": oid, "size": 99}])
    assert body["objects"][0]["error"]["code"] == 422


@pytest.mark.parametrize("trusted", [True, False])
async def test_hrefs_follow_trusted_proxy_headers_only(make_client, trusted):
    client = await make_client(server='trusted_proxies = ["127.0.0.1/32"]' if trusted else "")
    fwd = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "lfs.example.com", "X-Forwarded-Prefix": "/mnt"}
    _, body = await batch(client, "team/app", "upload", [{"oid": oid_of(b"p"), "size": 1}], {**ALICE, **fwd})
    actions = body["objects"][0]["actions"]
    base = "https://lfs.example.com/mnt" if trusted else f"http://127.0.0.1:{client.port}"
    assert actions["upload"]["href"] == f"{base}/team/app/.hg/lfs/objects/{oid_of(b'p')}"
    assert "verify" not in actions  # see test_upload_then_download_through_signed_hrefs


async def test_answers_stay_valid_json_whatever_the_base_url(make_client):
    odd = 'https://h.example/a"b\\\\c/\u00e9'
    client = await make_client(server=f"base_url = {json.dumps(odd)}")
    oid = oid_of(b"j")
    status, body = await batch(client, "team/app", "upload", [{"oid": oid, "size": 1}, {"oid": '"x\\\\', "size": 1}])
    assert status == 200  # batch() parses the body as JSON
    assert body["objects"][0]["actions"]["upload"]["href"] == f"{odd}/team/app/.hg/lfs/objects/{oid}"
    assert body["objects"][1]["oid"] == '"x\\\\' and body["objects"][1]["error"]["code"] == 422
