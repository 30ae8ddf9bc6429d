"""Webhooks and publishing rights (issue 15), with the real hg 7.2.4 client.

A webhook receiver (an aiohttp app on loopback, in the test) answers 500 at first: the server
retries from its durable queue, is restarted in the middle of the retries, and the signed event
still arrives, once. A writer who may not publish is refused a push to a publishing repository
in hg's form, a publisher's push is accepted; a protected branch and a protected bookmark refuse
a writer who is not listed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
import threading
import time
from pathlib import Path

import bcrypt
import pytest
from aiohttp import web

from ..support import HG, REPO_ROOT, Hg, hg_env, run

pytestmark = pytest.mark.interop

TIMEOUT = 120
SECRET = "webhook-secret"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}


class Receiver:
    """An HTTP endpoint on loopback that answers 500 until told to `accept`."""

    def __init__(self) -> None:
        self.accepting = False
        self.attempts: list[tuple[dict[str, str], bytes]] = []
        self.accepted: list[dict] = []
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._cond:
            self.attempts.append((dict(request.headers), body))
            if self.accepting:
                self.accepted.append(json.loads(body))
            self._cond.notify_all()
            return web.Response(status=200 if self.accepting else 500)

    def wait(self, what, timeout: float = 60) -> None:
        with self._cond:
            assert self._cond.wait_for(what, timeout), f"webhook receiver: still waiting ({self.attempts})"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _config(root: Path, htpasswd: Path, url: str) -> str:
    return f"""
