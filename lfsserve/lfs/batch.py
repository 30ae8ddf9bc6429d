"""The Git LFS batch API: which objects to transfer, and where.

    POST {repo}/.git/info/lfs/objects/batch    (and the other spellings in routing.py)
    {"operation": "upload"|"download", "objects": [{"oid": ..., "size": ...}, ...],
     "transfers": ["basic"], "ref": {"name": ...}, "hash_algo": "sha256"}

hg sends only `operation` and `objects`; the rest defaults to basic / sha256. Whole-request
mistakes get a 4xx with a JSON message; mistakes in one object get that object an `error`.
Each action carries a signed, short-lived Bearer token for exactly that transfer, so the
PUT / GET / verify that follows needs no second credential exchange.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiohttp import web

from ..auth import Permission, Principal
from ..blobstore import ObjectState, Status
from ..reqkeys import PRINCIPAL
from ..routing import Target
from .errors import LFS_JSON, LfsError, endpoint
from .request import MAX_SIZE, check_accept, check_ref, object_error, read_json

__all__ = ["BatchObject", "BatchRequest", "answer_batch", "handle_batch", "parse_batch"]

OPERATIONS = ("upload", "download")
TRANSFER_ACCEPT = "application/vnd.git-lfs"
# Bytes a batch body may take per object (a generous upper bound of one {"oid","size"} entry).
_BYTES_PER_OBJECT = 256


class BatchObject(NamedTuple):
    oid: Any
    size: Any
    error: str | None = None  # why this entry is invalid


@dataclass(frozen=True)
class BatchRequest:
    operation: str
    objects: list[BatchObject]


def parse_batch(body: dict[str, Any], max_objects: int) -> BatchRequest:
    """Validate a batch request body; raises LfsError for whole-request mistakes."""
    operation = body.get("operation")
    if operation not in OPERATIONS:
        raise LfsError(422, f"unsupported operation {operation!r}: use \"upload\" or \"download\"")
    transfers = body.get("transfers")
    if transfers is not None:
        if not isinstance(transfers, list) or not all(isinstance(t, str) for t in transfers):
            raise LfsError(422, "transfers must be a list of transfer adapter names")
        if "basic" not in transfers:
            raise LfsError(422, "this server only supports the basic transfer adapter")
    hash_algo = body.get("hash_algo", "sha256")
    if hash_algo != "sha256":
        raise LfsError(409, f"unsupported hash algorithm {str(hash_algo)[:40]!r}: this server uses sha256")
    check_ref(body)
    objects = body.get("objects")
    if not isinstance(objects, list):
        raise LfsError(422, "objects must be a list of {\"oid\", \"size\"} objects")
    if len(objects) > max_objects:
        raise LfsError(413, f"too many objects in one batch request: {len(objects)} "
                            f"(this server takes at most {max_objects}); split the request")
    parsed = []
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict):
            raise LfsError(422, f"objects[{i}] is not a JSON object")
        oid, size = obj.get("oid"), obj.get("size")
        parsed.append(BatchObject(oid, size, object_error(oid, size)))
    return BatchRequest(operation, parsed)


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _action(href_json: str, token: str, accept: str, expires_in: int, expires_iso: str) -> str:
    return (f'{{"href":{href_json},"header":{{"Accept":"{accept}","Authorization":"Bearer {token}"}},'
            f'"expires_in":{expires_in},"expires_at":"{expires_iso}"}}')


def _echo(value: Any, kind: type) -> Any:
    """A client value echoed in an error entry: only a plain scalar of the expected kind (a string
    cut short); anything else (a nested structure, a float such as 1e999) becomes null."""
    if kind is str:
        return value[:200] if isinstance(value, str) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_SIZE else None


def _error(obj: BatchObject, code: int, message: str) -> str:
    return json.dumps({"oid": _echo(obj.oid, str), "size": _echo(obj.size, int),
                       "error": {"code": code, "message": message}}, separators=(",", ":"))


async def answer_batch(svc, namespace: str, principal: Principal, req: BatchRequest, base: str) -> bytes:
    """The batch response body (JSON) for a validated request.

    Objects with actions are rendered from templates rather than through json.dumps: a batch
    names up to thousands of objects and its latency is what clients wait on. Only validated
    values go into the templates (hex oids, integers, base64url tokens, the JSON-escaped URL
    prefix); anything client-supplied that failed validation goes through json.dumps.
    """
    cfg = svc.config.lfs
    states = await svc.visible_states(namespace, (o.oid for o in req.objects if o.error is None))
    expires_in = cfg.action_expiry
    expires_at = int(time.time()) + expires_in
    expires_iso = _iso(expires_at)
    prefix = json.dumps(f"{base}/{namespace}/.hg/lfs")[1:-1]
    svc.stats.batch_requests += 1
    svc.stats.batch_objects += len(req.objects)
    sign = {op: svc.auth.action_signer(principal, namespace, op, expires_at)
            for op in (("download",) if req.operation == "download" else ("upload", "verify"))}

    out = []
    for obj in req.objects:
        if obj.error is not None:
            out.append(_error(obj, 422, obj.error))
            continue
        oid, size = obj.oid, obj.size
        state: ObjectState | None = states.get(oid)
        if req.operation == "download":
            if state is None or not state.present:
                out.append(_error(obj, 404, "The object does not exist"))
            elif state.status is Status.CORRUPT:
                svc.stats.corrupt_detected += 1
                out.append(_error(obj, 422, "The object is corrupt"))
            elif state.size != size:
                out.append(_error(obj, 422, f"The object's size is {state.size} bytes, not {size}"))
            else:
                download = _action(f'"{prefix}/objects/{oid}"', sign["download"](oid), TRANSFER_ACCEPT,
                                   expires_in, expires_iso)
                out.append(f'{{"oid":"{oid}","size":{size},"authenticated":true,'
                           f'"actions":{{"download":{download}}}}}')
            continue
        if cfg.max_object_size and size > cfg.max_object_size:
            out.append(_error(obj, 413, f"The object is larger than this server's limit of "
                                        f"{cfg.max_object_size} bytes"))
        elif state is not None and state.servable and state.size == size:
            out.append(f'{{"oid":"{oid}","size":{size}}}')  # already here: nothing to do
        elif state is not None and state.servable:
            out.append(_error(obj, 422, f"An object with this oid is stored with size {state.size}, not {size}"))
        else:
            upload = _action(f'"{prefix}/objects/{oid}"', sign["upload"](oid), TRANSFER_ACCEPT,
                             expires_in, expires_iso)
            verify = _action(f'"{prefix}/verify"', sign["verify"](oid), LFS_JSON, expires_in, expires_iso)
            out.append(f'{{"oid":"{oid}","size":{size},"authenticated":true,'
                       f'"actions":{{"upload":{upload},"verify":{verify}}}}}')
    return ('{"transfer":"basic","objects":[' + ",".join(out) + '],"hash_algo":"sha256"}').encode("utf-8")


@endpoint
async def handle_batch(request: web.Request, target: Target) -> web.StreamResponse:
    from . import LFS_SERVICE
    from ..app import CTX

    svc = request.app[LFS_SERVICE]
    if request.method != "POST":
        raise LfsError(405, "the batch API takes POST requests", headers={"Allow": "POST"})
    check_accept(request)
    ns = target.repo
    # Credentials are checked before the body is read: a client that may not even read gets its
    # 401/403 at once.
    principal = await svc.auth.authenticate(request.headers)
    request[PRINCIPAL] = principal
    svc.auth.authorize(principal, ns, Permission.READ)
    limit = 64 * 1024 + svc.config.lfs.max_batch_objects * _BYTES_PER_OBJECT
    req = parse_batch(await read_json(request, limit), svc.config.lfs.max_batch_objects)
    if req.operation == "upload":
        svc.auth.authorize(principal, ns, Permission.WRITE)
    body = await answer_batch(svc, ns, principal, req, request.app[CTX].base_url(request))
    return web.Response(body=body, content_type=LFS_JSON)
