"""`atom-log` and `rss-log`: the latest changesets of a repository as Atom 1.0 and RSS 2.0 feeds,
shaped as hgweb's (titles `[branch] first line`, links to rev/{short node}, entries newest first).

`atom-log/{rev}` starts the feed at a revision; `?revcount=` sets how many entries (hgweb's
web.maxchanges, 10 by default). All repository text is escaped, and characters XML cannot carry
at all (control characters other than tab/newline) are dropped, so any feed parses.
"""

from __future__ import annotations

import datetime
import re
import urllib.parse
from email.utils import format_datetime
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

from ..hg.repository import Repository
from . import model
from .raw import cache_headers, with_repo
from .router import PageHandler, WebError, WebRequest

__all__ = ["COMMANDS", "atom_log", "rss_log"]

DEFAULT_ENTRIES = 10
MAX_ENTRIES = 100
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_EMAIL = re.compile(r"<([^<>]*)>")


def _x(value: str) -> str:
    return escape(_NOT_XML.sub("", value))


def _person(user: str) -> tuple[str, str]:
    """(name, email) of an hg user string `Name <email>` (hgweb's person/email filters)."""
    m = _EMAIL.search(user)
    email = m.group(1) if m else (user if "@" in user else "")
    name = user[:m.start()].strip() if m else user
    if not name:
        name = email.split("@", 1)[0] if email else user
    return name, email


async def _entries(wr: WebRequest) -> tuple[dict, list[dict]]:
    raw = wr.request.query.get("revcount", "")
    if raw and (not raw.isdigit() or not 1 <= int(raw) <= MAX_ENTRIES):
        raise WebError(400, f"revcount must be a number from 1 to {MAX_ENTRIES}")
    count = int(raw) if raw else DEFAULT_ENTRIES
    rev_arg = wr.args[0] if wr.args and wr.args[0] else "tip"
    if len(wr.args) > 1:
        raise WebError(404, "feeds of a file's history are not supported: atom-log[/{rev}]")

    def read(repo: Repository) -> tuple[dict, list[dict]]:
        names = model.Names.read(repo)
        start = model.resolve_rev(repo, rev_arg)
        revs, _ = model.log_revs(repo, start, count) if start >= 0 else ([], False)
        return (model.changeset(repo, start, names, with_parents=False),
                [model.changeset(repo, r, names, with_parents=False) for r in revs])

    return await with_repo(wr, read)


def _url(wr: WebRequest) -> str:
    """The repository's absolute URL, with a trailing slash."""
    return f"{wr.base.rstrip('/')}/{urllib.parse.quote(wr.repo)}/"


def _when(date: list) -> datetime.datetime:
    tz = datetime.timezone(datetime.timedelta(seconds=-date[1]))
    return datetime.datetime.fromtimestamp(date[0], tz)


def _title(cs: dict) -> str:
    first = cs["desc"].strip().split("\n", 1)[0].strip()
    return f"[{cs['branch']}] {first}"


async def atom_log(wr: WebRequest) -> web.StreamResponse:
    top, entries = await _entries(wr)
    url = _url(wr)
    out = ['<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom">\n',
           f" <id>{_x(url)}</id>\n",
           f' <link rel="self" href={quoteattr(url + "atom-log")}/>\n',
           f' <link rel="alternate" href={quoteattr(url)}/>\n',
           f" <title>{_x(wr.repo)} Changelog</title>\n"]
    if entries:
        out.append(f" <updated>{_when(entries[0]['date']).isoformat()}</updated>\n")
    for cs in entries:
        name, email = _person(cs["user"])
        link = url + "rev/" + cs["node"][:12]
        when = _when(cs["date"]).isoformat()
        out.append(
            " <entry>\n"
            f"  <title>{_x(_title(cs))}</title>\n"
            f"  <id>{_x(url)}#changeset-{cs['node']}</id>\n"
            f"  <link href={quoteattr(link)}/>\n"
            f"  <author>\n   <name>{_x(name)}</name>\n   <email>{_x(email)}</email>\n  </author>\n"
            f"  <updated>{when}</updated>\n  <published>{when}</published>\n"
            f'  <content type="text">{_x(cs["desc"])}</content>\n'
            " </entry>\n")
    out.append("</feed>\n")
    headers = cache_headers(wr, wr.args[0] if wr.args else "", top["node"])
    return web.Response(body="".join(out).encode("utf-8"), headers=headers,
                        content_type="application/atom+xml", charset="utf-8")


async def rss_log(wr: WebRequest) -> web.StreamResponse:
    top, entries = await _entries(wr)
    url = _url(wr)
    out = ['<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0">\n <channel>\n',
           f"  <link>{_x(url)}</link>\n  <language>en-us</language>\n",
           f"  <title>{_x(wr.repo)} Changelog</title>\n",
           f"  <description>{_x(wr.repo)} Changelog</description>\n"]
    for cs in entries:
        link = url + "rev/" + cs["node"][:12]
        out.append(
            "  <item>\n"
            f"   <title>{_x(_title(cs))}</title>\n"
            f'   <guid isPermaLink="true">{_x(link)}</guid>\n'
            f"   <link>{_x(link)}</link>\n"
            f"   <description>{_x(cs['desc'])}</description>\n"
            f"   <author>{_x(cs['user'])}</author>\n"
            f"   <pubDate>{format_datetime(_when(cs['date']))}</pubDate>\n"
            "  </item>\n")
    out.append(" </channel>\n</rss>\n")
    headers = cache_headers(wr, wr.args[0] if wr.args else "", top["node"])
    return web.Response(body="".join(out).encode("utf-8"), headers=headers,
                        content_type="application/rss+xml", charset="utf-8")


COMMANDS: dict[str, PageHandler] = {"atom-log": atom_log, "rss-log": rss_log}
