"""Logging: a request id on every log line and response, and the access log (combined or JSON lines)."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
import time

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

__all__ = ["REQUEST_ID", "AccessLogger", "JsonAccessLogger", "request_id_middleware", "setup_logging"]

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_INCOMING_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"))
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    access = logging.getLogger("lfsserve.access")
    access.propagate = False
    ah = logging.StreamHandler(sys.stdout)
    ah.setFormatter(logging.Formatter("%(message)s"))
    access.handlers[:] = [ah]
    access.setLevel(logging.INFO)


@web.middleware
async def request_id_middleware(request: web.Request, handler):
    """Take the proxy's X-Request-Id when it is sane, else make one; echo it on the response."""
    incoming = request.headers.get("X-Request-Id", "")
    rid = incoming if _INCOMING_ID.match(incoming) else secrets.token_hex(8)
    request["request_id"] = rid
    token = REQUEST_ID.set(rid)
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers["X-Request-Id"] = rid
            raise
        if not response.prepared:
            response.headers["X-Request-Id"] = rid
        return response
    finally:
        REQUEST_ID.reset(token)


def _user(request: web.BaseRequest) -> str:
    principal = request.get("principal")
    return str(principal) if principal is not None else "-"


class AccessLogger(AbstractAccessLogger):
    """Apache/nginx "combined" format plus the request id and duration."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> None:
        ts = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime())
        line = '%s - %s [%s] "%s %s HTTP/%d.%d" %d %s "%s" "%s" rid=%s %.3fs' % (
            request.remote or "-", _user(request), ts, request.method, request.path_qs,
            request.version.major, request.version.minor, response.status,
            response.body_length or "-", request.headers.get("Referer", "-"),
            request.headers.get("User-Agent", "-"), request.get("request_id", "-"), elapsed)
        self.logger.info(line)


class JsonAccessLogger(AbstractAccessLogger):
    """One JSON object per request."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> None:
        self.logger.info(json.dumps({
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime()),
            "request_id": request.get("request_id", "-"),
            "remote": request.remote,
            "user": _user(request),
            "method": request.method,
            "path": request.path_qs,
            "status": response.status,
            "bytes_out": response.body_length,
            "bytes_in": request.content_length,
            "duration_s": round(elapsed, 6),
            "user_agent": request.headers.get("User-Agent"),
        }, separators=(",", ":")))
