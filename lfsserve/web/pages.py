"""The web front end: pages for browsers. `/` lists the repositories a client may read (plain
text, or HTML when asked for); a repository URL opened in a browser shows how to clone it.

Wire v1 hands it `{repo}` requests that carry no `cmd=` (Kind.REPO_PAGE). A fuller web UI grows
here, beside the protocol front ends, never inside them.
"""

from __future__ import annotations

import html

from aiohttp import web

from ..aio import run_blocking
from ..auth import AuthError, Permission, Unauthorized
from ..hg.error import HgError, RepoNotFound
from ..hg.node import NULLID
from ..kernel import CTX, PRINCIPAL
from ..repos import how_to_create
from ..routing import Kind, Target

__all__ = ["browse", "index", "setup"]

# What hg serve answers a wire command sent to `/` (no repository there): hg shows the message.
_MEDIA_01 = "application/mercurial-0.1"


def setup(app: web.Application) -> None:
    ctx = app[CTX]
    ctx.register(Kind.INDEX, index)
    ctx.register(Kind.REPO_PAGE, browse)


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body>
{body}
</body></html>
"""


async def browse(request: web.Request, target: Target) -> web.StreamResponse:
    """A repository URL opened in a browser: what it is and how to clone it."""
    ctx = request.app[CTX]
    try:
        principal = await ctx.auth.require(request.headers, target.repo, Permission.READ)
    except Unauthorized as exc:
        return web.Response(status=401, text=exc.message + "\n", headers=ctx.auth.challenge())
    except AuthError as exc:
        return web.Response(status=exc.status, text=exc.message + "\n")
    request[PRINCIPAL] = principal

    def info() -> tuple[int, list[bytes], bool]:
        with ctx.repos.open(target.repo) as repo:
            # An empty repository's only head is the null revision: it has no heads.
            heads = [h for h in repo.heads() if h != NULLID]
            return len(heads), sorted(repo.bookmarks()), repo.has_lfs

    try:
        nheads, marks, lfs = await run_blocking(info)
    except RepoNotFound:
        return web.Response(status=404, text=f"no repository at /{target.repo}: "
                                             f"{how_to_create(ctx.config.hg.create_on_push, target.repo)}\n")
    except HgError as exc:
        return web.Response(status=500, text=f"repository {target.repo} cannot be read: {exc.message}\n")
    url = f"{ctx.base_url(request)}/{target.repo}"
    esc = html.escape
    body = (f"<h1>{esc(target.repo)}</h1>\n<p>A Mercurial repository served by lfsserve.</p>\n"
            f"<pre>hg clone {esc(url)}</pre>\n"
            + ("<p>It is empty: push to it to fill it." if not nheads else
               f"<p>{nheads} head{'s' if nheads > 1 else ''}"
               + (f"; bookmarks: {esc(', '.join(m.decode('utf-8', 'replace') for m in marks))}" if marks else "")
               + ".")
            + (" Large files are stored with LFS (the server is its own <code>lfs.url</code>)." if lfs else "")
            + "</p>\n<p><a href=\"" + esc(ctx.base_url(request)) + "/\">all repositories</a></p>")
    return web.Response(text=_PAGE.format(title=esc(target.repo), body=body), content_type="text/html")


async def index(request: web.Request, target: Target) -> web.StreamResponse:
    """`/`: the repositories this client may read."""
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
    names = await run_blocking(lambda: list(ctx.repos.names()))
    readable = [n for n in names if ctx.auth.permission(principal, n) >= Permission.READ]
    base = ctx.base_url(request)
    # Nothing to list (a new server, or nothing this client may read): say so, and how to start.
    empty = ("No repositories you may read here" + ("" if principal.authenticated else " without logging in")
             + f". To add one: {how_to_create(ctx.config.hg.create_on_push, '')}.")
    if "text/html" not in request.headers.get("Accept", ""):
        # One clone URL a line, for scripts; the sentence only when there is none.
        return web.Response(text="".join(f"{base}/{n}\n" for n in readable) or empty + "\n")
    esc = html.escape
    items = "\n".join(f'<li><a href="{esc(base)}/{esc(n)}">{esc(n)}</a></li>' for n in readable)
    body = f"<h1>Repositories</h1>\n<ul>\n{items}\n</ul>" if readable else f"<p>{esc(empty)}</p>"
    return web.Response(text=_PAGE.format(title="lfsserve", body=body), content_type="text/html")
