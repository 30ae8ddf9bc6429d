"""The web UI's pages: hgweb's URL space under each repository, in HTML and in hgweb's JSON style.

`/` lists the repositories the visitor may read (HTML for browsers, one clone URL a line for
scripts, hgweb's JSON with `?style=json`). Under a repository: summary, log/shortlog (paging,
branch and keyword filters), graph, rev/{node}, file/{rev}/{path} (directory listings and file
views), log/{rev}/{path} (file history), tags, bookmarks, branches; annotate and diff pages use
the engine's annotate and diff (lfsserve.hg). Each page has a JSON form with hgweb's field names.

Every page reads the repository in the executor (model.py), renders from jinja2 templates with
autoescaping (all repository text is escaped), and bounds its work: logs page, files above
MAX_VIEW_SIZE are offered as downloads, highlighting stops at MAX_HIGHLIGHT_SIZE. A URL naming a
revision by its full node is immutable: it carries an ETag, Last-Modified and a long
Cache-Control, and a matching If-None-Match gets a 304.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import posixpath
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jinja2
from aiohttp import web
from markupsafe import Markup

from ..aio import run_blocking
from ..auth import ANONYMOUS, Permission, Unauthorized
from ..hg import annotate as annotatemod
from ..hg import diff
from ..hg.error import HgError, RepoNotFound
from ..hg.node import NULLREV
from ..hg.repository import Repository
from ..kernel import CTX, PRINCIPAL, ServerContext
from ..repos import engine_repo, how_to_create
from ..routing import Target
from . import archive as archivemod
from . import diffs, model, raw
from .hgrc import WebSettings, read_web_settings
from .router import PageHandler, WebError, WebRequest

__all__ = ["COMMANDS", "error_page", "index", "render", "summary", "web_settings"]

T = TypeVar("T")

# hgweb's defaults: `log` shows 10 changesets a page, `shortlog` and `graph` 60.
LOG_PAGE = {"log": 10, "shortlog": 60, "graph": 60}
MAX_PAGE = 500
MAX_VIEW_SIZE = 2 << 20        # bigger files: a download link, no inline view
MAX_HIGHLIGHT_SIZE = 512 << 10  # bigger files: shown without syntax highlighting
IMMUTABLE = "max-age=31536000, immutable"
# hgweb's archive types, in its order, and their file extensions
ARCHIVE_KINDS = {"zip": ".zip", "gz": ".tar.gz", "bz2": ".tar.bz2"}

_MEDIA_01 = "application/mercurial-0.1"
# The pages run no script at all: a policy that forbids any is a second wall behind escaping.
_HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
    autoescape=jinja2.select_autoescape(["html", "css"], default=True),
    trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
)


def _isodate(date: list) -> str:
    when, tz = date
    zone = datetime.timezone(datetime.timedelta(seconds=-tz))
    return datetime.datetime.fromtimestamp(when, zone).isoformat()


def _age(date: list) -> str:
    delta = datetime.datetime.now(datetime.UTC).timestamp() - date[0]
    if delta < 0:
        return "in the future"
    for unit, seconds in (("year", 31536000), ("month", 2592000), ("week", 604800), ("day", 86400),
                          ("hour", 3600), ("minute", 60)):
        if delta >= 2 * seconds or (unit in ("minute", "hour") and delta >= seconds):
            n = int(delta // seconds)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


def _filesize(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


_env.filters.update(
    isodate=_isodate, age=_age, filesize=_filesize,
    firstline=lambda s: s.strip().split("\n", 1)[0],
    person=lambda s: s.split("<", 1)[0].strip() or s,
    basename=posixpath.basename,
)


def render(template: str, **values: Any) -> str:
    return _env.get_template(template).render(**values)


def _json(value: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(text=json.dumps(value, indent=1, ensure_ascii=True) + "\n", status=status,
                        content_type="application/json", headers=headers)


def _page_values(wr: WebRequest, page: str, title: str) -> dict[str, Any]:
    return {"title": f"{title} · {wr.repo}", "home": wr.repo_url[:-len(urllib.parse.quote(wr.repo)) - 1],
            "repo": True, "repo_url": wr.repo_url, "repo_name": wr.repo, "page": page,
            "user": wr.principal.name if wr.principal.authenticated else "", "link": wr.link}


def _html(wr: WebRequest, template: str, page: str, title: str, headers: dict | None = None,
          **values: Any) -> web.Response:
    return web.Response(text=render(template, **_page_values(wr, page, title), **values),
                        content_type="text/html", headers={**_HTML_HEADERS, **(headers or {})})


def error_page(request: web.Request, status: int, message: str, json_style: bool) -> web.Response:
    """A 4xx answer: hgweb's JSON error shape for the json style, else a page saying why."""
    if json_style:
        return _json({"error": message}, status=status)
    reason = _REASONS.get(status, "Error")
    principal = request.get(PRINCIPAL)
    text = render("error.html", title=f"{status} {reason}", home=_home(request), repo=False, repo_url="",
                  repo_name="", page="", link=None, status=status, reason=reason, message=message,
                  user=principal.name if principal is not None and principal.authenticated else "")
    return web.Response(text=text, status=status, content_type="text/html", headers=_HTML_HEADERS)


