"""The transfer-adapter seam: batch answers take their actions from the service's adapter."""

from __future__ import annotations

import os
import time

from lfsserve.auth import Principal
from lfsserve.lfs import LFS_SERVICE
from lfsserve.lfs.adapters import Action, BasicServerAdapter, BatchActions

from .lfs_support import batch, make_client, oid_of, upload  # noqa: F401  (fixture)


async def test_default_adapter_signs_this_servers_hrefs(make_client):
    client = await make_client()
    svc = client.server.app[LFS_SERVICE]
    assert isinstance(svc.transfer, BasicServerAdapter)
    data = os.urandom(1000)
    oid = oid_of(data)
    await upload(client, "team/app", data)
    before = int(time.time())
    status, body = await batch(client, "team/app", "download", [{"oid": oid, "size": len(data)}])
    assert status == 200
    action = body["objects"][0]["actions"]["download"]
    assert action["href"] == f"http://127.0.0.1:{client.port}/team/app/.hg/lfs/objects/{oid}"
    token = action["header"]["Authorization"].removeprefix("Bearer ")
    expires_at = int(token.split(".")[1])
    assert before + 3600 <= expires_at <= int(time.time()) + 3600
    assert token == svc.auth.sign_action(Principal("alice", "basic"), "team/app", oid, "download", expires_at)


class _Elsewhere:
    """An adapter sending clients to another host (as a presigned-URL backend would)."""

    name = "basic"

    def for_batch(self, *, base_url: str, namespace: str, principal: Principal, operation: str,
                  expires_at: int) -> BatchActions:
        return _ElsewhereActions(namespace, expires_at)


class _ElsewhereActions:
    def __init__(self, namespace: str, expires_at: int):
        self.namespace, self.expires_at = namespace, expires_at

    def download(self, oid: str, size: int) -> Action:
        return Action(f"https://blobs.example/{self.namespace}/{oid}?sig=\"é\"", {"X-Sig": "d"}, self.expires_at)

    def upload(self, oid: str, size: int) -> Action:
        return Action(f"https://blobs.example/{self.namespace}/{oid}", {}, self.expires_at - 60)

    def verify(self, oid: str, size: int) -> Action | None:
        return None


async def test_batch_answers_carry_whatever_the_adapter_says(make_client):
    client = await make_client()
    svc = client.server.app[LFS_SERVICE]
    data = os.urandom(1000)
    oid = oid_of(data)
    await upload(client, "team/app", data)  # through the default adapter
    svc.transfer = _Elsewhere()
    status, body = await batch(client, "team/app", "download", [{"oid": oid, "size": len(data)}])
    assert status == 200
    action = body["objects"][0]["actions"]["download"]
    assert action["href"] == f"https://blobs.example/team/app/{oid}?sig=\"é\""  # escaped, read back intact
    assert action["header"] == {"X-Sig": "d"} and action["expires_in"] == 3600
    new = oid_of(b"not uploaded yet")
    status, body = await batch(client, "team/app", "upload", [{"oid": new, "size": 16}])
    assert status == 200
    (obj,) = body["objects"]
    assert obj["actions"] == {"upload": {"href": f"https://blobs.example/team/app/{new}", "header": {},
                                         "expires_in": 3540, "expires_at": obj["actions"]["upload"]["expires_at"]}}
