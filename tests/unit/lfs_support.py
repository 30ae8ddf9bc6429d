"""Shared by the in-process LFS tests: a config with users and rules, and small helpers (the
`make_client` and `client` fixtures that serve it are in conftest.py)."""

from __future__ import annotations

import base64
import json

import bcrypt

from lfsserve.auth import hash_token
from lfsserve.config import load_config
from lfsserve.lfs import LFS_SERVICE
from tests.support import oid_of

LFS = "application/vnd.git-lfs+json"
H = {"Accept": LFS, "Content-Type": LFS}


def basic(user: str, pw: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


ALICE = basic("alice", "wonderland")  # writes everywhere
BOB = basic("bob", "builder")         # reads "shared/**" only
CAROL = {"Authorization": "Bearer carol-token"}


def make_config(tmp_path, extra: str = "", anonymous: str = "none", server: str = ""):
    (tmp_path / "htpasswd").write_text(
        "alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode() + "\n"
        "bob:" + bcrypt.hashpw(b"builder", bcrypt.gensalt(4)).decode() + "\n")
    (tmp_path / "tokens").write_text(f"carol:{hash_token('carol-token')}\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[server]
root = "{tmp_path / 'data'}"
{server}
[auth]
anonymous = "{anonymous}"
authenticated = "write"  # users write where no rule below matches (the default is read)
htpasswd = "{tmp_path / 'htpasswd'}"
tokens = "{tmp_path / 'tokens'}"
[[auth.rules]]
repos = "shared/**"
read = ["bob", "carol"]
write = ["alice", "carol"]
[[auth.rules]]
repos = "team/**"
write = ["alice", "carol"]
{extra}
""")
    return load_config(cfg, env={})


async def batch(client, ns, operation, objects, headers=ALICE, **extra):
    body = {"operation": operation, "objects": objects, **extra}
    r = await client.post(f"/{ns}/.git/info/lfs/objects/batch", data=json.dumps(body), headers={**H, **headers})
    return r.status, (await r.json(content_type=None))


async def call(client, method, href, headers=None, data=None):
    async with client.session.request(method, href, headers=headers or {}, data=data) as r:
        return r.status, r.headers, await r.read()


async def upload(client, ns, data, headers=ALICE):
    oid = oid_of(data)
    status, body = await batch(client, ns, "upload", [{"oid": oid, "size": len(data)}], headers)
    assert status == 200, body
    obj = body["objects"][0]
    if "actions" not in obj:
        return obj
    act = obj["actions"]["upload"]
    status, _, _ = await call(client, "PUT", act["href"], act["header"], data)
    assert status in (200, 201)
    ver = obj["actions"].get("verify")  # only direct-to-bucket uploads get one (adapters.py)
    if ver is not None:
        status, _, _ = await call(client, "POST", ver["href"], {**ver["header"], "Content-Type": LFS},
                                  json.dumps({"oid": oid, "size": len(data)}))
        assert status == 200
    return obj


def store_of(client):
    return client.server.app[LFS_SERVICE].store