_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Too Large"}


def web_settings(ctx: ServerContext, repo: str) -> WebSettings:
    """A repository's `[web]` settings over the server's defaults (blocking: run in the executor)."""
    c = ctx.config.web
    defaults = WebSettings(description=c.description, contact=c.contact, allow_archive=list(c.allow_archive))
    if not ctx.config.hg.repo_hgrc:  # the server reads no repository's hgrc at all
        return defaults
    return read_web_settings(ctx.repos.path_of(repo), defaults)


def _home(request: web.Request) -> str:
    return urllib.parse.urlsplit(request.app[CTX].base_url(request)).path.rstrip("/")


async def _with_repo(wr: WebRequest, fn: Callable[[Repository], T]) -> T:
    """Run `fn(repo)` in the executor with the repository open."""
    def work() -> T:
        with wr.ctx.repos.open(wr.repo) as served:
            return fn(engine_repo(served))
    try:
        return await run_blocking(work)
    except RepoNotFound:
        raise WebError(404, f"no repository at /{wr.repo}") from None
    except HgError as exc:
        raise WebError(404, exc.message) from None


def _immutable(wr: WebRequest, arg: str, node: str, date: list) -> dict[str, str] | None:
    """Caching headers for a URL that names its revision by full node (its content can never
    change); None for symbolic names (tip, branch, bookmark), which move."""
    if arg.lower() != node:
        return None
    public = wr.ctx.auth.permission(ANONYMOUS, wr.repo) >= Permission.READ
    # stable across processes and restarts (so every worker behind a balancer agrees)
    what = "\0".join([wr.command, wr.style, *wr.args, wr.request.query_string]).encode("utf-8", "surrogateescape")
    tag = f'"{node}-{hashlib.sha256(what).hexdigest()[:16]}"'
    return {"ETag": tag, "Cache-Control": ("public, " if public else "private, ") + IMMUTABLE,
            "Last-Modified": datetime.datetime.fromtimestamp(date[0], datetime.UTC)
            .strftime("%a, %d %b %Y %H:%M:%S GMT")}


def _not_modified(wr: WebRequest, headers: dict[str, str] | None) -> web.Response | None:
    if headers and wr.request.headers.get("If-None-Match") == headers["ETag"]:
        return web.Response(status=304, headers=headers)
    return None


def _rev_arg(wr: WebRequest, default: str = "tip") -> str:
    return wr.args[0] if wr.args and wr.args[0] else default


def _count(wr: WebRequest, default: int) -> int:
    raw = wr.request.query.get("revcount", "")
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not 1 <= int(raw) <= MAX_PAGE:
        raise WebError(400, f"revcount must be a number from 1 to {MAX_PAGE}")
    return int(raw)


def _offset(wr: WebRequest) -> int:
    raw = wr.request.query.get("skip", "0") or "0"
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise WebError(400, "skip must be a number")
    return int(raw)


def _strip(cs: dict) -> dict:
    """A changeset as hgweb's JSON has it (without our template-only `rev`)."""
    return {k: v for k, v in cs.items() if k != "rev"}


# -- the index -------------------------------------------------------------------------------------

