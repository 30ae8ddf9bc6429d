"""The web front end: the repository index at `/` and, under each repository, hgweb's URL space
(pages and hgweb's JSON style). router.py routes and checks permissions; each module below
contributes a COMMANDS table {url command name: handler(WebRequest)}.

To add web commands (raw-file, archive, feeds...): define `COMMANDS` in your module and list it in
COMMAND_TABLES. A name is what the URL says (`raw-file`, `atom-log`, `archive`); `json-X` and
`X?style=json` reach the handler of `X` with `wr.style == "json"`.
"""

from __future__ import annotations

from aiohttp import web

from ..kernel import CTX
from ..routing import Kind
from . import archive, feeds, pages, raw, router

__all__ = ["COMMAND_TABLES", "setup"]

COMMAND_TABLES = (
    pages.COMMANDS,     # summary, log, shortlog, graph, rev, file, diff, annotate, tags, bookmarks, branches
    raw.COMMANDS,       # raw-file, raw-rev
    archive.COMMANDS,   # archive
    feeds.COMMANDS,     # atom-log, rss-log
)


def setup(app: web.Application) -> None:
    app[CTX].register(Kind.INDEX, pages.index)
    router.setup(app, COMMAND_TABLES, pages.summary, pages.error_page)
