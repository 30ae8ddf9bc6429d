"""A repository's web settings: the `[web]` section of its `.hg/hgrc`, as hgweb reads it.

`description`, `contact`, `name`, `hidden`, `allow_archive` and `labels`, with lfsserve's global
defaults (the `[web]` section of its config) where the repository says nothing. Only that one
file is read (no `%include`: it could name any file on the server). Reading is blocking: run it
in the executor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MAX_HGRC", "WebSettings", "parse_hgrc_section", "read_web_settings"]

MAX_HGRC = 256 << 10  # a bigger hgrc is not one a person wrote: ignore it
_SECTION = re.compile(r"\[([^\[]+)\]")
_ITEM = re.compile(r"([^=\s][^=]*?)\s*=\s*(.*\S|)")
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


def parse_hgrc_section(text: str, section: str) -> dict[str, str]:
    """The items of `[section]` in hg's config syntax: `key = value`, continuation lines that
    start with whitespace, `#`/`;` comments, `%unset key`; a later value wins."""
    items: dict[str, str] = {}
    current = None
    last_key = None
    for line in text.splitlines():
        if current == section and last_key is not None and line[:1] in (" ", "\t") and line.strip():
            items[last_key] += "\n" + line.strip()
            continue
        last_key = None
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        m = _SECTION.fullmatch(stripped)
        if m:
            current = m.group(1).strip()
            continue
        if current != section:
            continue
        if stripped.startswith("%unset "):
            items.pop(stripped[7:].strip(), None)
            continue
        m = _ITEM.fullmatch(line)
        if m:
            last_key = m.group(1).strip()
            items[last_key] = m.group(2)
    return items


def _list(value: str) -> list[str]:
    return [v for v in re.split(r"[\s,]+", value) if v]


def _bool(value: str, default: bool) -> bool:
    v = value.strip().lower()
    return True if v in _TRUE else False if v in _FALSE else default


def read_web_settings(repo_root: Path, defaults: WebSettings = WebSettings()) -> WebSettings:
    """The web settings of the repository at `repo_root` (a missing or unreadable hgrc: the
    defaults)."""
    try:
        with open(repo_root / ".hg" / "hgrc", "rb") as f:
            raw = f.read(MAX_HGRC + 1)
    except OSError:
        return defaults
    if len(raw) > MAX_HGRC:
        return defaults
    items = parse_hgrc_section(raw.decode("utf-8", "replace"), "web")
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