async def index(request: web.Request, target: Target) -> web.StreamResponse:
    """`/`: the repositories this client may read (hidden ones left out), with their description
    and last change; `?q=` filters by name and description."""
    ctx = request.app[CTX]
    if "cmd" in request.query:
        message = "no repository at / (clone http://host/<repository>; the list is at /)"
        return web.Response(status=404, reason=message, body=b"0\n%s\n" % message.encode("utf-8"),
                            content_type=_MEDIA_01)
    try:
        principal = await ctx.auth.authenticate(request.headers)
    except Unauthorized as exc:
        return web.Response(status=401, text=exc.message + "\n", headers=ctx.auth.challenge())
    request[PRINCIPAL] = principal
    if "login" in request.query:
        if not principal.authenticated:
            return web.Response(status=401, text="log in to see the repositories you may read\n",
                                headers=ctx.auth.challenge())
        raise web.HTTPSeeOther(request.path)
    names = await run_blocking(lambda: list(ctx.repos.names()))
    readable = [n for n in names if ctx.auth.permission(principal, n) >= Permission.READ]
    base = ctx.base_url(request)
    empty = ("No repositories you may read here" + ("" if principal.authenticated else " without logging in")
             + f". To add one: {how_to_create(ctx.config.hg.create_on_push, '')}.")
    style = request.query.get("style", "")
    wants_html = "text/html" in request.headers.get("Accept", "")
    if style != "json" and not wants_html:
        # One clone URL a line, for scripts; the sentence only when there is none.
        return web.Response(text="".join(f"{base}/{n}\n" for n in readable) or empty + "\n")
    query = request.query.get("q", "").strip().lower()[:200]

    def entries() -> list[dict]:
        out = []
        for name in readable:
            settings = web_settings(ctx, name)
            if settings.hidden:
                continue
            last = None
            try:
                with ctx.repos.open(name) as served:
                    repo = engine_repo(served)
                    heads = repo.head_revs()
                    if heads:
                        cs = repo.changelog.read(max(heads))
                        last = [float(cs.time), cs.tz]
            except HgError:
                pass
            item = {"name": settings.name or name, "path": name, "description": settings.description,
                    "contact": settings.contact, "lastchange": last, "labels": settings.labels,
                    "url": f"{_home(request)}/{urllib.parse.quote(name)}"}
            if query and query not in (name + "\n" + settings.name + "\n" + settings.description).lower():
                continue
            out.append(item)
        return out

    items = await run_blocking(entries)
    if style == "json":
        # hgwebdir's names are the repositories' paths (`[web] name` titles pages only)
        return _json({"entries": [{"name": e["path"], "description": e["description"], "contact": e["contact"],
                                   "lastchange": e["lastchange"] or [0.0, 0], "labels": e["labels"]}
                                  for e in items]})
    text = render("index.html", title="Repositories · lfsserve", home=_home(request), repo=False, repo_url="",
                  repo_name="", page="index", link=None, entries=items, query=query,
                  empty=empty if not readable else "No repository matches.",
                  user=principal.name if principal.authenticated else "")
    return web.Response(text=text, content_type="text/html", headers=_HTML_HEADERS)


# -- summary ---------------------------------------------------------------------------------------

async def summary(wr: WebRequest) -> web.StreamResponse:
    settings = await run_blocking(web_settings, wr.ctx, wr.repo)
    kinds = await run_blocking(lambda: [k for k in ARCHIVE_KINDS if archivemod.archive_allowed(wr.ctx, wr.repo, k)])

    def read(repo: Repository) -> dict:
        names = model.Names.read(repo)
        tip = repo._visible_tip()
        revs, _ = model.log_revs(repo, len(repo.changelog) - 1, 10) if tip != NULLREV else ([], False)
        cl = repo.changelog

        def dated(node: bytes) -> list:
            cs = cl.read(node)
            return [float(cs.time), cs.tz]
        return {
            "node": cl.node(tip).hex(),
            "lastchange": model.changeset(repo, tip, names)["date"],
            "bookmarks": [{"bookmark": n, "node": node.hex(), "date": dated(node)} for n, node in names.bookmark_list],
            "branches": [{k: v for k, v in b.items() if k != "rev"} for b in model.branches(repo)],
            "shortlog": [model.changeset(repo, r, names) for r in revs],
            "tags": [{"tag": n, "node": node.hex(), "date": dated(node)} for n, node in names.tag_list],
            "lfs": repo.has_lfs,
        }

    data = await _with_repo(wr, read)
    if wr.json:
        return _json({"node": data["node"], "lastchange": data["lastchange"], "bookmarks": data["bookmarks"],
                      "branches": data["branches"], "shortlog": [_strip(c) for c in data["shortlog"]],
                      "tags": data["tags"], "labels": settings.labels,
                      # hgweb offers the summary's archives as of `tip`
                      "archives": [{"node": "tip", "extension": ARCHIVE_KINDS[k], "type": k,
                                    "url": f"{wr.base}/{wr.repo}/archive/tip{ARCHIVE_KINDS[k]}"}
                                   for k in kinds]})
    base = wr.base
    ssh_base = wr.ctx.config.web.ssh_clone_base.rstrip("/")
    clone_ssh = f"{ssh_base}/{wr.repo}" if ssh_base else ""
    return _html(wr, "summary.html", "summary", "Summary", description=settings.description,
                 contact=settings.contact, lastchange=data["lastchange"] if data["shortlog"] else None,
                 lfs=data["lfs"], clone_http=f"{base}/{wr.repo}", clone_ssh=clone_ssh,
                 shortlog=data["shortlog"], bookmarks=data["bookmarks"], branches=data["branches"],
                 tags=data["tags"],
                 archives=[(ARCHIVE_KINDS[k], wr.link("archive", "tip" + ARCHIVE_KINDS[k])) for k in kinds]
                 if data["shortlog"] else [])


# -- logs ------------------------------------------------------------------------------------------

