"""The Mercurial data model: revlogs, store, repository, changegroups, bundle2, transactions (no HTTP, no asyncio)."""
