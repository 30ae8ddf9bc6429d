"""The web front end (pages for browsers); see pages.py."""

from __future__ import annotations

from .pages import setup

__all__ = ["setup"]