async def log(wr: WebRequest) -> web.StreamResponse:
    """log / shortlog (and search: `?rev=words`), and with a path the file's history."""
    page = "shortlog" if wr.command in ("shortlog", "search") else "log"
    if len(wr.args) > 1:
        return await file_log(wr)
    count = _count(wr, LOG_PAGE[page])
    skip = _offset(wr)
    keyword = wr.request.query.get("rev", "").strip()[:200]
    branch = wr.request.query.get("branch", "")[:200]
    rev_arg = _rev_arg(wr)

    def read(repo: Repository) -> dict:
        names = model.Names.read(repo)
        start = model.resolve_rev(repo, rev_arg) if not keyword else repo._visible_tip()
        query_rev = None
        if keyword:
            try:
                query_rev = model.resolve_rev(repo, keyword)
            except WebError:
                query_rev = None
        if query_rev is not None and query_rev != NULLREV:
            revs, more = [query_rev], False
        elif start == NULLREV:
            revs, more = [], False
        else:
            revs, more = model.log_revs(repo, start, count, branch=branch, keyword=keyword, skip=skip)
        return {"tip": repo.changelog.node(repo._visible_tip()).hex(),
                "entries": [model.changeset(repo, r, names) for r in revs], "more": more,
                "branch_names": sorted(b["branch"] for b in model.branches(repo))}

    data = await _with_repo(wr, read)
    if wr.json:
        if keyword:
            return _json({"node": data["tip"], "query": keyword, "entries": [_strip(c) for c in data["entries"]]})
        return _json({"node": data["tip"], "changeset_count": len(data["entries"]),
                      "changesets": [_strip(c) for c in data["entries"]]})
    extra = {"rev": keyword, "branch": branch, "revcount": count if "revcount" in wr.request.query else ""}
    older = wr.link(page, *wr.args[:1], skip=skip + count, **extra) if data["more"] else ""
    newer = wr.link(page, *wr.args[:1], skip=max(0, skip - count) or "", **extra) if skip else ""
    heading = "Log" + (f" of branch {branch}" if branch else "") + (f" matching “{keyword}”" if keyword else "")
    return _html(wr, "log.html", "shortlog", heading, heading=heading, entries=data["entries"], older=older,
                 newer=newer, keyword=keyword, branch=branch, branch_names=data["branch_names"], path="")


async def file_log(wr: WebRequest) -> web.StreamResponse:
    """log/{rev}/{path}: the changesets that changed a file, newest first."""
    rev_arg = _rev_arg(wr)
    path = model.parse_path(wr.args[1:])
    count = _count(wr, LOG_PAGE["shortlog"])

    def read(repo: Repository) -> dict:
        names = model.Names.read(repo)
        rev = model.resolve_rev(repo, rev_arg)
        found = model.file_revs(repo, rev, path, count) if rev != NULLREV and path else None
        if found is None:
            raise WebError(404, f"no file {path!r} in the history of {rev_arg}")
        revs, more = found
        cl = repo.changelog
        entries = [dict(model.changeset(repo, r, names), parents=[cl.node(p).hex() for p in fparents])
                   for r, fparents in revs]
        return {"entries": entries, "more": more}

    data = await _with_repo(wr, read)
    if wr.json:
        return _json({"entries": [_strip(c) for c in data["entries"]]})
    heading = f"History of {path}"
    return _html(wr, "log.html", "shortlog", heading, heading=heading, entries=data["entries"], older="",
                 newer="", keyword="", branch="", branch_names=[], path=path)


# -- graph -----------------------------------------------------------------------------------------

_COLORS = ["#0969da", "#8250df", "#1a7f37", "#bf8700", "#cf222e", "#0a7ea4", "#953800", "#6e7781"]
_LANE = 14
_ROW = 34


def _svg(row: dict) -> Markup:
    """One graph row as inline SVG: lines from this row's lanes to the next row's, and the dot."""
    width = row["width"] * _LANE + 4
    parts = [f'<svg width="{width}" height="{_ROW}" viewBox="0 0 {width} {_ROW}" aria-hidden="true" focusable="false">']
    x = lambda c: c * _LANE + _LANE // 2 + 2  # noqa: E731 - a tiny local formula
    mid = _ROW // 2
    for a, b, color in row["edges"]:
        c = _COLORS[color % len(_COLORS)]
        parts.append(f'<path d="M{x(a)} {mid} C{x(a)} {_ROW} {x(b)} {mid} {x(b)} {_ROW}" fill="none" '
                     f'stroke="{c}" stroke-width="2" />')
    for _, b, color in row.get("incoming", []):
        c = _COLORS[color % len(_COLORS)]
        parts.append(f'<line x1="{x(b)}" y1="0" x2="{x(b)}" y2="{mid}" stroke="{c}" stroke-width="2" />')
    c = _COLORS[row["color"] % len(_COLORS)]
    parts.append(f'<circle cx="{x(row["col"])}" cy="{mid}" r="4.5" fill="{c}" stroke="var(--bg)" stroke-width="2" />')
    parts.append("</svg>")
    return Markup("".join(parts))


