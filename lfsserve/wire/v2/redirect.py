"""Wire protocol v2 content redirects: cacheable command answers kept as files and handed out as a
location (`status: redirect`) instead of their bytes.

The server advertises one redirect target (itself: `uris` is its base URL) with the hashes it
gives; a client that lists that target in a command request's `redirect` gets, for a cacheable
command, the CBOR objects of the answer stored in the bundle store under a name derived from the
command, its arguments and the repository's state (heads, bookmarks, phase roots), with their
size, SHA-256 and SHA-1. The same request against the same state is then answered without
running the command at all. Plain synchronous code (worker threads); no HTTP.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...blobstore.base import StorageUnavailable
from ...blobstore.bundles import BundleStore, bundle_key
from ...hg.repository import Repository
from . import cbor, commands
from .framing import CommandRequest, _pieces

__all__ = ["CACHEABLE", "TARGET_NAME", "Redirector", "descriptor"]

log = logging.getLogger(__name__)

TARGET_NAME = b"lfsserve"
CBOR_MEDIA = b"application/mercurial-cbor"
# Commands whose answer depends only on their arguments and the repository's state.
CACHEABLE = frozenset({b"changesetdata", b"manifestdata", b"filedata", b"filesdata", b"rawstorefiledata"})
HASHES = (b"sha256", b"sha1")


def descriptor(base_url: str) -> dict[bytes, Any]:
    """The API descriptor's `redirect` entry: this server as the one target."""
    https = base_url.startswith("https://")
    target: dict[bytes, Any] = {b"name": TARGET_NAME, b"protocol": b"https" if https else b"http",
                                b"uris": [base_url.encode("utf-8") + b"/"], b"snirequired": False}
    if https:
        target[b"tlsversions"] = [b"1.2", b"1.3"]
    return {b"targets": [target], b"hashes": list(HASHES)}


@dataclass
class Redirector:
    """What `_produce` needs to answer a request with a redirect: the store, the repository's
    served name, and `url_for(key)` (a signed URL of this server, or a presigned one)."""

    store: BundleStore
    repo_name: str
    url_for: Callable[[str], str]
    keep_for: float = 3600.0   # seconds answers for an old state are kept (the URLs' lifetime)

    def wanted(self, request: CommandRequest) -> bool:
        redirect = request.redirect
        if not redirect or request.name not in CACHEABLE or request.error or request.data is not None:
            return False
        targets = redirect.get(b"targets")
        return isinstance(targets, list) and TARGET_NAME in targets

    def location(self, ctx: commands.Context, request: CommandRequest) -> dict[bytes, Any] | None:
        """The `location` of the cached answer (made now if missing); None when the command
        fails (the ordinary answer then reports the error) or the store is unavailable (the
        answer then carries the bytes)."""
        try:
            return self._location(ctx, request)
        except StorageUnavailable as exc:
            log.warning("%s: answering without a content redirect: %s", self.repo_name, exc)
            return None

    def _location(self, ctx: commands.Context, request: CommandRequest) -> dict[bytes, Any] | None:
        state = _state_key(ctx.repo)
        key = f"{state}-{_request_key(request)}"
        name = f"v2-{key}.cbor"
        meta_key = bundle_key(self.repo_name, f"v2-{key}.json")
        meta = self.store.read_small(meta_key)
        if meta is None or not self.store.exists(bundle_key(self.repo_name, name)):
            try:
                made = self._materialize(ctx, request, name)
            except Exception:
                return None
            meta = json.dumps(made).encode()
            self.store.write_small(meta_key, meta)
            self._prune(state)
        info = json.loads(meta)
        wanted = [h for h in request.redirect.get(b"hashes", []) if h in HASHES] if request.redirect else []
        loc: dict[bytes, Any] = {b"url": self.url_for(bundle_key(self.repo_name, name)).encode("utf-8"),
                                 b"mediatype": CBOR_MEDIA, b"size": info["size"]}
        if wanted:
            loc[b"fullhashes"] = [[h, bytes.fromhex(info[h.decode()])] for h in wanted]
        return loc

    def _prune(self, state: str) -> None:
        """Drop answers for states the repository has left, once their URLs have expired (a
        client may still be fetching one until then)."""
        cutoff = time.time() - self.keep_for
        for name, mtime in self.store.names(self.repo_name):
            if name.startswith("v2-") and not name.startswith(f"v2-{state}-") and mtime < cutoff:
                self.store.delete(bundle_key(self.repo_name, name))

    def _materialize(self, ctx: commands.Context, request: CommandRequest, name: str) -> dict[str, Any]:
        tmp_dir = self.store.temp_dir(self.repo_name)
        tmp = tmp_dir / f".v2-{os.getpid()}-{id(request)}.tmp"
        sha256, sha1, size = hashlib.sha256(), hashlib.sha1(), 0
        try:
            with open(tmp, "wb") as fh:
                for value in commands.run(ctx, request):
                    for piece in _pieces(value):
                        fh.write(piece)
                        sha256.update(piece)
                        sha1.update(piece)
                        size += len(piece)
            self.store.install(bundle_key(self.repo_name, name), tmp)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return {"size": size, "sha256": sha256.hexdigest(), "sha1": sha1.hexdigest()}


def _request_key(request: CommandRequest) -> str:
    """The command and its arguments."""
    return hashlib.sha256(request.name + b"\0" + cbor.encode(_canonical(request.args))).hexdigest()


def _state_key(repo: Repository) -> str:
    """Every piece of repository state an answer can show: heads, bookmarks, phase roots,
    publishing (short: it only tells the states of one repository apart)."""
    h = hashlib.sha256()
    h.update(b"".join(sorted(repo.heads())))
    h.update(cbor.encode([[k, v] for k, v in sorted(repo.bookmarks().items())]))
    h.update(b"publishing" if repo.publishing else b"-")
    with contextlib.suppress(FileNotFoundError), repo.open_store_file(b"phaseroots") as fh:
        h.update(fh.read())
    return h.hexdigest()[:16]


def _canonical(value: Any) -> Any:
    """Arguments with maps and sets in a fixed order, so equal requests name the same answer."""
    if isinstance(value, dict):
        return [[k, _canonical(value[k])] for k in sorted(value)]
    if isinstance(value, (set, frozenset)):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value
