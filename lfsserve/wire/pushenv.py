"""Who pushes, and what runs around a push besides the engine: Mercurial hooks, publishing
rights and branch protection, webhook events. Transport-free (the HTTP and SSH transports build
one per push, in their event loop), used by unbundle.py and the pushkey commands in the push's
worker thread.
"""

from __future__ import annotations

import logging
import os
import secrets
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..auth import Authenticator, Principal, PushRights
from ..config import Config, HooksConfig
from ..hg.error import Abort
from ..hg.node import NULLID
from ..hg.phases import PUBLIC
from ..hg.repository import Repository
from ..hg.transaction import Transaction
from ..hooks import HookRunner, HookSet, explain_exit, load_hooks
from ..webhooks import MAX_EVENT_CHANGESETS, Webhooks

__all__ = ["HookFailed", "PushEnv", "push_env"]

log = logging.getLogger(__name__)


class HookFailed(Abort):
    """A pretxn* hook refused the push (hg's HookAbort message)."""


class NotAuthorised(Abort):
    """Publishing or a protected branch / bookmark without the right."""


@dataclass
class PushEnv:
    repo_name: str
    user: str | None
    url: str                 # HG_URL, as hg's server sets it (see push_env)
    hooks_config: HooksConfig
    runner: HookRunner
    rights: PushRights
    webhooks: Webhooks | None = None
    txnid: str = field(default_factory=lambda: "TXN:" + secrets.token_hex(20))
    bundle2: bool = False    # the push is a bundle2 (hg then sets HG_BUNDLE2=1)
    _hooks: HookSet | None = None

    # -- hooks
    def hooks(self, repo: Repository) -> HookSet:
        """This repository's hooks (read once per push)."""
        if self._hooks is None:
            self._hooks = load_hooks(self.hooks_config, repo_hook_items(repo), self.repo_name)
        return self._hooks

    def run_hooks(self, repo: Repository, htype: str, output: list[str], *, throw: bool,
                  pending: Transaction | None = None, args: dict[str, str] | None = None) -> None:
        """Run the `htype` hooks; their output goes to `output` (the client's `remote:` lines).
        With `throw` (pretxn*), a failing hook raises HookFailed; otherwise hg's warning. With
        `pending`, the open transaction's changes are made readable to hg first (HG_PENDING)."""
        hooks = self.hooks(repo).of(htype)
        if not hooks:
            return
        env = {"HG_SOURCE": "serve", "HG_URL": self.url, "HG_TXNID": self.txnid, "HG_TXNNAME": "serve",
               "HG_HOOKTYPE": htype, "HGPLAIN": "", "HG_USER": self.user or "", "LFSSERVE_USER": self.user or "",
               "LFSSERVE_REPO": self.repo_name}
        if self.bundle2:
            env["HG_BUNDLE2"] = "1"
        env.update({"HG_" + k.upper(): v for k, v in (args or {}).items()})
        root = os.path.realpath(repo.root)
        if pending is not None and repo.write_pending(pending):
            env["HG_PENDING"] = root
        for hook in hooks:
            code, out = self.runner.run_sync(hook, root, {**env, "HG_HOOKNAME": hook.name})
            if out:
                text = out.decode("utf-8", "replace")
                output.append(text if text.endswith("\n") else text + "\n")
            if code:
                message = f"{hook.name} hook {explain_exit(code)}"
                log.info("push to %s by %s: %s", self.repo_name, self.user or "-", message)
                if throw:
                    raise HookFailed(message)
                output.append(f"warning: {message}\n")

    def prepushkey(self, repo: Repository, output: list[str], args: dict[str, str]) -> bool:
        """hg's `prepushkey` hooks for one pushkey (`args`: namespace, key, old, new): False, with
        hg's `pushkey-abort:` line, when one refuses; the pushkey then fails, not the push."""
        try:
            self.run_hooks(repo, "prepushkey", output, throw=True, args=args)
        except HookFailed as exc:
            output.append(f"pushkey-abort: {exc.message}\n")
            return False
        return True

    # -- rights
    def check_publish(self, repo: Repository, nodes: Iterable[bytes]) -> None:
        """Refuse making `nodes` public unless this user may publish (already public: fine)."""
        if self.rights.may_publish:
            return
        for node in nodes:
            rev = repo.changelog.get_rev(node) if node != NULLID else None
            if rev is not None and repo.phase(rev) == PUBLIC:
                continue
            raise NotAuthorised(f"{self.user or 'anonymous'} is not authorised to publish changesets "
                                f"in {self.repo_name} ({node.hex()[:12]} would become public)",
                                hint="push them as drafts to a non-publishing repository, or let a user whom "
                                     "auth.rules allows to publish push them")

    def check_branch(self, branch: bytes, node: bytes) -> None:
        name = branch.decode("utf-8", "replace")
        if not self.rights.may_push_branch(name):
            raise NotAuthorised(f"{self.user or 'anonymous'} is not authorised to push to protected branch "
                                f"'{name}' of {self.repo_name} (changeset {node.hex()[:12]})")

    def check_bookmark(self, name: bytes) -> None:
        text = name.decode("utf-8", "replace")
        if not self.rights.may_move_bookmark(text):
            raise NotAuthorised(f"{self.user or 'anonymous'} is not authorised to move protected bookmark "
                                f"'{text}' of {self.repo_name}")

    # -- webhooks
    def emit_push(self, repo: Repository, added: list[bytes], bookmarks: dict[bytes, tuple[bytes | None, bytes | None]],
                  lfs_oids: Iterable[str]) -> None:
        """Queue the push's webhook event (after the transaction committed): `push` when it added
        changesets, else `bookmark` when it moved bookmarks. A queue failure is logged: the push
        itself is done."""
        hooks = self.webhooks
        if hooks is None or not (added or bookmarks):
            return
        event = "push" if added else "bookmark"
        if not hooks.targets(self.repo_name, event):
            return
        try:
            marks_at: dict[bytes, list[str]] = {}
            for name, node in repo.bookmarks().items():
                marks_at.setdefault(node, []).append(name.decode("utf-8", "replace"))
            cl = repo.changelog
            changesets = []
            for node in added[:MAX_EVENT_CHANGESETS]:
                entry = cl.read(node)
                changesets.append({
                    "node": node.hex(), "author": entry.user.decode("utf-8", "replace"),
                    "description": entry.description.decode("utf-8", "replace"),
                    "branch": entry.branch.decode("utf-8", "replace"), "date": [entry.time, entry.tz],
                    "bookmarks": sorted(marks_at.get(node, [])),
                    "phase": "public" if repo.phase(cl.rev(node)) == PUBLIC else "draft"})
            data = {"changesets": changesets, "truncated": len(added) > MAX_EVENT_CHANGESETS,
                    "bookmarks": [{"name": n.decode("utf-8", "replace"), "old": o.hex() if o else None,
                                   "new": v.hex() if v else None} for n, (o, v) in sorted(bookmarks.items())],
                    "lfs_oids": sorted(lfs_oids)}
            hooks.emit_sync(event, self.repo_name, self.user, data)
        except Exception:
            log.exception("push to %s: its webhook event could not be queued", self.repo_name)


def repo_hook_items(repo: Repository) -> tuple[tuple[str, str], ...] | None:
    """The repository's `.hg/hgrc [hooks]` items in order, when hg.repo_hooks lets them run."""
    settings = repo.config
    return settings.hooks if settings.hooks_allowed else None


def push_env(config: Config, auth: Authenticator, webhooks: Webhooks | None, repo_name: str,
             principal: Principal, transport: str, address: str) -> PushEnv:
    """Built in the transport's event loop (the hooks run on it). `transport`: the URL scheme the
    client used (http, https) or ssh; HG_URL is then what hg serve gives: remote:<scheme>:<address>:<user>
    over HTTP, remote:ssh:<address> over SSH."""
    import asyncio  # lazily: hg over SSH imports it only for a write

    user = principal.name
    if transport == "ssh":
        url = f"remote:ssh:{address}"
    else:
        url = f"remote:{transport}:{urllib.parse.quote(address)}:{urllib.parse.quote(user or '')}"
    return PushEnv(repo_name, user, url, config.hooks, HookRunner(asyncio.get_running_loop(), config.hooks.timeout),
                   auth.push_rights(principal, repo_name), webhooks)
