"""Logging: a request id on every log line and response, and the access log (combined or JSON lines).

The diagnostic log (stderr) is text or JSON lines (`log.format`); error tracebacks go there and
never into a response. The access log (stdout) is written after each response is complete, by
the same hook that feeds the request metrics, so `log.access_format = "off"` silences the lines
but keeps the metrics.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import re
import secrets
import sys
import time

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .metrics import METRICS
from .reqkeys import CLIENT, PRINCIPAL, REQUEST_ID, ROUTE_KIND

__all__ = [
    "CURRENT_REQUEST_ID",
    "AccessLogger",
    "JsonAccessLogger",
    "QuietAccessLogger",
    "add_request_id_header",
    "request_id_middleware",
    "setup_logging",
]

CURRENT_REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# Request ids: a random per-process prefix and a counter. Unique across restarts and processes
# without a getrandom() system call (and a GIL release) on every request.
_ID_PREFIX = secrets.token_hex(4)
_ID_COUNTER = itertools.count(1)


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFF:08x}"


_INCOMING_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = CURRENT_REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per log record; a traceback, if any, in "exc"."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
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
    """Take the proxy's X-Request-Id when it is sane, else make one (add_request_id_header echoes it)."""
    incoming = request.headers.get("X-Request-Id", "")
    rid = incoming if _INCOMING_ID.match(incoming) else _new_request_id()
    request[REQUEST_ID] = rid
    token = CURRENT_REQUEST_ID.set(rid)
    try:
        return await handler(request)
    finally:
        CURRENT_REQUEST_ID.reset(token)


async def add_request_id_header(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streamed or not and raised HTTPExceptions too, carries the id."""
    rid = request.get(REQUEST_ID)
    if rid and "X-Request-Id" not in response.headers:
        response.headers["X-Request-Id"] = rid


def _observe(request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> None:
    """Feed the request metrics (see lfsserve.metrics); every access logger calls this."""
    app = getattr(request, "app", None) if isinstance(request, web.Request) else None
    metrics = app.get(METRICS) if app is not None else None
    if metrics is not None:
        metrics.observe_request(request.get(ROUTE_KIND, "other"), request.method, response.status,
                                request.content.total_bytes, response.body_length, elapsed)


def _user(request: web.BaseRequest) -> str:
    principal = request.get(PRINCIPAL)
    return str(principal) if principal is not None else "-"


def _client(request: web.BaseRequest) -> str:
    return request.get(CLIENT) or request.remote or "-"


class QuietAccessLogger(AbstractAccessLogger):
    """No access log lines (log.access_format = "off"), metrics only."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> None:
        _observe(request, response, elapsed)


class AccessLogger(AbstractAccessLogger):
    """Apache/nginx "combined" format plus the request id and duration."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> None:
        _observe(request, response, elapsed)
        ts = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime())
        line = '%s - %s [%s] "%s %s HTTP/%d.%d" %d %s "%s" "%s" rid=%s %.3fs' % (
            _client(request), _user(request), ts, request.method, request.path_qs,
            request.version.major, request.version.minor, response.status,
            response.body_length or "-", request.headers.get("Referer", "-"),
            request.headers.get("User-Agent", "-"), request.get(REQUEST_ID, "-"), elapsed)
        self.logger.info(line)


class JsonAccessLogger(AbstractAccessLogger):
    """One JSON object per request."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> None:
        _observe(request, response, elapsed)
        self.logger.info(json.dumps({
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime()),
            "request_id": request.get(REQUEST_ID, "-"),
            "remote": _client(request),
            "user": _user(request),
            "method": request.method,
            "path": request.path_qs,
            "status": response.status,
            "bytes_out": response.body_length,
            "bytes_in": request.content.total_bytes,
            "duration_s": round(elapsed, 6),
            "user_agent": request.headers.get("User-Agent"),
        }, separators=(",", ":")))
