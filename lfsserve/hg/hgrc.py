"""A repository's own configuration file, `.hg/hgrc`, read as Mercurial reads it.

The syntax (`hg help config`): `[section]` headers, `name = value` items, values continued on
following lines that start with whitespace (joined with a newline), comment lines starting with `#`
or `;`, `%include PATH` (relative to the including file's directory, `~` and `$VARS` expanded; a
missing file is skipped, as hg does) and `%unset NAME`. A later setting wins over an earlier one.

`load(root)` returns the parsed file, cached process-wide by the (mtime, size, inode) of every file
it read, so an unchanged hgrc costs a few `stat` calls per open, never a parse. What the settings
mean (booleans, lists, the `experimental.evolution` options) is interpreted here as hg interprets
them; the server's own config combines them with its defaults (repos.py).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .error import HgError

__all__ = [
    "EMPTY",
    "EVOLUTION_OPTIONS",
    "EvolutionSettings",
    "Hgrc",
    "HgrcError",
    "RepoConfig",
    "TopicSettings",
    "WebSettings",
    "evolution_options",
    "extension_enabled",
    "load",
    "parse",
    "parse_bool",
    "parse_list",
]

_SECTION = re.compile(r"\[([^\[]+)\]")
_ITEM = re.compile(r"([^=\s][^=]*?)\s*=\s*(.*\S|)")
_CONT = re.compile(r"\s+(\S|\S.*\S)\s*$")
_EMPTY = re.compile(r"(;|#|\s*$)")
_COMMENT = re.compile(r"(;|#)")
_UNSET = re.compile(r"%unset\s+(\S+)")
_INCLUDE = re.compile(r"%include\s+(\S|\S.*\S)\s*$")

# hg's booleans (mercurial/utils/stringutil.py)
_BOOLEANS = {"1": True, "yes": True, "true": True, "on": True, "always": True,
             "0": False, "no": False, "false": False, "off": False, "never": False}
MAX_INCLUDE_DEPTH = 10  # hg has no limit (a cycle crashes it); ours refuses
MAX_HGRC_SIZE = 1 << 20  # an hgrc is a few lines; a larger file is refused, not read into memory


class HgrcError(HgError):
    """The file cannot be read as hg's config: hg's own "parse error at FILE:LINE" message."""


def parse_bool(value: str | None, section: str = "", name: str = "") -> bool | None:
    """hg's configbool: None when unset; HgrcError for a value that is not a boolean."""
    if value is None:
        return None
    got = _BOOLEANS.get(value.strip().lower())
    if got is None:
        raise HgrcError(f"{section}.{name} is not a boolean ('{value}')")
    return got


def parse_list(value: str | None) -> list[str]:
    """hg's configlist for plain values: words separated by commas and/or whitespace (quoted
    words keep their spaces)."""
    if not value:
        return []
    out = []
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"|([^\s,]+)', value):
        out.append(m.group(1).replace('\\"', '"') if m.group(1) is not None else m.group(2))
    return out


@dataclass
class Hgrc:
    """Parsed settings: section -> name -> value (insertion order kept, as hg keeps it), and
    the files read with what identified their version (for the cache)."""

    sections: dict[str, dict[str, str]] = field(default_factory=dict)
    sources: list[tuple[str, tuple[int, int, int] | None]] = field(default_factory=list)
    # what the server made of these settings (repos.py), per server settings: computed once
    resolved: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def get(self, section: str, name: str, default: str | None = None) -> str | None:
        return self.sections.get(section, {}).get(name, default)

    def items(self, section: str) -> list[tuple[str, str]]:
        """Every (name, value) of `section`, in file order (the order hg runs hooks in)."""
        return list(self.sections.get(section, {}).items())

    def getbool(self, section: str, name: str, default: bool) -> bool:
        got = parse_bool(self.get(section, name), section, name)
        return default if got is None else got

    def has(self, section: str, name: str) -> bool:
        return name in self.sections.get(section, {})


