"""Transfer adapters: where a batch answer sends a client to move each object (its actions).

The batch code decides *whether* an object gets actions; the adapter decides *what* they are
(href, headers, expiry). `BasicServerAdapter` points them at this server's own transfer
endpoints with signed short-lived tokens; a backend that serves objects elsewhere (presigned
S3 URLs) brings its own adapter, registered in `_ADAPTERS` under its `[storage] backend` name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple, Protocol

from ..auth import Authenticator, Principal
from ..blobstore import BlobStore
from ..config import Config, ConfigError
from ..kernel import LFS_JSON

__all__ = ["Action", "BasicServerAdapter", "BatchActions", "PresignedS3Adapter", "TransferAdapter", "open_adapter"]

# What a basic-transfer PUT / GET body is (git-lfs sends this Accept on transfers).
TRANSFER_ACCEPT = "application/vnd.git-lfs"


class Action(NamedTuple):
    """One action of a batch answer's object: request `href` with `header` before `expires_at`."""

    href: str
    header: Mapping[str, str]
    expires_at: int  # Unix time


class BatchActions(Protocol):
    """The actions for the objects of one batch answer (one namespace, principal, operation)."""

    def download(self, oid: str, size: int) -> Action: ...

    def upload(self, oid: str, size: int) -> Action: ...

    def verify(self, oid: str, size: int) -> Action | None:
        """The verify action that follows an upload; None when the adapter needs none."""
        ...

    # Optional: `async def prepare(self, objects: list[tuple[str, int]]) -> None`, awaited once
    # with the (oid, size) of every object the batch answer will ask actions for, before it
    # asks (an adapter whose actions need I/O, such as presigning, does it there, all at once).


class TransferAdapter(Protocol):
    # The Git LFS transfer adapter name the batch answer states ("basic": plain PUT / GET).
    name: str

    def for_batch(self, *, base_url: str, namespace: str, principal: Principal, operation: str,
                  expires_at: int) -> BatchActions:
        """Actions for one batch answer; `operation` is "upload" or "download"."""
        ...


class _ServerActions:
    """Actions on this server's own endpoints. `verify`: whether uploads get a verify action;
    uploads through this server need none (see BasicServerAdapter)."""

    def __init__(self, auth: Authenticator, prefix: str, principal: Principal, namespace: str,
                 operation: str, expires_at: int, *, verify: bool):
        self._object_href = f"{prefix}/objects/"
        self._verify_href = f"{prefix}/verify"
        self._expires_at = expires_at
        self._verify = verify
        ops = ("download",) if operation == "download" else ("upload", "verify") if verify else ("upload",)
        self._sign = {op: auth.action_signer(principal, namespace, op, expires_at) for op in ops}

    # Spelled out per operation: a batch answer asks for thousands of these.
    def download(self, oid: str, size: int) -> Action:
        token = self._sign["download"](oid)
        return Action(self._object_href + oid, {"Accept": TRANSFER_ACCEPT, "Authorization": f"Bearer {token}"},
                      self._expires_at)

    def upload(self, oid: str, size: int) -> Action:
        token = self._sign["upload"](oid)
        return Action(self._object_href + oid, {"Accept": TRANSFER_ACCEPT, "Authorization": f"Bearer {token}"},
                      self._expires_at)

    def verify(self, oid: str, size: int) -> Action | None:
        if not self._verify:
            return None
        token = self._sign["verify"](oid)
        return Action(self._verify_href, {"Accept": LFS_JSON, "Authorization": f"Bearer {token}"}, self._expires_at)


class BasicServerAdapter:
    """Objects move through this server ({repo}/.hg/lfs/objects/{oid}), each action carrying a
    signed token valid for exactly that object and operation.

    Uploads get no verify action: every backend's put() hashes the body against its oid and the
    PUT is answered only once the object is stored (and synced, with lfs.fsync) and granted, so
    a 200/201 already says everything a verify would; a second request per object would add a
    round trip and no guarantee. The verify endpoint stays for clients holding older answers
    and for direct uploads (PresignedS3Adapter), whose bytes this server never saw."""

    name = "basic"

    def __init__(self, auth: Authenticator):
        self.auth = auth

    def for_batch(self, *, base_url: str, namespace: str, principal: Principal, operation: str,
                  expires_at: int) -> BatchActions:
        return _ServerActions(self.auth, f"{base_url}/{namespace}/.hg/lfs", principal, namespace, operation,
                              expires_at, verify=False)


class _PresignedActions:
    """Direct S3 transfer: presigned GETs of the objects and presigned PUTs to a staging key of
    the namespace; the verify action (this server's) checks and installs what was uploaded."""

    def __init__(self, store, server: _ServerActions, namespace: str, operation: str, expires_at: int):
        self._store = store
        self._server = server
        self._namespace = namespace
        self._operation = operation
        # A presigned URL stops working after presign_expires, whatever the batch said.
        self._expires_at = min(expires_at, int(time.time()) + store.presign_expires - 5)
        self._urls: dict[str, tuple[str, dict[str, str]]] = {}

    async def prepare(self, objects: list[tuple[str, int]]) -> None:
        async def one(oid: str, size: int) -> None:
            if self._operation == "download":
                self._urls[oid] = (await self._store.presign_download(oid), {})
            else:
                self._urls[oid] = await self._store.presign_upload(oid, size, self._namespace)

        await asyncio.gather(*(one(oid, size) for oid, size in objects))

    def download(self, oid: str, size: int) -> Action:
        url, header = self._urls[oid]
        return Action(url, header, self._expires_at)

    def upload(self, oid: str, size: int) -> Action:
        url, header = self._urls[oid]
        return Action(url, header, self._expires_at)

    def verify(self, oid: str, size: int) -> Action | None:
        return self._server.verify(oid, size)


class PresignedS3Adapter:
    """`[storage] transfer = "direct"`: object bytes go between clients and the bucket, never
    through this server (S3BlobStore.presign_download / presign_upload / promote_staged)."""

    name = "basic"

    def __init__(self, auth: Authenticator, store):
        self.auth = auth
        self.store = store

    def for_batch(self, *, base_url: str, namespace: str, principal: Principal, operation: str,
                  expires_at: int) -> BatchActions:
        # The verify action is what checks and installs an upload made straight to the bucket.
        server = _ServerActions(self.auth, f"{base_url}/{namespace}/.hg/lfs", principal, namespace, operation,
                                expires_at, verify=True)
        return _PresignedActions(self.store, server, namespace, operation, expires_at)


def _s3_adapter(config: Config, auth: Authenticator, store: BlobStore) -> TransferAdapter:
    if config.storage.transfer == "direct":
        return PresignedS3Adapter(auth, store)
    return BasicServerAdapter(auth)


# [storage] backend -> the adapter its objects are transferred through.
_ADAPTERS: dict[str, Callable[[Config, Authenticator, BlobStore], TransferAdapter]] = {
    "local": lambda config, auth, store: BasicServerAdapter(auth),
    "s3": _s3_adapter,
}


def open_adapter(config: Config, auth: Authenticator, store: BlobStore) -> TransferAdapter:
    """The transfer adapter for the configured storage backend (its `store`)."""
    try:
        make = _ADAPTERS[config.storage.backend]
    except KeyError:
        raise ConfigError(f"storage.backend: no transfer adapter for {config.storage.backend!r}") from None
    return make(config, auth, store)
