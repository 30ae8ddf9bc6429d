"""lfsserve: a standalone asyncio server for Mercurial repositories (wire protocol v1 and v2) and Git LFS."""

__version__ = "0.1.0"