async def graph(wr: WebRequest) -> web.StreamResponse:
    count = _count(wr, LOG_PAGE["graph"])
    rev_arg = _rev_arg(wr)

    def read(repo: Repository) -> dict:
        names = model.Names.read(repo)
        start = model.resolve_rev(repo, rev_arg)
        revs, more = model.log_revs(repo, start, count) if start != NULLREV else ([], False)
        rows = list(model.graph_rows(repo, revs))
        return {"tip": repo.changelog.node(repo._visible_tip()).hex(), "more": more,
                "rows": [(row, model.changeset(repo, row["rev"], names)) for row in rows],
                "next": revs[-1] - 1 if more and revs else None}

    data = await _with_repo(wr, read)
    if wr.json:
        out = []
        for i, (row, cs) in enumerate(data["rows"]):
            item = _strip(cs)
            item.update(col=row["col"], row=i, color=row["color"],
                        edges=[{"col": a, "nextcol": b, "color": c, "width": -1, "bcolor": ""}
                               for a, b, c in row["edges"]])
            out.append(item)
        return _json({"node": data["tip"], "changeset_count": len(out), "changesets": out})
    # each row also draws the top half of the lines arriving from the row above
    rows = []
    prev = None
    for row, cs in data["rows"]:
        row = dict(row, incoming=prev["edges"] if prev else [])
        rows.append({"svg": _svg(row), "cs": cs})
        prev = row
    older = wr.link("graph", str(data["next"]), revcount=count if "revcount" in wr.request.query else "") \
        if data["next"] is not None and data["next"] >= 0 else ""
    return _html(wr, "graph.html", "graph", "Graph", rows=rows, older=older)


# -- names -----------------------------------------------------------------------------------------

async def names_page(wr: WebRequest) -> web.StreamResponse:
    kind = wr.command

    def read(repo: Repository) -> dict:
        cl = repo.changelog
        tip = cl.node(repo._visible_tip()).hex()
        if kind == "branches":
            return {"tip": tip, "entries": model.branches(repo)}
        names = model.Names.read(repo)
        pairs = names.tag_list if kind == "tags" else names.bookmark_list
        out = []
        for name, node in pairs:
            cs = cl.read(node)
            out.append({"name": name, "node": node.hex(), "date": [float(cs.time), cs.tz]})
        return {"tip": tip, "entries": out}

    data = await _with_repo(wr, read)
    if wr.json:
        if kind == "branches":
            return _json({"branches": [{k: v for k, v in b.items() if k != "rev"} for b in data["entries"]]})
        key = "tag" if kind == "tags" else "bookmark"
        return _json({"node": data["tip"], kind: [{key: e["name"], "node": e["node"], "date": e["date"]}
                                                  for e in data["entries"]]})
    entries = data["entries"]
    if kind == "branches":
        entries = [dict(b, name=b["branch"]) for b in entries]
    return _html(wr, "names.html", kind, kind.capitalize(), heading=kind.capitalize(), entries=entries)


# -- changeset -------------------------------------------------------------------------------------

async def rev(wr: WebRequest) -> web.StreamResponse:
    if not wr.args or not wr.args[0]:
        raise WebError(400, "which changeset? rev/{node}")
    rev_arg = wr.args[0]
    sidebyside = wr.request.query.get("sidebyside", "") == "1"

    def read(repo: Repository, lfs: diff.LfsReader | None) -> dict:
        names = model.Names.read(repo)
        r = model.resolve_changed_rev(repo, rev_arg)
        cs = model.changeset(repo, r, names)
        cl = repo.changelog
        parents = [model.changeset(repo, p, names) for p in repo.parents_list[r] if p != NULLREV]
        kids = [model.changeset(repo, cl.rev(n), names) for n in model.children(repo, r)]
        files = model.files_status(repo, r)
        fds = diff.changeset_file_diffs(repo, cl.node(r), limits=diffs.PAGE_LIMITS, lfs=lfs)
        return {"cs": cs, "parents": parents, "children": kids, "files": files, "diff": diffs.page_diff(fds)}

    data = await _with_repo_lfs(wr, read)
    cs = data["cs"]
    headers = _immutable(wr, rev_arg, cs["node"], cs["date"])
    if (nm := _not_modified(wr, headers)) is not None:
        return nm
    if wr.json:
        out = _strip(cs)
        phase = out.pop("phase")
        out.pop("parents")
        out.update(parents=[p["node"] for p in data["parents"]], children=[c["node"] for c in data["children"]],
                   files=[{"file": f["file"], "status": f["status"]} for f in data["files"]],
                   diff=data["diff"].json_blocks(), phase=phase)
        return _json(out, headers=headers)
    return _html(wr, "rev.html", "shortlog", f"Changeset {cs['node'][:12]}", headers=headers, cs=cs,
                 parents=data["parents"], children=data["children"], files=data["files"],
                 diffhtml=data["diff"].html(sidebyside, lambda p: wr.link("file", cs["node"], p)),
                 diff_notice=data["diff"].notice, sidebyside=sidebyside, raw_rev=True)


