"""Exceptions of the repository engine: typed, with messages a user can act on, no HTTP notions.

Front ends translate these once, at their edge, into status codes or protocol error frames.
"""

from __future__ import annotations

__all__ = [
    "Abort",
    "BadChangegroup",
    "BadPath",
    "CorruptRevlog",
    "HgError",
    "IntegrityError",
    "LockTimeout",
    "LookupError",
    "PushRaced",
    "RepoNotFound",
    "UnknownRevision",
    "UnsupportedRequirement",
]


class HgError(Exception):
    """Base of every engine error; `message` is meant for the user."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class RepoNotFound(HgError):
    def __init__(self, path):
        super().__init__(f"repository {path} not found")
        self.path = path


class UnsupportedRequirement(HgError):
    """The repository uses a format feature this server cannot read or write safely."""

    def __init__(self, reqs, where: str = ""):
        self.requirements = sorted(reqs)
        names = ", ".join(self.requirements)
        where = f" of {where}" if where else ""
        super().__init__(f"repository{where} requires features unknown to lfsserve: {names}",
                         hint="serve it with Mercurial, or convert it with 'hg debugupgraderepo'")


class UnknownRevision(HgError):
    def __init__(self, key):
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        super().__init__(f"unknown revision '{key}'")
        self.key = key


class LookupError(HgError):  # shadows the builtin on purpose: the name Mercurial users know
    def __init__(self, node: bytes, name: str, message: str = "no node"):
        shown = node.hex() if isinstance(node, bytes) and len(node) == 20 else repr(node)
        super().__init__(f"{name}@{shown}: {message}")
        self.node = node
        self.name = name


class CorruptRevlog(HgError):
    """Stored data cannot be decoded (bad index, truncated data, bad compression, bad delta)."""


class IntegrityError(CorruptRevlog):
    """Stored data decodes but does not match its hash or its references."""


class BadChangegroup(HgError):
    """A client-supplied changegroup is invalid; nothing of it is kept."""


class BadPath(HgError):
    """A tracked-file path no repository may hold (`..`, absolute, under `.hg`...)."""


class LockTimeout(HgError):
    def __init__(self, path, holder: str, waited: float):
        super().__init__(f"timed out after {waited:g}s waiting for the lock on {path} held by {holder}",
                         hint="another process (hg or lfsserve) is writing this repository")
        self.path = path
        self.holder = holder


class PushRaced(HgError):
    def __init__(self, message: str = "repository changed while pushing - please try again"):
        super().__init__(message)


class Abort(HgError):
    """A generic refusal."""
