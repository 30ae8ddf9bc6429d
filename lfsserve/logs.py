"""Logging: a request id on every log line and response, and the access log (combined or JSON lines).

The diagnostic log (stderr) is text or JSON lines (`log.format`); error tracebacks go there and
never into a response. The access log (stdout) is written after each response is complete, by
the same hook that feeds the request metrics, so `log.access_format = "off"` silences the lines
but keeps the metrics. Every request is logged and counted, including:
- requests aiohttp's HTTP parser refused before any handler ran (junk, an over-long line): a
  400 with a fresh request id, route kind "invalid", request line "-", and one WARNING line;
- requests whose client went away before the answer was complete: status 499 ("client closed
  request", as nginx logs it) and one INFO line with the request id, no traceback.
The size logged and counted is the response body actually sent (see BODY_SENT).
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
from aiohttp.http_exceptions import HttpProcessingError

from .metrics import Metrics
from .reqkeys import BODY_SENT, CLIENT, PRINCIPAL, REQUEST_ID, ROUTE_KIND

__all__ = [
    "CLIENT_CLOSED",
    "CURRENT_REQUEST_ID",
    "AccessLogger",
    "JsonAccessLogger",
    "QuietAccessLogger",
    "access_logger_class",
    "add_request_id_header",
    "client_gone",
    "request_id_middleware",
    "setup_logging",
]

log = logging.getLogger(__name__)

# The status recorded (never sent) when the client closed the connection before the whole
# answer left: nginx's "499 client closed request".
CLIENT_CLOSED = 499

CURRENT_REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# Request ids: a random per-process prefix and a counter. Unique across restarts and processes
# without a getrandom() system call (and a GIL release) on every request.
_ID_PREFIX = secrets.token_hex(4)
_ID_COUNTER = itertools.count(1)


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFF:08x}"


_INCOMING_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")


class _ParserErrorFilter(logging.Filter):
    """Drops aiohttp's traceback for a request its parser refused: a client's malformed bytes
    are not a server error, and the access logger writes one WARNING line with a request id."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError)


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
    server_log = logging.getLogger("aiohttp.server")
    server_log.filters[:] = [f for f in server_log.filters if not isinstance(f, _ParserErrorFilter)]
    server_log.addFilter(_ParserErrorFilter())
    access = logging.getLogger("lfsserve.access")
    access.propagate = False
    ah = logging.StreamHandler(sys.stdout)
    ah.setFormatter(logging.Formatter("%(message)s"))
    access.handlers[:] = [ah]
    access.setLevel(logging.INFO)


@web.middleware
async def request_id_middleware(request: web.Request, handler):
    """Take the proxy's X-Request-Id when it is sane, else make one (add_request_id_header echoes it).

    Also counts the response body bytes as they are written (BODY_SENT), and turns a client
    disconnect into the 499 that the access log and metrics record.
    """
    incoming = request.headers.get("X-Request-Id", "")
    rid = incoming if _INCOMING_ID.match(incoming) else _new_request_id()
    request[REQUEST_ID] = rid
    request[BODY_SENT] = 0

    def count(n: int, _total: int) -> None:
        request[BODY_SENT] += n

    request.writer.on_body_write = count
    token = CURRENT_REQUEST_ID.set(rid)
    try:
        return await handler(request)
    except ConnectionError as exc:
        if not client_gone(request):
            raise  # a connection of the server's own failed: not the client's doing
        # The peer is gone (reading its body or writing to it failed): an everyday event, not a
        # server error. The answer below is recorded, not sent: the connection is closed.
        log.info("client closed the connection: %s %s (%s; %d body bytes received, %d sent)",
                 request.method, request.path, exc or type(exc).__name__,
                 request.content.total_bytes, request[BODY_SENT])
        response = web.Response(status=CLIENT_CLOSED, reason="Client Closed Request")
        response.force_close()
        return response
    finally:
        CURRENT_REQUEST_ID.reset(token)


def client_gone(request: web.BaseRequest) -> bool:
    """The client's connection is closed or closing (so a ConnectionError came from it)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def add_request_id_header(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streamed or not and raised HTTPExceptions too, carries the id."""
    rid = request.get(REQUEST_ID)
    if rid and "X-Request-Id" not in response.headers:
        response.headers["X-Request-Id"] = rid