# -- files -----------------------------------------------------------------------------------------

def _is_binary(data: bytes) -> bool:
    return b"\0" in data[:8192]


def _highlight(path: str, data: bytes) -> list[Markup] | None:
    """The lines of a text file, highlighted by pygments when it knows the language."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_for_filename
    from pygments.util import ClassNotFound

    content = data.decode("utf-8", "replace")
    if len(data) <= MAX_HIGHLIGHT_SIZE:
        try:
            lexer = get_lexer_for_filename(posixpath.basename(path), stripnl=False, ensurenl=False)
        except ClassNotFound:
            lexer = None
        if lexer is not None:
            html = highlight(content, lexer, HtmlFormatter(nowrap=True))
            # pygments closes and reopens spans at line ends, so each line stands alone
            count = content.count("\n") + (0 if content.endswith("\n") else 1)
            return [Markup(line) for line in html.split("\n")[:count]]
    lines = content.split("\n")
    if content.endswith("\n"):
        lines.pop()
    return [Markup.escape(line) for line in lines]


async def file(wr: WebRequest) -> web.StreamResponse:
    """file/{rev}/{path}: a directory listing or a file view."""
    rev_arg = _rev_arg(wr)
    path = model.parse_path(wr.args[1:])

    def read(repo: Repository) -> dict:
        names = model.Names.read(repo)
        r = model.resolve_rev(repo, rev_arg)
        cs = model.changeset(repo, r, names)
        fd = model.file_data(repo, r, path, MAX_VIEW_SIZE) if path else None
        if fd is not None:
            last = model.changeset(repo, fd.linkrev, names)
            return {"cs": cs, "file": fd, "last": last,
                    "fparents": _file_parents(repo, r, fd)}
        listing = model.dir_listing(repo, r, path)
        if listing is None:
            raise WebError(404, f"no file or directory {path!r} at revision {rev_arg}")
        dirs, files = listing
        for f in files:
            f["last"] = model.changeset(repo, f["linkrev"], names)
        return {"cs": cs, "dirs": dirs, "files": files}

    data = await _with_repo(wr, read)
    cs = data["cs"]
    headers = _immutable(wr, rev_arg, cs["node"], cs["date"])
    if (nm := _not_modified(wr, headers)) is not None:
        return nm
    if "file" not in data:
        if wr.json:
            return _json({"node": cs["node"], "abspath": "/" + (path + "/" if path else ""),
                          "directories": [{k: d[k] for k in ("abspath", "basename", "emptydirs")}
                                          for d in data["dirs"]],
                          "files": [{"abspath": f["abspath"], "basename": f["basename"], "date": cs["date"],
                                     "size": f["size"], "flags": f["flags"]} for f in data["files"]],
                          "bookmarks": cs["bookmarks"], "tags": cs["tags"]}, headers=headers)
        up = wr.link("file", cs["node"], posixpath.dirname(path)) if path else ""
        return _html(wr, "files.html", "file", path or "Files", headers=headers, cs=cs, path=path,
                     directories=data["dirs"], files=data["files"], up=up)
    fd: model.FileData = data["file"]
    lines = None
    notice = ""
    if fd.lfs is not None:
        notice = ("This file is stored with Git LFS; the repository holds only a pointer to its content "
                  f"({_filesize(fd.lfs[1])}).")
        content = await _lfs_preview(wr, fd)
        if content is not None and not _is_binary(content):
            lines = _highlight(path, content)
            notice = ""
    elif fd.data is None:
        notice = f"This file is too large to show here ({_filesize(fd.size)})."
    elif _is_binary(fd.data):
        notice = f"This is a binary file ({_filesize(fd.size)})."
    else:
        lines = _highlight(path, fd.data)
    if wr.json:
        out = _strip(cs)
        out.pop("parents")
        phase = out.pop("phase")
        text_lines = []
        if fd.data is not None:
            text_lines = [{"line": ln} for ln in fd.data.decode("utf-8", "replace").splitlines(True)]
        elif fd.lfs is not None:
            text_lines = []
        out = {"node": out["node"], "path": path, "date": out["date"], "desc": out["desc"], "branch": out["branch"],
               "bookmarks": out["bookmarks"], "tags": out["tags"], "user": out["user"],
               "parents": data["fparents"], "phase": phase, "lines": text_lines}
        return _json(out, headers=headers)
    return _html(wr, "file.html", "file", path, headers=headers, cs=cs, path=path, size=fd.size, lfs=fd.lfs,
                 flags=fd.flags, last=data["last"], lines=lines, notice=notice,
                 parent_dir=posixpath.dirname(path))


def _file_parents(repo: Repository, rev: int, fd: model.FileData) -> list[str]:
    """hgweb's `parents` of a file view: the changeset that introduced this file revision when
    the view is at a later changeset, else the changesets of the file revision's parents."""
    cl = repo.changelog
    if fd.linkrev != rev:
        return [cl.node(fd.linkrev).hex()]
    return [cl.node(r).hex() for r in model.file_parent_links(repo, repo.file(fd.path.encode()), fd.filerev)]


