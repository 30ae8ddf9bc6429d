"""The kernel's shared pieces: the one LFS error body, and one LFS blob policy per server."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import make_mocked_request

from lfsserve.auth import Authenticator, Principal
from lfsserve.config import load_config
from lfsserve.kernel import LFS_JSON, REQUEST_ID, ServerContext, lfs_error
from lfsserve.repos import RepoRegistry
from lfsserve.urls import TrustedProxies


def test_lfs_error_body_carries_message_extra_and_request_id():
    request = make_mocked_request("POST", "/r/.git/info/lfs/objects/batch")
    request[REQUEST_ID] = "rid-1"
    response = lfs_error(request, 429, "slow down", {"Retry-After": "1"}, {"documentation_url": "u"})
    assert response.status == 429 and response.content_type == LFS_JSON
    assert response.headers["Retry-After"] == "1"
    assert json.loads(response.body) == {"message": "slow down", "documentation_url": "u", "request_id": "rid-1"}
    head = lfs_error(make_mocked_request("HEAD", "/r/.hg/lfs/objects/x"), 404, "gone")
    assert head.status == 404 and head.body == b""


class _Policy:
    def accept_pushed_pointers_sync(self, namespace: str, oids, principal: Principal) -> set[str]:
        return set(oids)


def test_one_lfs_blob_policy_per_server(tmp_path):
    config = load_config(env={"LFSSERVE_ROOT": str(tmp_path)})
    ctx = ServerContext(config, Authenticator(config), TrustedProxies([]), RepoRegistry(config.repos_dir))
    assert ctx.lfs_blobs is None  # no LFS front end: the push path then refuses every pointer
    policy = _Policy()
    ctx.register_lfs_blobs(policy)
    assert ctx.lfs_blobs is policy
    with pytest.raises(RuntimeError):
        ctx.register_lfs_blobs(_Policy())
