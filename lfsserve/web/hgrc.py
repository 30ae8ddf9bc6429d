"""A repository's web settings: the `[web]` section of its `.hg/hgrc`, as hgweb reads it.

`description`, `contact`, `name`, `hidden`, `allow_archive` and `labels`, with lfsserve's global
defaults (the `[web]` section of its config) where the repository says nothing. The file is read
by the engine's one hgrc reader (`lfsserve.hg.hgrc.load`: hg's syntax, `%include`, cached by file
version); a file it cannot parse leaves the defaults. Blocking: run in the executor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..hg import hgrc

__all__ = ["WebSettings", "read_web_settings", "web_items"]

_TRUE = {"1", "yes", "true", "on", "always"}
_FALSE = {"0", "no", "false", "off", "never"}


@dataclass(frozen=True)
class WebSettings:
    name: str = ""
    description: str = ""
    contact: str = ""
    hidden: bool = False
    allow_archive: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def web_items(repo_root: Path) -> dict[str, str]:
    """The `[web]` items of the repository's hgrc (none when it is missing or unparsable)."""
    try:
        return dict(hgrc.load(repo_root).items("web"))
    except (hgrc.HgrcError, OSError):
        return {}

def _list(value: str) -> list[str]:
    return [v for v in re.split(r"[\s,]+", value) if v]


def _bool(value: str, default: bool) -> bool:
    v = value.strip().lower()
    return True if v in _TRUE else False if v in _FALSE else default


def read_web_settings(repo_root: Path, defaults: WebSettings = WebSettings()) -> WebSettings:
    """The web settings of the repository at `repo_root` (a missing or unreadable hgrc: the
    defaults)."""
    items = web_items(repo_root)
    if not items:
        return defaults
    return WebSettings(
        name=items.get("name", defaults.name),
        description=items.get("description", defaults.description),
        contact=items.get("contact", defaults.contact),
        hidden=_bool(items["hidden"], defaults.hidden) if "hidden" in items else defaults.hidden,
        # hgweb's spelling is allow-archive; allow_archive is its older one
        allow_archive=(_list(items.get("allow-archive", items.get("allow_archive", "")))
                       if "allow-archive" in items or "allow_archive" in items else list(defaults.allow_archive)),
        labels=_list(items["labels"]) if "labels" in items else list(defaults.labels),
    )
