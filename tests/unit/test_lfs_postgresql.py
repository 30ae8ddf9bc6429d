"""The in-process Git LFS API tests whose answers depend on metadata (visibility, locks, pushed
pointers), run again with `[database] url` on a real PostgreSQL: the HTTP behaviour is the same on
both backends. Plus what only a shared database can do: be unreachable for a while.
"""

from __future__ import annotations

import json
import os

import pytest

from lfsserve.app import create_app
from lfsserve.lfs import LFS_SERVICE
from lfsserve.pgdb import DatabaseUnavailable, PgDb
from tests.support import oid_of

from .lfs_support import ALICE, H, batch, make_config, upload

# The same tests, collected here again under the PostgreSQL-backed `make_client` below.
from .test_lfs_api import (  # noqa: F401
    test_knowing_an_oid_does_not_open_another_namespace,
    test_upload_then_download_through_signed_hrefs,
    test_verify_action,
)
from .test_lfs_locks import test_lock_lifecycle, test_pagination  # noqa: F401
from .test_lfs_service import (  # noqa: F401
    CAROL,
    setup,
    test_gc_and_verify_all,
    test_pushed_pointers_only_expose_what_the_pusher_can_read,
    test_sync_faces_work_from_a_worker_thread,
)

pytestmark = pytest.mark.interop  # a real PostgreSQL server


@pytest.fixture
def make_client(tmp_path, aiohttp_client, pg_server):
    url = pg_server.create_database()

    async def make(extra: str = "", anonymous: str = "none", server: str = ""):
        config = make_config(tmp_path, f'{extra}\n[database]\nurl = "{url}"\n', anonymous, server)
        return await aiohttp_client(create_app(config))
    return make


@pytest.fixture
async def client(make_client):
    return await make_client()


async def test_metadata_is_in_postgresql(client):
    svc = client.server.app[LFS_SERVICE]
    assert isinstance(svc.db, PgDb)
    data = os.urandom(100)
    await upload(client, "team/app", data)
    oid = oid_of(data)
    assert await svc.namespaces.names() == ["team/app"]
    assert await svc.namespaces.oids("team/app") == [oid]


async def test_outage_answers_503_then_recovers(client, pg_server):
    svc = client.server.app[LFS_SERVICE]
    data = os.urandom(1000)
    await upload(client, "team/app", data)
    oid = oid_of(data)
    pg_server.stop()
    try:
        r = await client.post("/team/app.git/info/lfs/objects/batch", headers={**H, **ALICE},
                              data=json.dumps({"operation": "download", "objects": [{"oid": oid, "size": 1000}]}))
        assert r.status == 503 and int(r.headers["Retry-After"]) > 0
        body = await r.json(content_type=None)
        assert "database" in body["message"] and body["request_id"]
        r = await client.post("/team/app.git/info/lfs/locks", data='{"path": "a"}', headers={**H, **ALICE})
        assert r.status == 503 and "Retry-After" in r.headers
        with pytest.raises(DatabaseUnavailable):
            await svc.accept_pushed_pointers("shared/x", [oid], CAROL)
    finally:
        pg_server.start()
    status, body = await batch(client, "team/app", "download", [{"oid": oid, "size": len(data)}])
    assert status == 200 and "actions" in body["objects"][0]
    r = await client.post("/team/app.git/info/lfs/locks", data='{"path": "a"}', headers={**H, **ALICE})
    assert r.status == 201
