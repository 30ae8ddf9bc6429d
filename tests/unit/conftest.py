"""Fixtures of the in-process tests: an lfsserve app, configured with users and rules, behind aiohttp's test client."""

from __future__ import annotations

import pytest

from lfsserve.app import create_app

from .lfs_support import make_config


@pytest.fixture
def make_client(tmp_path, aiohttp_client):
    async def make(extra: str = "", anonymous: str = "none", server: str = ""):
        app = create_app(make_config(tmp_path, extra, anonymous, server))
        client = await aiohttp_client(app)
        return client
    return make


@pytest.fixture
async def client(make_client):
    return await make_client()
