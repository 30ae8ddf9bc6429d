"""URL layout: which front door a request path belongs to, and which repository it names.

One server hosts many repositories; a repository path may contain "/". The front doors are told
apart by suffix, so every repository gets all of them:

    {repo}?cmd=NAME                                   Mercurial wire protocol v1
    {repo}                                            (no cmd) a short page with the clone URL
    {repo}/api[/exp-http-v2-0003/{ro|rw}/{command}]   Mercurial wire protocol v2
    {repo}/.git/info/lfs/objects/batch                Git LFS batch (hg's default lfs.url)
    {repo}.git/info/lfs/objects/batch                 Git LFS batch (git-lfs's default for a remote)
    {prefix}/objects/batch                            Git LFS batch (lfs.url = http://host/{prefix})
    ... and the same three LFS endpoints + /locks[/verify|/{id}/unlock]   Git LFS locking
    {repo}/.hg/lfs/objects/{oid}                      basic transfer: PUT / GET (hg serve's layout)
    {repo}/.hg/lfs/verify                             basic transfer: verify action
    {repo}/{webcmd}[/{args}]                          the web UI, in hgweb's URL space (log, rev/X,
                                                      file/REV/PATH, json-log, raw-file/..., ...)

A web command is the first segment (after at least one repository segment) that names one of
hgweb's commands (WEB_COMMANDS, optionally with a `json-`/`raw-`/`atom-`/`rss-` style prefix); what
follows it (revisions, file paths, which may be non-ASCII or start with a dot) is the web front
end's to check; it is looked for before the bare LFS (`{prefix}/objects/batch`, `/locks`) and v2
(`/api`) suffixes, which a file path may end with. A repository whose path has such a segment is
still cloned and pushed by its `?cmd=` URL and its `.git/info/lfs` / `.hg/lfs` endpoints; its web
pages, bare LFS prefix and v2 API are not reachable.

All LFS spellings of one repository map to the same namespace, the repository path. Paths are
validated here, once: no empty, "." or ".."-like segments, no hidden segments, a restricted
charset, and no percent-encoded separators, so nothing downstream can be led outside its root.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = ["MAX_REPO_PATH", "WEB_COMMANDS", "WEB_STYLES", "BadPath", "Kind", "Target", "is_web_command", "resolve",
           "validate_repo_path"]

MAX_REPO_PATH = 255
MAX_DEPTH = 16
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*\Z")
_OID = re.compile(r"[0-9a-f]{64}\Z")
# Percent-escapes that would decode to a separator, a dot, a backslash or NUL: a client that
# sends them is trying something, so the request is refused before any decoding matters.
_ENCODED_TRICKS = re.compile(r"%(2[fFeE]|5[cC]|00)")


class BadPath(ValueError):
    """The request path is not a valid repository path; the message says why."""


class Kind(enum.Enum):
    INDEX = "index"            # "/" without a command
    HG = "hg"                  # {repo} (?cmd= or a browser page)
    HG_API = "hg-api"          # {repo}/api/...
    # Never produced by resolve(): {repo} without cmd is Kind.HG, whose handler (wire v1) hands
    # it to the handler registered under this kind (the web front end's repository page).
    REPO_PAGE = "repo-page"
    LFS_BATCH = "lfs-batch"
    LFS_LOCKS = "lfs-locks"    # rest: "", "verify", "{id}/unlock"
    LFS_OBJECT = "lfs-object"  # rest: the oid
    LFS_VERIFY = "lfs-verify"
    WEB = "web"                # rest: "{webcmd}[/{args}]"


# hgweb's commands (mercurial/hgweb/webcommands.py), the names its URLs use, and the styles a
# command may be prefixed with (`json-log` is `log?style=json`, `raw-file` is `file?style=raw`).
WEB_COMMANDS = frozenset({
    "summary", "log", "shortlog", "changelog", "graph", "rev", "changeset", "file", "manifest",
    "annotate", "filelog", "diff", "filediff", "comparison", "tags", "bookmarks", "branches",
    "archive", "search", "help",
})
WEB_STYLES = frozenset({"json", "raw", "atom", "rss"})


def is_web_command(segment: str) -> bool:
    """Whether a path segment names a web command (`log`, `json-log`, `raw-file`, `atom-log`...)."""
    if segment in WEB_COMMANDS:
        return True
    style, sep, cmd = segment.partition("-")
    return bool(sep) and style in WEB_STYLES and cmd in WEB_COMMANDS


@dataclass(frozen=True)
class Target:
    kind: Kind
    repo: str   # repository path / LFS namespace, without leading or trailing "/"
    rest: str = ""


def validate_repo_path(path: str) -> str:
    """Return `path` if it is an acceptable repository path, else raise BadPath saying why."""
    if not path:
        raise BadPath("empty repository path")
    if len(path) > MAX_REPO_PATH:
        raise BadPath(f"repository path longer than {MAX_REPO_PATH} characters")
    segments = path.split("/")
    if len(segments) > MAX_DEPTH:
        raise BadPath(f"repository path deeper than {MAX_DEPTH} levels")
    for seg in segments:
        if not seg:
            raise BadPath("empty segment in repository path")
        if not _SEGMENT.match(seg):
            raise BadPath(f"invalid repository path segment {seg!r}: use letters, digits and ._+- "
                          "and do not start with a dot or dash")
    return path


_LFS_ENDPOINTS = (
    # (regex over the whole path, which group is the namespace)
    re.compile(r"(?P<repo>.+?)/\.git/info/lfs/(?P<rest>.*)\Z"),
    re.compile(r"(?P<repo>.+?)\.git/info/lfs/(?P<rest>.*)\Z"),
)
_LFS_SERVICE = re.compile(r"(?:objects/batch|locks(?:/verify|/[^/]+/unlock)?)\Z")
_LFS_BARE = re.compile(r"(?P<repo>.+?)/(?P<rest>objects/batch|locks(?:/verify|/[^/]+/unlock)?)\Z")
_HG_LFS = re.compile(r"(?P<repo>.+)/\.hg/lfs/(?:objects/(?P<oid>[^/]*)|(?P<verify>verify))\Z")
_HG_API = re.compile(r"(?P<repo>.+)/api(?:/(?P<rest>exp-http-v2-[^/]*(?:/.*)?))?\Z")


def _lfs_service(repo: str, rest: str) -> Target:
    if rest == "objects/batch":
        return Target(Kind.LFS_BATCH, validate_repo_path(repo))
    if rest == "locks":
        return Target(Kind.LFS_LOCKS, validate_repo_path(repo), "")
    return Target(Kind.LFS_LOCKS, validate_repo_path(repo), rest[len("locks/"):])


def resolve(path: str, raw_path: str, has_cmd: bool) -> Target:
    """Map a decoded request path (aiohttp's request.path) to a Target, or raise BadPath.

    `raw_path` is the undecoded path, checked for encoded separators; `has_cmd` is whether the
    query string carries `cmd=` (then the whole path is a repository, whatever its suffix).
    """
    if _ENCODED_TRICKS.search(raw_path.split("?", 1)[0]):
        raise BadPath("percent-encoded '/', '.', '\\' or NUL in the path")
    if "\\" in path or "\0" in path:
        raise BadPath("backslash or NUL in the path")
    p = path.strip("/")
    if not p:
        return Target(Kind.INDEX, "")
    if has_cmd:
        return Target(Kind.HG, validate_repo_path(p))
    m = _HG_LFS.match(p)
    if m:
        if m.group("verify"):
            return Target(Kind.LFS_VERIFY, validate_repo_path(m.group("repo")))
        oid = m.group("oid")
        if not _OID.match(oid):
            raise BadPath(f"not an LFS object id (64 lowercase hex digits): {oid[:80]!r}")
        return Target(Kind.LFS_OBJECT, validate_repo_path(m.group("repo")), oid)
    for regex in _LFS_ENDPOINTS:
        m = regex.match(p)
        if m:
            if not _LFS_SERVICE.match(m.group("rest")):
                raise BadPath(f"unknown Git LFS endpoint {m.group('rest')!r}")
            return _lfs_service(m.group("repo"), m.group("rest"))
    # A web URL's file path may end like the bare LFS or v2 endpoints (`file/tip/docs/api`): the
    # first web command segment decides, before those suffixes are looked at.
    segments = p.split("/")
    for i in range(1, min(len(segments), MAX_DEPTH + 1)):
        if is_web_command(segments[i]):
            return Target(Kind.WEB, validate_repo_path("/".join(segments[:i])), "/".join(segments[i:]))
    m = _LFS_BARE.match(p)
    if m:
        return _lfs_service(m.group("repo"), m.group("rest"))
    m = _HG_API.match(p)
    if m:
        return Target(Kind.HG_API, validate_repo_path(m.group("repo")), m.group("rest") or "")
    return Target(Kind.HG, validate_repo_path(p))
