"""Typed AppKeys of the LFS front end: where its state lives on the aiohttp application.

A module of its own so that the handlers (batch, transfer, locks) can reach the service without
importing it: the service imports the lock store from locks.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .service import LfsService

__all__ = ["LFS_SERVICE"]

# The LfsService, set up and started by lfsserve.lfs.setup.
LFS_SERVICE: web.AppKey[LfsService] = web.AppKey("lfsserve_lfs_service")