async def _lfs_preview(wr: WebRequest, fd: model.FileData) -> bytes | None:
    """An LFS file's real content for the view, when it is small and the blob store has it."""
    if fd.lfs is None or fd.lfs[1] > MAX_VIEW_SIZE:
        return None
    return await raw.lfs_preview(wr, fd.lfs[0], fd.lfs[1])


async def _with_repo_lfs(wr: WebRequest, fn: Callable[[Repository, diff.LfsReader | None], T]) -> T:
    """Run `fn(repo, lfs)` for a page that diffs files: in a repository with LFS files, on
    raw.blob_workers() with a reader of small blobs (the diff then shows their content, not their
    pointers); elsewhere on the shared executor, without one."""
    svc = raw.lfs_service(wr.ctx)

    def has_lfs() -> bool:
        with wr.ctx.repos.open(wr.repo) as served:
            return served.has_lfs
    if svc is None or not await run_blocking(has_lfs):
        return await _with_repo(wr, lambda repo: fn(repo, None))
    reader = raw.LfsBlobReader(asyncio.get_running_loop(), svc, wr.repo, MAX_VIEW_SIZE).read_sync
    return await raw.with_repo(wr, lambda repo: fn(repo, reader), reads_blobs=True)


def _file_children(repo: Repository, fd: model.FileData) -> list[str]:
    """The changesets of a file revision's children (hgweb's `children` of a file page)."""
    fl = repo.file(fd.path.encode())
    cl = repo.changelog
    return [cl.node(fl.linkrev(r)).hex() for r in range(fd.filerev + 1, len(fl)) if fd.filerev in fl.parentrevs(r)]


async def file_diff(wr: WebRequest) -> web.StreamResponse:
    """diff/{rev}/{path}: what changeset {rev} did to one file."""
    rev_arg = _rev_arg(wr, "")
    if not rev_arg or len(wr.args) < 2:
        raise WebError(400, "which file? diff/{rev}/{path}")
    path = model.parse_path(wr.args[1:])
    if not path:
        raise WebError(400, "which file? diff/{rev}/{path}")
    sidebyside = wr.request.query.get("sidebyside", "") == "1"

    def read(repo: Repository, lfs: diff.LfsReader | None) -> dict:
        names = model.Names.read(repo)
        r = model.resolve_changed_rev(repo, rev_arg)
        cl = repo.changelog
        cs = model.changeset(repo, r, names)
        fd = model.file_data(repo, r, path, 0)
        p1 = repo.parents_list[r][0]
        if fd is None:
            parent_has = p1 != NULLREV and model.file_data(repo, p1, path, 0) is not None
            if not parent_has:
                raise WebError(404, f"no file {path!r} in changeset {rev_arg} or its parent")
            parents, kids = [], []
        else:
            parents = [cl.node(x).hex() for x in ([fd.linkrev] if fd.linkrev != r else
                                                  model.file_parent_links(repo, repo.file(path.encode()), fd.filerev))]
            kids = _file_children(repo, fd)
        one = diff.file_diff(repo, cl.node(p1), cl.node(r), path.encode(), limits=diffs.PAGE_LIMITS, lfs=lfs)
        return {"cs": cs, "parents": parents, "children": kids, "diff": diffs.page_diff([one] if one else [])}

    data = await _with_repo_lfs(wr, read)
    cs = data["cs"]
    headers = _immutable(wr, rev_arg, cs["node"], cs["date"])
    if (nm := _not_modified(wr, headers)) is not None:
        return nm
    if wr.json:
        return _json({"path": path, "node": cs["node"], "date": cs["date"], "desc": cs["desc"],
                      "author": cs["user"], "parents": data["parents"], "children": data["children"],
                      "diff": data["diff"].json_blocks()}, headers=headers)
    return _html(wr, "diff.html", "file", f"Diff of {path}", headers=headers, cs=cs, path=path,
                 diffhtml=data["diff"].html(sidebyside, lambda p: wr.link("file", cs["node"], p)),
                 diff_notice=data["diff"].notice, sidebyside=sidebyside, empty=not data["diff"].blocks)


