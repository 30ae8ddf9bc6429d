"""The Git LFS locking API, in-process."""

from __future__ import annotations

import json

import pytest

from .lfs_support import ALICE, BOB, CAROL, H


async def post(client, path, body, headers=ALICE):
    r = await client.post(f"/team/app.git/info/lfs/{path}", data=json.dumps(body), headers={**H, **headers})
    return r.status, await r.json(content_type=None)


async def test_lock_lifecycle(make_client):
    client = await make_client()
    status, body = await post(client, "locks", {"path": "art/hero.psd", "ref": {"name": "refs/heads/main"}})
    assert status == 201
    lock = body["lock"]
    assert lock["path"] == "art/hero.psd" and lock["owner"] == {"name": "alice"}
    assert len(lock["id"]) == 32 and lock["locked_at"].endswith("Z")
    status, body = await post(client, "locks", {"path": "art/hero.psd"}, CAROL)
    assert status == 409 and body["lock"] == lock and "already" in body["message"]
    await post(client, "locks", {"path": "art/villain.psd"}, CAROL)

    r = await client.get("/team/app.git/info/lfs/locks", headers={**H, **ALICE})
    assert r.status == 200 and [lk["path"] for lk in (await r.json(content_type=None))["locks"]] == [
        "art/hero.psd", "art/villain.psd"]
    r = await client.get("/team/app.git/info/lfs/locks?path=art/villain.psd", headers={**H, **ALICE})
    assert [lk["owner"]["name"] for lk in (await r.json(content_type=None))["locks"]] == ["carol"]
    r = await client.get(f"/team/app.git/info/lfs/locks?id={lock['id']}", headers={**H, **ALICE})
    assert (await r.json(content_type=None))["locks"] == [lock]

    status, body = await post(client, "locks/verify", {"ref": {"name": "refs/heads/main"}})
    assert status == 200
    assert [lk["path"] for lk in body["ours"]] == ["art/hero.psd"]
    assert [lk["path"] for lk in body["theirs"]] == ["art/villain.psd"]
    assert "next_cursor" not in body

    status, body = await post(client, f"locks/{lock['id']}/unlock", {}, CAROL)
    assert status == 403 and "alice" in body["message"]
    status, body = await post(client, f"locks/{lock['id']}/unlock", {"force": True}, CAROL)
    assert status == 200 and body["lock"] == lock
    status, body = await post(client, f"locks/{lock['id']}/unlock", {})
    assert status == 404
    # Locks are per repository.
    r = await client.get("/team/other.git/info/lfs/locks", headers={**H, **ALICE})
    assert (await r.json(content_type=None))["locks"] == []


async def test_pagination(make_client):
    client = await make_client()
    for i in range(5):
        assert (await post(client, "locks", {"path": f"f{i}"}))[0] == 201
    seen, cursor = [], None
    while True:
        q = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        r = await client.get(f"/team/app.git/info/lfs/locks?{q}", headers={**H, **ALICE})
        body = await r.json(content_type=None)
        assert len(body["locks"]) <= 2
        seen += [lk["path"] for lk in body["locks"]]
        cursor = body.get("next_cursor")
        if not cursor:
            break
    assert seen == [f"f{i}" for i in range(5)]
    _, body = await post(client, "locks/verify", {"limit": 3})
    assert len(body["ours"]) == 3 and body["next_cursor"]
    _, body = await post(client, "locks/verify", {"limit": 3, "cursor": body["next_cursor"]})
    assert len(body["ours"]) == 2 and "next_cursor" not in body


@pytest.mark.parametrize("path,body,status", [
    ("locks", {}, 422),
    ("locks", {"path": ""}, 422),
    ("locks", {"path": 7}, 422),
    ("locks", {"path": "a", "ref": "main"}, 422),
    ("locks/verify", {"limit": "x"}, 422),
    ("locks/verify", {"cursor": -1}, 422),
    ("locks/abc/unlock", {"force": "yes"}, 422),
])
async def test_bad_lock_requests(make_client, path, body, status):
    client = await make_client()
    got, answer = await post(client, path, body)
    assert got == status and answer["message"] and answer["request_id"]


async def test_lock_permissions(make_client):
    client = await make_client()
    r = await client.get("/shared/x.git/info/lfs/locks", headers={**H, **BOB})
    assert r.status == 200  # readers may list
    r = await client.post("/shared/x.git/info/lfs/locks", data='{"path": "a"}', headers={**H, **BOB})
    assert r.status == 403
    r = await client.post("/shared/x.git/info/lfs/locks/verify", data="{}", headers={**H, **BOB})
    assert r.status == 403
    r = await client.post("/shared/x.git/info/lfs/locks", data='{"path": "a"}', headers=H)
    assert r.status == 401 and "LFS-Authenticate" in r.headers
    r = await client.delete("/shared/x.git/info/lfs/locks", headers={**H, **ALICE})
    assert r.status == 405


async def test_locking_can_be_disabled(make_client):
    client = await make_client("[lfs]\nlocking = false\n")
    status, body = await post(client, "locks/verify", {})
    assert status == 404 and "disabled" in body["message"]
