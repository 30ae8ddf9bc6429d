"""The Git LFS batch API: which objects to transfer, and where.

    POST {repo}/.git/info/lfs/objects/batch    (and the other spellings in routing.py)
    {"operation": "upload"|"download", "objects": [{"oid": ..., "size": ...}, ...],
     "transfers": ["basic"], "ref": {"name": ...}, "hash_algo": "sha256"}

hg sends only `operation` and `objects`; the rest defaults to basic / sha256. Whole-request
mistakes get a 4xx with a JSON message; mistakes in one object get that object an `error`.
The actions (where to PUT / GET / verify, with which headers, until when) come from the
service's transfer adapter (adapters.py): by default this server's own transfer endpoints, each
with a signed, short-lived Bearer token for exactly that transfer, so the PUT / GET / verify that
follows needs no second credential exchange.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, NamedTuple

from aiohttp import web

from ..auth import Permission, Principal
from ..blobstore import ObjectState, Status
from ..kernel import CTX, LFS_JSON, PRINCIPAL
from ..routing import Target
from .adapters import Action
from .errors import LfsError, endpoint
from .keys import LFS_SERVICE
from .request import MAX_SIZE, check_accept, check_ref, object_error, read_json

__all__ = ["BatchObject", "BatchRequest", "answer_batch", "handle_batch", "parse_batch"]

OPERATIONS = ("upload", "download")
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


def _render(action: Action, now: int, iso: dict[int, str]) -> str:
    """An action as JSON; `iso` caches the rendered expiry times (a batch's actions share one)."""
    href, header, at = action
    when = iso.get(at) or iso.setdefault(at, _iso(at))
    fields = ",".join([f"{_quote(k)}:{_quote(v)}" for k, v in header.items()])
    return f'{{"href":{_quote(href)},"header":{{{fields}}},"expires_in":{at - now},"expires_at":"{when}"}}'


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
    values go into the templates (hex oids, integers, the adapter's actions with their strings
    JSON-escaped); anything client-supplied that failed validation goes through json.dumps.
    """
    cfg = svc.config.lfs
    states = await svc.visible_states(namespace, (o.oid for o in req.objects if o.error is None))
    now = int(time.time())
    actions = svc.transfer.for_batch(base_url=base, namespace=namespace, principal=principal,
                                     operation=req.operation, expires_at=now + cfg.action_expiry)
    iso: dict[int, str] = {}
    svc.stats.batch_requests += 1
    svc.stats.batch_objects += len(req.objects)

    # First what each object gets: its answer already, or actions from the adapter (after prepare).
    out: list[str] = []  # "" = actions to come from the adapter
    need: list[tuple[str, int]] = []
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
                out.append("")
                need.append((oid, size))
            continue
        if cfg.max_object_size and size > cfg.max_object_size:
            out.append(_error(obj, 413, f"The object is larger than this server's limit of "
                                        f"{cfg.max_object_size} bytes"))
        elif state is not None and state.servable and state.size == size:
            out.append(f'{{"oid":"{oid}","size":{size}}}')  # already here: nothing to do
        elif state is not None and state.servable:
            out.append(_error(obj, 422, f"An object with this oid is stored with size {state.size}, not {size}"))
        else:
            out.append("")
            need.append((oid, size))
    prepare = getattr(actions, "prepare", None)
    if prepare is not None and need:
        await prepare(need)
    todo = iter(need)
    for i, answer in enumerate(out):
        if answer:
            continue
        oid, size = next(todo)
        if req.operation == "download":
            download = _render(actions.download(oid, size), now, iso)
            out[i] = (f'{{"oid":"{oid}","size":{size},"authenticated":true,'
                      f'"actions":{{"download":{download}}}}}')
        else:
            upload = _render(actions.upload(oid, size), now, iso)
            verify_action = actions.verify(oid, size)
            verify = "" if verify_action is None else f',"verify":{_render(verify_action, now, iso)}'
            out[i] = (f'{{"oid":"{oid}","size":{size},"authenticated":true,'
                      f'"actions":{{"upload":{upload}{verify}}}}}')
    head = f'{{"transfer":{_quote(svc.transfer.name)},"objects":['
    return (head + ",".join(out) + '],"hash_algo":"sha256"}').encode("utf-8")


@endpoint
async def handle_batch(request: web.Request, target: Target) -> web.StreamResponse:
    svc = request.app[LFS_SERVICE]
    if request.method != "POST":
        raise LfsError(405, "the batch API takes POST requests", headers={"Allow": "POST"})
    check_accept(request)
    ns = target.repo
    # Credentials are checked before the body is read: a client that may not even read gets its
    # 401/403 at once.
    principal = await svc.auth.authenticate(request.headers, lfs_repo=ns)
    request[PRINCIPAL] = principal
    svc.auth.authorize(principal, ns, Permission.READ)
    limit = 64 * 1024 + svc.config.lfs.max_batch_objects * _BYTES_PER_OBJECT
    req = parse_batch(await read_json(request, limit), svc.config.lfs.max_batch_objects)
    if req.operation == "upload":
        svc.auth.authorize(principal, ns, Permission.WRITE)
    body = await answer_batch(svc, ns, principal, req, request.app[CTX].base_url(request))
    return web.Response(body=body, content_type=LFS_JSON)
