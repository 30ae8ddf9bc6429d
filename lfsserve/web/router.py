"""The web UI's router: hgweb's URL space under each repository, and the table of web commands.

routing.resolve() hands `{repo}/{webcmd}[/{args}]` here as Kind.WEB (and wire v1 hands a bare
`{repo}` as Kind.REPO_PAGE: the summary). The router authenticates, applies the read permission
exactly as a clone does (a repository the visitor may not read answers the same 404 as one that
does not exist, so private names do not leak), works out the style (`json-log` and
`log?style=json` are the JSON form of `log`), and calls the command's handler with a WebRequest.

Modules contribute commands as a `COMMANDS` table, `{url command name: handler}`, composed in
`lfsserve/web/__init__.py` (COMMAND_TABLES). A name is looked up as written in the URL first
(`raw-file`, `atom-log`, `archive`), then, for the json style, as the bare command (`log`) with
`wr.style == "json"`. Aliases hgweb keeps for old links (changeset, changelog, manifest,
filelog, filediff) map onto the pages that serve them.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web

from ..aio import run_blocking
from ..auth import AuthError, Permission, Principal, Unauthorized
from ..kernel import CTX, PRINCIPAL, ServerContext
from ..repos import how_to_create
from ..routing import WEB_STYLES, Kind, Target

__all__ = ["ALIASES", "PageHandler", "WebError", "WebRequest", "setup"]


class WebError(Exception):
    """A page cannot be served; `status` (4xx) and a message fit to show the visitor."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class WebRequest:
    """One web request, after routing and the permission check."""

    request: web.Request
    ctx: ServerContext
    principal: Principal
    repo: str        # repository path, validated by routing
    command: str     # the command as the handler table knows it ("log", "raw-file", "summary")
    style: str       # "" (HTML) or "json"; other styles are part of the command name
    args: list[str]  # decoded path segments after the command (a revision, then a file path)

    @property
    def json(self) -> bool:
        return self.style == "json"

    @property
    def base(self) -> str:
        """The server's external base URL (scheme://host[/prefix])."""
        return self.ctx.base_url(self.request)

    @property
    def repo_url(self) -> str:
        """The repository's URL path for links (`/{repo}`, with any base-url prefix)."""
        return urllib.parse.urlsplit(self.base).path.rstrip("/") + "/" + urllib.parse.quote(self.repo)

    def link(self, command: str, *parts: str, **query: str | int) -> str:
        """A link to another page of this repository: `link("file", node, "dir/ü.txt")`."""
        path = "/".join(urllib.parse.quote(p, safe="/") for p in (command, *parts) if p)
        q = urllib.parse.urlencode({k: v for k, v in query.items() if v not in (None, "")})
        return f"{self.repo_url}/{path}" + (f"?{q}" if q else "")


PageHandler = Callable[[WebRequest], Awaitable[web.StreamResponse]]
# What a 4xx/404 page looks like is the pages module's business; the router asks it.
ErrorPage = Callable[[web.Request, int, str, bool], web.StreamResponse]

# hgweb's older names for the same pages.
ALIASES = {"changeset": "rev", "changelog": "log", "manifest": "file", "filelog": "log",
           "filediff": "diff", "search": "log"}


def _split(rest: str) -> tuple[str, list[str]]:
    cmd, _, tail = rest.partition("/")
    args = tail.split("/") if tail else []
    return cmd, args


def setup(app: web.Application, tables: Iterable[Mapping[str, PageHandler]], summary: PageHandler,
          error_page: ErrorPage) -> None:
    """Register the web UI on the app's ServerContext: Kind.WEB (every `{repo}/{webcmd}` URL)
    and Kind.REPO_PAGE (a bare `{repo}`: `summary`, or shortlog in the json style, as hgweb)."""
    ctx = app[CTX]
    commands: dict[str, PageHandler] = {}
    for table in tables:
        for name, handler in table.items():
            if name in commands:
                raise RuntimeError(f"two handlers for the web command {name!r}")
            commands[name] = handler

    async def dispatch(request: web.Request, target: Target, rest: str) -> web.StreamResponse:
        cmd, args = _split(rest)
        style = request.query.get("style", "")
        if cmd not in commands:
            prefix, sep, bare = cmd.partition("-")
            if sep and prefix in WEB_STYLES:
                style, cmd = prefix, bare
            cmd = ALIASES.get(cmd, cmd)
        if style in ("raw", "atom", "rss") and f"{style}-{cmd}" in commands:
            cmd, style = f"{style}-{cmd}", ""
        handler = commands.get(cmd)
        json_style = style == "json"
        if request.method not in ("GET", "HEAD"):
            return error_page(request, 405, f"{request.method} is not allowed here: the web UI is read-only",
                              json_style)
        try:
            principal = await ctx.auth.authenticate(request.headers)
        except Unauthorized as exc:
            return _challenge(request, exc.message)
        except AuthError as exc:
            return error_page(request, exc.status, exc.message, json_style)
        request[PRINCIPAL] = principal
        if "login" in request.query:
            if not principal.authenticated:
                return _challenge(request, "log in to see the repositories you may read")
            raise web.HTTPSeeOther(request.path)
        if (ctx.auth.permission(principal, target.repo) < Permission.READ
                or not await run_blocking(ctx.repos.exists, target.repo)):
            # The same answer for "private" and "absent": a name alone reveals nothing.
            return error_page(request, 404, f"no repository at /{target.repo}"
                              + ("" if principal.authenticated else " (or you need to log in)") + ": "
                              + how_to_create(ctx.config.hg.create_on_push, target.repo), json_style)
        if handler is None:
            return error_page(request, 404, f"unknown web command {cmd[:60]!r}", json_style)
        wr = WebRequest(request, ctx, principal, target.repo, cmd, "json" if json_style else "", args)
        try:
            return await handler(wr)
        except WebError as exc:
            return error_page(request, exc.status, exc.message, json_style)

    async def web_handler(request: web.Request, target: Target) -> web.StreamResponse:
        return await dispatch(request, target, target.rest)

    async def repo_page(request: web.Request, target: Target) -> web.StreamResponse:
        # hgweb's default command is shortlog, which scripts reading `{repo}?style=json` rely on;
        # people get the summary.
        default = "shortlog" if request.query.get("style") == "json" else "summary"
        return await dispatch(request, target, default)

    commands.setdefault("summary", summary)
    ctx.register(Kind.WEB, web_handler)
    ctx.register(Kind.REPO_PAGE, repo_page)


def _challenge(request: web.Request, message: str) -> web.Response:
    ctx = request.app[CTX]
    return web.Response(status=401, text=message + "\n", headers=ctx.auth.challenge())