def _body_sent(request: web.BaseRequest, response: web.StreamResponse) -> int:
    sent = request.get(BODY_SENT)
    if sent == 0 and isinstance(response, web.FileResponse) and request.method != "HEAD":
        # On a stdlib event loop aiohttp hands the file to loop.sendfile(), past the writer's
        # count; a FileResponse that reaches the log was sent whole (a cut one is a 499).
        return response.content_length or 0
    if sent is not None:
        return sent
    # Answered by aiohttp itself (its parser refused the request): a plain, complete Response.
    body = getattr(response, "body", None)
    return len(body) if isinstance(body, (bytes, bytearray)) else 0


class _Entry:
    """What one access-log line and the request metrics say about a request."""

    def __init__(self, request: web.BaseRequest, response: web.StreamResponse):
        self.rid = request.get(REQUEST_ID)
        # No request id: the request never reached the middlewares; aiohttp's parser refused it
        # and its method and path are placeholders, not what the client sent.
        self.refused_by_parser = self.rid is None
        if self.refused_by_parser:
            self.rid = _new_request_id()
            self.kind, self.method, self.path = "invalid", "-", "-"
        else:
            self.kind = request.get(ROUTE_KIND, "other")
            self.method, self.path = request.method, request.path_qs
        self.status = response.status
        self.bytes_out = _body_sent(request, response)
        self.bytes_in = request.content.total_bytes
        self.client = request.get(CLIENT) or request.remote or "-"

    def report_refusal(self, response: web.StreamResponse) -> None:
        if self.refused_by_parser:
            text = getattr(response, "text", None) or ""
            reason = " ".join(text.split())[:160]  # aiohttp's message, echoing the junk
            log.warning("malformed HTTP request from %s refused with %d: %s", self.client, self.status,
                        reason or "-", extra={"request_id": self.rid})


def _user(request: web.BaseRequest) -> str:
    principal = request.get(PRINCIPAL)
    return str(principal) if principal is not None else "-"


class QuietAccessLogger(AbstractAccessLogger):
    """No access log lines (log.access_format = "off"), metrics only.

    `metrics` is bound per app by access_logger_class: a request aiohttp's parser refused has no
    route, hence no app to find the metrics through.
    """

    metrics: Metrics | None = None

    def log(self, request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> None:
        if request.get(REQUEST_ID) is None or self.metrics is None:
            self.observe(request, response, elapsed)  # a parser refusal still gets its WARNING line
            return
        # No line to write: only what the metrics need (no path, client or request id to format).
        self.metrics.observe_request(request.get(ROUTE_KIND, "other"), request.method, response.status,
                                     request.content.total_bytes, _body_sent(request, response), elapsed)

    def observe(self, request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> _Entry:
        entry = _Entry(request, response)
        entry.report_refusal(response)
        if self.metrics is not None:
            self.metrics.observe_request(entry.kind, entry.method, entry.status, entry.bytes_in,
                                         entry.bytes_out, elapsed)
        return entry


class AccessLogger(QuietAccessLogger):
    """Apache/nginx "combined" format plus the request id and duration."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> None:
        e = self.observe(request, response, elapsed)
        ts = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime())
        line = '%s - %s [%s] "%s" %d %s "%s" "%s" rid=%s %.3fs' % (
            e.client, _user(request), ts,
            "-" if e.refused_by_parser else "%s %s HTTP/%d.%d" % (
                e.method, e.path, request.version.major, request.version.minor),
            e.status, e.bytes_out or "-", request.headers.get("Referer", "-"),
            request.headers.get("User-Agent", "-"), e.rid, elapsed)
        self.logger.info(line)


class JsonAccessLogger(QuietAccessLogger):
    """One JSON object per request."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> None:
        e = self.observe(request, response, elapsed)
        self.logger.info(json.dumps({
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime()),
            "request_id": e.rid,
            "remote": e.client,
            "user": _user(request),
            "method": e.method,
            "path": e.path,
            "status": e.status,
            "bytes_out": e.bytes_out,
            "bytes_in": e.bytes_in,
            "duration_s": round(elapsed, 6),
            "user_agent": request.headers.get("User-Agent"),
        }, separators=(",", ":")))


_FORMATS: dict[str, type[QuietAccessLogger]] = {
    "combined": AccessLogger, "json": JsonAccessLogger, "off": QuietAccessLogger}


def access_logger_class(access_format: str, metrics: Metrics) -> type[AbstractAccessLogger]:
    """The access logger class for `log.access_format`, feeding `metrics` (aiohttp instantiates it)."""
    base = _FORMATS[access_format]
    return type(base.__name__, (base,), {"metrics": metrics})