def _stat(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def parse(path: str | os.PathLike[str], shown_as: str = "") -> Hgrc:
    """Read the config file `path` and what it includes. `shown_as` names it in error messages
    (a path relative to the repository rather than the server's file system)."""
    cfg = Hgrc()
    _read(cfg, os.fspath(path), shown_as or os.fspath(path), 0)
    return cfg


def _read(cfg: Hgrc, path: str, shown: str, depth: int) -> None:
    ident = _stat(path)
    cfg.sources.append((path, ident))
    if ident is None:
        raise FileNotFoundError(path)
    if ident[1] > MAX_HGRC_SIZE:
        raise HgrcError(f"cannot read {shown}: larger than {MAX_HGRC_SIZE} bytes")
    with open(path, "rb") as fh:
        data = fh.read(MAX_HGRC_SIZE + 1)
    text = data.decode("utf-8", "surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    section = ""
    item: str | None = None
    cont = False
    for lineno, line in enumerate(text.splitlines(True), 1):
        where = f"{shown}:{lineno}"
        if cont:
            if _COMMENT.match(line):
                continue
            m = _CONT.match(line)
            if m:
                assert item is not None
                values = cfg.sections.setdefault(section, {})
                values[item] = values.get(item, "") + "\n" + m.group(1)
                continue
            item = None
            cont = False
        m = _INCLUDE.match(line)
        if m:
            target = os.path.normpath(os.path.join(os.path.dirname(path),
                                                   os.path.expandvars(os.path.expanduser(m.group(1)))))
            if depth >= MAX_INCLUDE_DEPTH:
                raise HgrcError(f"parse error at {where}: %include nested more than {MAX_INCLUDE_DEPTH} deep")
            try:
                _read(cfg, target, target, depth + 1)
            except FileNotFoundError:
                pass  # hg skips a missing include (its stat stays in sources: creating it is seen)
            except OSError as exc:
                raise HgrcError(f"cannot include {target} ({exc.strerror})", hint=where) from None
            continue
        if _EMPTY.match(line):
            continue
        m = _SECTION.match(line)
        if m:
            section = m.group(1)
            cfg.sections.setdefault(section, {})
            continue
        m = _ITEM.match(line)
        if m:
            item = m.group(1)
            cont = True
            values = cfg.sections.setdefault(section, {})
            values.pop(item, None)  # a new setting goes last, as in hg's sorted-by-source dict
            values[item] = m.group(2)
            continue
        m = _UNSET.match(line)
        if m:
            cfg.sections.get(section, {}).pop(m.group(1), None)
            continue
        shown_line = line.rstrip()
        if line.startswith(" "):
            shown_line = "unexpected leading whitespace: " + shown_line
        raise HgrcError(f"parse error at {where}: {shown_line[:200]}")


EMPTY = Hgrc()  # a repository without an hgrc, or whose hgrc the server does not read

_cache: dict[str, Hgrc] = {}
_cache_lock = threading.Lock()


def _unchanged(cfg: Hgrc) -> bool:
    return all(_stat(p) == ident for p, ident in cfg.sources)


def load(root: str | os.PathLike[str]) -> Hgrc:
    """The `.hg/hgrc` of the repository at `root` (empty when there is none), parsed at most once
    per version of the files it reads. Blocking (stat, read): call from an executor."""
    path = os.path.join(os.fspath(root), ".hg", "hgrc")
    with _cache_lock:
        cached = _cache.get(path)
    if cached is not None and _unchanged(cached):
        return cached
    try:
        cfg = parse(path, ".hg/hgrc")
    except FileNotFoundError:
        cfg = Hgrc(sources=[(path, None)])
    with _cache_lock:
        if len(_cache) > 4096:
            _cache.clear()  # repositories come and go; bound what a long-running server keeps
        _cache[path] = cfg
    return cfg


# -- what hg makes of [experimental] evolution (mercurial/obsolete.py getoptions)

EVOLUTION_OPTIONS = ("createmarkers", "allowunstable", "allowdivergence", "exchange")


def _option(cfg: Hgrc, option: str, fallback: list[str]) -> bool:
    own = parse_bool(cfg.get("experimental", f"evolution.{option}"), "experimental", f"evolution.{option}")
    if own is not None:
        return own
    raw = cfg.get("experimental", "evolution")
    if raw is None:
        words = fallback
    else:
        flag = _BOOLEANS.get(raw.strip().lower())
        if flag is not None:
            return flag
        words = parse_list(raw)
    if "all" in words:
        return True
    if option == "createmarkers" and cfg.get("experimental", "evolution.createmarkers"):
        return True
    return option in words


def evolution_options(cfg: Hgrc, default: Iterable[str] = ()) -> dict[str, bool]:
    """The obsolescence features `cfg` turns on, as hg computes them: `evolution = all` (or a
    true boolean) turns every one on, a list names them, `evolution.<option>` overrides each;
    without createmarkers nothing else is on. `default`: the words of `experimental.evolution`
    when `cfg` does not set it (the server's default; with the evolve extension enabled and no
    setting, hg's is `all`)."""
    fallback = list(default)
    if cfg.get("experimental", "evolution") is None and extension_enabled(cfg, "evolve"):
        fallback = ["all"]
    create = _option(cfg, "createmarkers", fallback)
    out = {"createmarkers": create}
    for opt in EVOLUTION_OPTIONS[1:]:
        out[opt] = create and _option(cfg, opt, fallback)
    return out


def extension_enabled(cfg: Hgrc, extension: str) -> bool:
    """Whether `[extensions]` enables `extension` (`name =`, `hgext3rd.name =` or a path; a value
    starting with `!` disables it)."""
    for name, value in cfg.items("extensions"):
        if name.rsplit(".", 1)[-1] == extension and not value.startswith("!"):
            return True
    return False


# -- the typed settings of one repository (what repos.py makes of its hgrc and the server's config)

@dataclass(frozen=True)
class EvolutionSettings:
    """Mercurial's obsolescence features (`[experimental] evolution`, `evolution.*`)."""

    createmarkers: bool = False   # obsolescence markers exist here: pushes may add them
    allowunstable: bool = False
    allowdivergence: bool = False
    exchange: bool = False        # markers travel with pushes and pulls (`obsmarkers` caps)


@dataclass(frozen=True)
class WebSettings:
    """The `[web]` settings of a repository that lfsserve's pages use (as hgweb reads them)."""

    name: str | None = None          # shown instead of the repository's path
    description: str | None = None
    contact: str | None = None
    allow_archive: tuple[str, ...] = ()  # archive types offered for download (`allow-archive`)
    hidden: bool = False             # not listed in the repository index


@dataclass(frozen=True)
class TopicSettings:
    """hg-evolve's topic extension on the server (`[extensions] topic`)."""

    enabled: bool = False
    # `[experimental] topic.publish-bare-branch`: a push publishes the changesets it brings that
    # have no topic (Heptapod's behaviour), even on a non-publishing repository
    publish_bare_branch: bool = False
    # `[experimental] topic-mode.server`: what a push of draft changesets without a topic gets:
    # `ignore`, `warning` (a `remote:` warning) or `enforce` (refused); not `ignore` also turns
    # publish-bare-branch off, as in hg-evolve
    server_mode: str = "ignore"
    # `[experimental] topic.server-gate-topic-changesets`: clients without the topic extension
    # see no draft changeset with a topic (the `heads` command leaves them out)
    gate_topic_changesets: bool = False
    # `[experimental] tns-reject-push`: refuse draft changesets that name a topic namespace
    reject_tns_push: bool = False
    # `[experimental] topic.allow-publish`: false refuses any push that makes a changeset public
    allow_publish: bool = True


@dataclass(frozen=True)
class RepoConfig:
    """One repository's settings: the server's defaults, overridden by the repository's own
    `.hg/hgrc` within what the server allows. `hgrc` is the file itself, for raw access."""

    publishing: bool = True
    evolution: EvolutionSettings = EvolutionSettings()
    topics: TopicSettings = TopicSettings()
    web: WebSettings = WebSettings()
    # `[hooks]` of the repository's hgrc, in file order; run only when `hooks_allowed`
    hooks: tuple[tuple[str, str], ...] = ()
    hooks_allowed: bool = False
    hgrc: Hgrc = field(default_factory=lambda: EMPTY, compare=False, repr=False)
