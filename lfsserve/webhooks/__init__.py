"""Webhooks: after a push, a bookmark move or an LFS upload, a JSON event is POSTed to the URLs
configured in `[[webhooks.targets]]` (global with repos = "**", or per repository glob), signed
with HMAC-SHA256 (`X-Lfsserve-Signature: sha256=<hex>`).

Events are queued durably (store.py) by whoever causes them, from a worker thread, before the
client gets its answer: the hg push path (HTTP or the SSH command's process), the LFS upload
handler. A server's delivery worker (delivery.py) sends them with retries and backoff. This
module needs no aiohttp: the SSH command's process imports it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..auth import glob_to_regex
from ..config import Config, WebhookTarget
from .store import WebhookQueue

__all__ = ["MAX_EVENT_CHANGESETS", "Webhooks", "sign"]

log = logging.getLogger(__name__)

# A push of more changesets lists the first ones and says `"truncated": true` (memory and the
# receivers' limits stay bounded whatever the push size).
MAX_EVENT_CHANGESETS = 1000


def sign(secret: str, body: bytes) -> str:
    """The value of X-Lfsserve-Signature for `body`."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class Webhooks:
    """The configured targets and the queue. `start()` opens the queue (nothing is opened when no
    target is configured)."""

    def __init__(self, config: Config, root: Path | None = None):
        self.config = config.webhooks
        self._targets = [(glob_to_regex(t.repos), t) for t in self.config.targets]
        self.queue = WebhookQueue(root if root is not None else config.root)
        self._started = False
        # Called after an event is queued (from the queuing thread): wakes the delivery worker.
        self.on_queued: Callable[[], None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._targets)

    def start(self) -> None:
        if self.enabled and not self._started:
            self.queue.start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            self.queue.stop()
            self._started = False

    def targets(self, repo: str, event: str) -> list[WebhookTarget]:
        return [t for regex, t in self._targets if regex.match(repo) and event in t.events]

    def secret_for(self, repo: str, url: str) -> str:
        for regex, t in self._targets:
            if t.url == url and regex.match(repo):
                return t.secret
        return ""

    def emit_sync(self, event: str, repo: str, user: str | None, data: dict[str, Any]) -> None:
        """Queue `event` for the targets that want it (blocking: a worker thread)."""
        targets = self.targets(repo, event)
        if not targets:
            return
        self.start()
        event_id = uuid.uuid4().hex
        body = {"event": event, "id": event_id, "time": int(time.time()), "repo": repo, "user": user, **data}
        payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")
        self.queue.enqueue_sync(event_id, event, repo, list(dict.fromkeys(t.url for t in targets)), payload)
        log.info("webhook event %s %s for %s queued for %d URL(s)", event, event_id, repo, len(targets))
        if self.on_queued is not None:
            self.on_queued()
