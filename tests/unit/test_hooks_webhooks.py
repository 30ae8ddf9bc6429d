"""Hooks (loading as hg orders them, running with a timeout), publishing rights, the webhook queue
and signature, and the LFS upload event (issue 15). The pushes themselves: tests/interop."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import threading
import time

import pytest

from lfsserve.aio import run_blocking
from lfsserve.auth import Authenticator, Principal, PushRights
from lfsserve.config import Config, ConfigError, HooksConfig, load_config
from lfsserve.hg.mdiff import trivial_header
from lfsserve.hg.node import NULLID, hash_revision
from lfsserve.hg.repository import Repository
from lfsserve.hooks import Hook, HookError, HookRunner, explain_exit, load_hooks
from lfsserve.kernel import CTX
from lfsserve.repos import RepoSettings
from lfsserve.webhooks import Webhooks, sign
from lfsserve.webhooks.store import WebhookQueue
from lfsserve.wire import unbundle
from lfsserve.wire.pushenv import PushEnv
from tests.bundle_build import chunk
from tests.support import oid_of

from .lfs_support import ALICE


def test_hooks_ordered_by_priority_then_order_repo_hooks_override():
    cfg = HooksConfig(commands={"changegroup.b": "b", "changegroup.a": "a", "priority.changegroup.a": "3",
                                "pretxnclose": "p", "commit.x": "ignored: lfsserve never commits"})
    repo = [("changegroup.b", "b from the repo"), ("changegroup.c", "c"), ("priority.changegroup.c", "5"),
            ("changegroup.a", "")]  # an empty command turns a hook off, as in hg
    hooks = load_hooks(cfg, repo, "team/app")
    assert [(h.name, h.command) for h in hooks.of("changegroup")] == [
        ("changegroup.c", "c"), ("changegroup.b", "b from the repo")]
    assert [h.name for h in load_hooks(cfg, None).of("changegroup")] == ["changegroup.a", "changegroup.b"]
    assert [h.name for h in hooks.of("pretxnclose")] == ["pretxnclose"]
    with pytest.raises(HookError, match=r"hook pretxnchangegroup.x \(team/app/.hg/hgrc\) is an in-process "
                                        r"python: hook, which lfsserve does not support"):
        load_hooks(cfg, [("pretxnchangegroup.x", "python:mymod.check")], "team/app")


def test_config_refuses_python_hooks_unknown_types_and_bad_rules(tmp_path):
    def load(text: str):
        path = tmp_path / "c.toml"
        path.write_text(text)
        return load_config(path, env={})

    with pytest.raises(ConfigError, match=r"hooks.commands.changegroup.x: in-process python: hooks are not"):
        load('[hooks.commands]\n"changegroup.x" = "python:a.b"\n')
    with pytest.raises(ConfigError, match=r"hooks.commands.preoutgoing: unknown hook type 'preoutgoing'"):
        load('[hooks.commands]\npreoutgoing = "true"\n')
    with pytest.raises(ConfigError, match=r"auth.rules\[0\].protect\[0\]: give one of branches or bookmarks"):
        load('[[auth.rules]]\nrepos = "a"\nprotect = [{ push = ["x"] }]\n')
    with pytest.raises(ConfigError, match=r"webhooks.targets\[0\].events: unknown event 'pull'"):
        load('[[webhooks.targets]]\nurl = "http://x/"\nevents = ["pull"]\n')
    config = load('[[auth.rules]]\nrepos = "team/**"\nwrite = ["a", "b"]\npublish = ["a"]\n'
                  'protect = [{ branches = "stable", push = ["a"] }, { bookmarks = "rel*", push = ["b"] }]\n')
    auth = Authenticator(config)
    a, b = (auth.push_rights(Principal(n, "basic"), "team/x") for n in ("a", "b"))
    assert a.may_publish and not b.may_publish
    assert a.may_push_branch("stable") and not b.may_push_branch("stable") and b.may_push_branch("default")
    assert b.may_move_bookmark("release") and not a.may_move_bookmark("release") and a.may_move_bookmark("@")
    assert auth.push_rights(Principal("b", "basic"), "elsewhere").may_publish  # no rule: writers publish


def test_hook_runner_output_status_and_timeout(tmp_path):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        runner = HookRunner(loop, timeout=2.0)
        code, out = runner.run_sync(Hook("pretxnclose.x", 'echo "$HG_NODE in $PWD"; echo oops >&2; exit 3'),
                                    str(tmp_path), {"HG_NODE": "abc"})
        assert code == 3 and out == f"abc in {tmp_path}\noops\n".encode()
        assert explain_exit(code) == "exited with status 3"
        start = time.monotonic()
        code, out = runner.run_sync(Hook("pretxnclose.slow", "sleep 60 & sleep 60"), str(tmp_path), {})
        assert time.monotonic() - start < 30  # killed with its children, not waited for
        assert code == -9 and explain_exit(code) == "killed by signal 9"
        assert b"hook pretxnclose.slow timed out after 2 seconds (hooks.timeout)" in out
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


async def test_queue_claims_retries_and_redelivers(tmp_path):
    queue = WebhookQueue(tmp_path)
    await run_blocking(queue.start)
    try:
        await run_blocking(queue.enqueue_sync, "e1", "push", "team/app", ["http://a/", "http://b/"], b"{}")
        claimed = await queue.claim(10, lease=60)
        assert sorted(d.url for d in claimed) == ["http://a/", "http://b/"]
        assert await queue.claim(10, lease=60) == []  # leased
        a, b = sorted(claimed, key=lambda d: d.url)
        await queue.delivered(a.id, 204)
        await queue.failed(b.id, 500, "HTTP 500", retry_at=time.time() - 1)
        again = await queue.claim(10, lease=60)
        assert [(d.id, d.attempts, d.last_status) for d in again] == [(b.id, 1, 500)]
        await queue.failed(b.id, None, "ConnectionRefusedError", retry_at=None)  # given up
        assert (await queue.next_due()) is None
        rows = await run_blocking(queue.list_sync, 10)
        assert [(d.url, d.status, d.attempts) for d in rows] == [("http://b/", "failed", 2),
                                                                 ("http://a/", "delivered", 1)]
        assert await run_blocking(queue.redeliver_sync, b.id)
        assert [d.id for d in await queue.claim(10, lease=60)] == [b.id]
        assert not await run_blocking(queue.redeliver_sync, 999)
        assert await queue.prune(time.time() + 1) == 1  # a, delivered; b is pending again
        assert [d.id for d in await run_blocking(queue.list_sync, 10)] == [b.id]
    finally:
        await run_blocking(queue.stop)


async def test_lfs_upload_queues_a_signed_event(make_client, tmp_path):
    client = await make_client('[[webhooks.targets]]\nurl = "http://127.0.0.1:9/hook"\nrepos = "team/**"\n'
                               'secret = "k"\nevents = ["lfs"]\n[webhooks]\nretry_base = 3600.0\n')
    data = b"lfs object for the webhook"
    r = await client.put(f"/team/app/.hg/lfs/objects/{oid_of(data)}", data=data, headers=ALICE)
    assert r.status == 201
    r = await client.put(f"/other/repo/.hg/lfs/objects/{oid_of(data)}", data=data, headers=ALICE)
    assert r.status in (200, 201)
    hooks = client.app[CTX].webhooks
    assert isinstance(hooks, Webhooks)
    rows = await run_blocking(hooks.queue.list_sync, 10)
    assert len(rows) == 1  # other/repo matches no target
    event = json.loads(rows[0].payload)
    assert (event["event"], event["repo"], event["user"], event["lfs_oids"]) == ("lfs", "team/app", "alice",
                                                                                [oid_of(data)])
    assert sign("k", rows[0].payload) == "sha256=" + hmac.new(b"k", rows[0].payload, hashlib.sha256).hexdigest()


def _cg01(path: bytes, text: bytes, message: bytes) -> bytes:
    """A bundle1 changegroup (version 01): one root changeset adding `path`."""
    def rev(data: bytes, link: bytes) -> bytes:
        node = hash_revision(data, NULLID, NULLID)
        return chunk(node + NULLID + NULLID + link + trivial_header(len(data)) + data)

    fnode = hash_revision(text, NULLID, NULLID)
    manifest = path + b"\0" + fnode.hex().encode() + b"\n"
    cs = (hash_revision(manifest, NULLID, NULLID).hex().encode() + b"\nT <t@example.com>\n1700000000 0\n"
          + path + b"\n\n" + message)
    cnode = hash_revision(cs, NULLID, NULLID)
    end = b"\0\0\0\0"
    return b"".join([rev(cs, cnode), end, rev(manifest, cnode), end, chunk(path), rev(text, cnode), end, end])


@pytest.mark.interop  # its hook runs the real hg on the pending changesets
def test_bundle1_push_runs_hooks_and_checks_publishing(tmp_path):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    log = tmp_path / "log"
    cfg = HooksConfig(commands={"pretxnchangegroup.msg": 'hg log -r "$HG_NODE:" -T "{desc}" | grep -qv WIP || '
                                                         '{ echo "no WIP please"; exit 1; }',
                                "changegroup.log": f'echo "$HG_NODE $HG_BUNDLE2" >> {log}'})

    def env(user: str, publish: bool) -> PushEnv:
        return PushEnv("team/app", user, "remote:http:127.0.0.1:" + user, cfg, HookRunner(loop, 60.0),
                       PushRights(user, publish, ()))

    def push(repo: Repository, cg: bytes, e: PushEnv) -> str:
        return unbundle.unbundle(Config(), repo, b"force".hex().encode(), io.BytesIO(b"HG10UN" + cg),
                                 env=e).body.decode()

    try:
        with RepoSettings(lock_timeout=5).apply(Repository.init(tmp_path / "r")) as repo:
            reply = push(repo, _cg01(b"a", b"a\n", b"WIP stuff"), env("alice", True))
            assert reply.startswith("0\n") and "no WIP please\n" in reply, reply
            assert "abort: pretxnchangegroup.msg hook exited with status 1\n" in reply
            assert "added 1 changesets" not in reply and len(repo.changelog) == 0
            reply = push(repo, _cg01(b"a", b"a\n", b"fine"), env("bob", False))
            assert reply.startswith("0\n") and "abort: bob is not authorised to publish changesets" in reply
            assert len(repo.changelog) == 0
            reply = push(repo, _cg01(b"a", b"a\n", b"fine"), env("alice", True))
            assert reply.startswith("1\n") and "added 1 changesets with 1 changes to 1 files\n" in reply, reply
            repo.invalidate()
            assert len(repo.changelog) == 1
            assert log.read_text() == repo.changelog.node(0).hex() + " \n"  # no HG_BUNDLE2 for bundle1
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