[server]
root = "{root}"
[auth]
htpasswd = "{htpasswd}"
anonymous = "read"
[[auth.rules]]
repos = "team/**"
read = ["*"]
write = ["alice", "bob"]
publish = ["alice"]
protect = [{{ branches = "stable", push = ["alice"] }}, {{ bookmarks = "release*", push = ["alice"] }}]
[webhooks]
retry_base = 0.5
timeout = 5.0
max_attempts = 8
[[webhooks.targets]]
url = "{url}"
repos = "team/**"
secret = "{SECRET}"
"""


def _out(res) -> str:
    return res.stdout.decode() + res.stderr.decode()


def test_webhook_retried_across_restart_publishing_rights_and_protection(lfsserve, tmp_path, receiver):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}\n"
                                for u, p in PASSWORDS.items()))
    root = tmp_path / "data"
    for name in ("team/app", "team/drafts"):
        run([sys.executable, "-m", "lfsserve", "init", "--root", str(root), name], cwd=REPO_ROOT)
    (root / "repos" / "team" / "drafts" / ".hg" / "hgrc").write_text("[phases]\npublish = False\n")
    config = _config(root, htpasswd, receiver.url)
    server = lfsserve(root=root, config=config, anonymous=None)
    hg = Hg(tmp_path / "home")
    work = tmp_path / "work"
    hg("init", str(work))

    def url(user: str, repo: str) -> str:
        return server.url.replace("http://", f"http://{user}:{PASSWORDS[user]}@") + "/" + repo

    def commit(name: str, message: str, branch: str | None = None) -> str:
        if branch:
            hg("branch", "-f", branch, cwd=work)
        (work / name).write_text(name + "\n")
        hg("add", name, cwd=work)
        hg("commit", "-m", message, "-u", "Dev <dev@example.com>", cwd=work)
        return hg.out("log", "-r", ".", "-T", "{node}", cwd=work)

    first = commit("a", "first change\n\nwith a body")
    # bob may write but not publish: a push to the publishing repository is refused, nothing kept
    res = hg("push", url("bob", "team/app"), cwd=work, check=False, timeout=TIMEOUT)
    assert res.returncode != 0
    assert (f"remote: bob is not authorised to publish changesets in team/app ({first[:12]} would become "
            "public)\nremote: (push them as drafts to a non-publishing repository, or let a user whom auth.rules "
            "allows to publish push them)\nabort: push failed on remote") in _out(res), _out(res)
    served = root / "repos" / "team" / "app"
    assert run([HG, "log", "-T", "{node}"], cwd=served, env=hg_env(tmp_path / "h2")).stdout == b""
    # alice may: accepted, public
    hg("bookmark", "-r", ".", "feature", cwd=work)
    res = hg("push", "-B", "feature", url("alice", "team/app"), cwd=work, timeout=TIMEOUT)
    assert "added 1 changesets" in _out(res)
    assert hg.out("phase", "-r", first, cwd=work).strip() == "0: public"

    # the event's first attempts fail; the server is restarted in the middle of the retries
    receiver.wait(lambda: len(receiver.attempts) >= 2)
    server.stop()
    before = len(receiver.attempts)
    receiver.accepting = True
    server = lfsserve(root=root, config=config, anonymous=None)
    receiver.wait(lambda: len(receiver.accepted) == 1)
    event = receiver.accepted[0]
    headers, body = next((h, b) for h, b in reversed(receiver.attempts) if json.loads(b) == event)
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Lfsserve-Signature"] == expected
    assert headers["X-Lfsserve-Event"] == "push"
    assert event["repo"] == "team/app" and event["user"] == "alice" and event["event"] == "push"
    assert event["changesets"] == [{"node": first, "author": "Dev <dev@example.com>",
                                    "description": "first change\n\nwith a body", "branch": "default",
                                    "bookmarks": ["feature"], "date": event["changesets"][0]["date"],
                                    "phase": "public"}]
    assert event["bookmarks"] == [{"name": "feature", "old": None, "new": first}]
    assert len([b for _, b in receiver.attempts if json.loads(b)["id"] == event["id"]]) == before + 1

    # a non-publishing repository takes bob's drafts, but not on the protected branch / bookmark
    # (`first` is public in the clone: pushing it publishes it there too, which alice may do)
    hg("push", url("alice", "team/drafts"), cwd=work, timeout=TIMEOUT)
    draft = commit("d", "draft work")
    hg("push", url("bob", "team/drafts"), cwd=work, timeout=TIMEOUT)
    stable = commit("s", "on stable", branch="stable")
    res = hg("push", "-f", "--new-branch", url("bob", "team/drafts"), cwd=work, check=False, timeout=TIMEOUT)
    assert res.returncode != 0
    assert (f"remote: bob is not authorised to push to protected branch 'stable' of team/drafts (changeset "
            f"{stable[:12]})") in _out(res), _out(res)
    hg("bookmark", "-r", first, "release", cwd=work)
    res = hg("push", "-B", "release", url("bob", "team/drafts"), cwd=work, check=False, timeout=TIMEOUT)
    assert "bob is not authorised to move protected bookmark 'release' of team/drafts" in _out(res), _out(res)
    assert run([HG, "bookmarks", "-T", "{bookmark} "], cwd=root / "repos" / "team" / "drafts",
               env=hg_env(tmp_path / "h2")).stdout.decode() == ""
    res = hg("push", "--new-branch", "-r", stable, "-B", "release", url("alice", "team/drafts"), cwd=work,
             timeout=TIMEOUT)
    assert "added 1 changesets" in _out(res), _out(res)

    # the delivery log shows the delivered events
    receiver.wait(lambda: len(receiver.accepted) == 4)
    drafts = sorted(receiver.accepted[1:], key=lambda e: e["time"])
    assert [(e["repo"], e["user"], [c["node"] for c in e["changesets"]]) for e in drafts] == [
        ("team/drafts", "alice", [first]), ("team/drafts", "bob", [draft]), ("team/drafts", "alice", [stable])]
    assert drafts[1]["changesets"][0]["phase"] == "draft"
    assert drafts[2]["changesets"][0]["branch"] == "stable"
    assert drafts[2]["bookmarks"] == [{"name": "release", "old": None, "new": first}]
    deadline = time.monotonic() + 30
    while True:
        listing = run([sys.executable, "-m", "lfsserve", "webhooks", "list", "--root", str(root)],
                      cwd=REPO_ROOT).stdout.decode()
        if listing.count("delivered") == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert listing.count("delivered") == 4 and f"team/app -> {receiver.url}" in listing, listing