ANNOTATE_LIMITS = annotatemod.AnnotateLimits(max_file_revisions=5000, max_bytes=128 << 20, max_file_bytes=2 << 20)


async def annotate(wr: WebRequest) -> web.StreamResponse:
    """annotate/{rev}/{path}: who last changed each line."""
    rev_arg = _rev_arg(wr, "")
    path = model.parse_path(wr.args[1:])
    if not rev_arg or not path:
        raise WebError(400, "which file? annotate/{rev}/{path}")

    def read(repo: Repository) -> dict:
        names = model.Names.read(repo)
        r = model.resolve_rev(repo, rev_arg)
        fd = model.file_data(repo, r, path, 0)
        if fd is None:
            raise WebError(404, f"no file {path!r} at revision {rev_arg}")
        if fd.lfs is not None:
            return {"lfs": True, "cs": model.changeset(repo, r, names), "fd": fd}
        cl = repo.changelog
        try:
            result = annotatemod.annotate(repo, cl.node(r), path.encode(), limits=ANNOTATE_LIMITS)
        except annotatemod.AnnotateTooExpensive as exc:
            raise WebError(413, f"{exc.message}: too expensive to show here") from None
        infos: dict[int, dict] = {}
        lines = []
        for i, line in enumerate(result.lines, 1):
            if line.rev not in infos:
                infos[line.rev] = model.changeset(repo, line.rev, names, with_parents=False)
            lines.append((i, line, infos[line.rev]))
        parents = [cl.node(x).hex() for x in ([fd.linkrev] if fd.linkrev != r else
                                              model.file_parent_links(repo, repo.file(path.encode()), fd.filerev))]
        return {"lfs": False, "cs": model.changeset(repo, r, names), "fd": fd, "binary": result.binary,
                "lines": lines, "parents": parents, "children": _file_children(repo, fd)}

    data = await _with_repo(wr, read)
    cs = data["cs"]
    fd = data["fd"]
    headers = _immutable(wr, rev_arg, cs["node"], cs["date"])
    if (nm := _not_modified(wr, headers)) is not None:
        return nm
    if wr.json:
        if data["lfs"]:
            raise WebError(404, f"{path} is stored with Git LFS: there is nothing to annotate")
        return _json({
            "abspath": path, "node": cs["node"], "author": cs["user"], "date": cs["date"], "desc": cs["desc"],
            "parents": data["parents"], "children": data["children"], "permissions": fd.flags,
            "annotate": [{"node": info["node"], "author": info["user"], "desc": info["desc"],
                          "abspath": model.text(line.path), "targetline": line.lineno,
                          "line": model.text(line.text), "lineno": i, "revdate": info["date"]}
                         for i, line, info in data["lines"]]}, headers=headers)
    notice = ""
    if data["lfs"]:
        notice = "This file is stored with Git LFS: its history is the history of its pointer, nothing to annotate."
    elif data["binary"]:
        notice = "This is a binary file: there are no lines to annotate."
    rows = await run_blocking(_annotate_rows, wr, data.get("lines", [])) if data.get("lines") else None
    return _html(wr, "annotate.html", "file", f"Annotate {path}", headers=headers, cs=cs, path=path,
                 rows=rows, notice=notice)


def _annotate_rows(wr: WebRequest, lines: list[tuple[int, annotatemod.AnnotatedLine, dict]]) -> Markup:
    """The table rows of an annotate page, built here rather than in the template: thousands of
    rows through jinja's attribute lookups cost more than annotating the file, and this runs in
    the executor, off the event loop."""
    out = []
    previous = None
    esc = Markup.escape
    for i, line, info in lines:
        first = info["node"] != previous
        who = ""
        if first:
            title = esc(f"{info['user']}: {info['desc'].strip().split(chr(10), 1)[0]}")
            href = esc(wr.link("annotate", info["node"], model.text(line.path)))
            person = info["user"].split("<", 1)[0].strip() or info["user"]
            who = (f'<a href="{href}#l{line.lineno}" title="{title}">{info["rev"]}:{info["node"][:8]}</a> '
                   f'<span class="muted">{esc(person)}</span>')
        cls = ' class="first"' if first and previous is not None else ""
        text = esc(line.text.decode("utf-8", "replace").rstrip("\n"))
        out.append(f'<tr id="l{i}"{cls}>\n  <td class="who">{who}</td>\n'
                   f'  <td class="ln"><a href="#l{i}">{i}</a></td>\n  <td class="code">{text}</td>\n</tr>\n')
        previous = info["node"]
    return Markup("".join(out))


COMMANDS: dict[str, PageHandler] = {
    "summary": summary,
    "log": log,
    "shortlog": log,
    "search": log,
    "graph": graph,
    "tags": names_page,
    "bookmarks": names_page,
    "branches": names_page,
    "rev": rev,
    "file": file,
    "diff": file_diff,
    "annotate": annotate,
}

