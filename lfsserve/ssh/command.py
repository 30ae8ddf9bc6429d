"""What an SSH client asked to run (SSH_ORIGINAL_COMMAND), parsed without a shell.

Accepted, and nothing else:

    hg -R <repo> serve --stdio                 as Mercurial's sshpeer sends it: the path bare
                                               when it is made of safe characters, otherwise in
                                               single quotes with ' written as '\\'' (the whole
                                               command is quoted once more for the client's
                                               local shell, which sshd never sees); older hg
                                               clients single-quote every path
    git-lfs-authenticate <repo> upload|download
    git-lfs-transfer <repo> upload|download    git-lfs sends the path bare (single quotes are
                                               accepted too)

The words are split with shlex (POSIX rules, no expansion of anything); a command is accepted only
when re-quoting its words the way its client does gives back exactly the text received, so
`;`, `|`, `$(...)`, extra words or redirections can never slip through as part of a path.
Repository paths go through routing.validate_repo_path, as HTTP's do; git-lfs's spellings
(`/team/app`, `team/app.git`, `team/app/.git`) map to the namespace HTTP's LFS routes use.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from ..routing import BadPath, validate_repo_path

__all__ = ["BadCommand", "SshCommand", "parse_command"]

MAX_COMMAND = 4096
# Characters Mercurial's sshpeer leaves unquoted (its _serverquote).
_HG_SAFE = re.compile(r"[a-zA-Z0-9@%_+=:,./-]*\Z")
_LFS_OPERATIONS = ("upload", "download")


class BadCommand(ValueError):
    """Not a command this server runs; the message says why (one line, shown to the client)."""


@dataclass(frozen=True)
class SshCommand:
    kind: str           # "hg" | "git-lfs-authenticate" | "git-lfs-transfer"
    repo: str           # validated repository path / LFS namespace
    operation: str = ""  # "upload" | "download" for the git-lfs commands


def _quoted(path: str) -> str:
    return "'" + path.replace("'", "'\\''") + "'"


def _spellings(path: str) -> set[str]:
    """How clients write `path` on the command line: bare when safe (hg's _serverquote), or quoted."""
    return {path if _HG_SAFE.match(path) else _quoted(path), _quoted(path)}


def _repo(path: str) -> str:
    # ssh://host//abs/path and ssh://host/path both name a repository under the served root.
    try:
        return validate_repo_path(path.strip("/"))
    except BadPath as exc:
        raise BadCommand(f"invalid repository path {path[:200]!r}: {exc}") from None


def _lfs_namespace(path: str) -> str:
    p = path.strip("/")
    if p.endswith("/.git"):
        p = p[: -len("/.git")]
    elif p.endswith(".git"):
        p = p[: -len(".git")]
    return _repo(p)


def parse_command(text: str | None) -> SshCommand:
    """The command an SSH client asked for, or BadCommand."""
    if text is None or not text.strip():
        raise BadCommand("interactive logins are not available: this key only serves hg and git-lfs")
    if len(text) > MAX_COMMAND:
        raise BadCommand("command too long")
    if any(c in text for c in "\0\n\r"):
        raise BadCommand("control characters in the command")
    try:
        words = shlex.split(text, comments=False, posix=True)
    except ValueError as exc:
        raise BadCommand(f"cannot parse the command: {exc}") from None
    if len(words) == 5 and words[0] == "hg" and words[1] == "-R" and words[3:] == ["serve", "--stdio"]:
        if text not in {f"hg -R {p} serve --stdio" for p in _spellings(words[2])}:
            raise BadCommand("unexpected quoting or spacing in the hg command")
        return SshCommand("hg", _repo(words[2]))
    if len(words) == 3 and words[0] in ("git-lfs-authenticate", "git-lfs-transfer"):
        if words[2] not in _LFS_OPERATIONS:
            raise BadCommand(f"{words[0]}: operation must be upload or download, not {words[2][:40]!r}")
        if text not in {f"{words[0]} {p} {words[2]}" for p in _spellings(words[1])}:
            raise BadCommand(f"unexpected quoting or spacing in the {words[0]} command")
        return SshCommand(words[0], _lfs_namespace(words[1]), words[2])
    first = words[0][:60] if words else ""
    raise BadCommand(f"command not allowed: {first!r} (this key only serves `hg -R REPO serve --stdio`, "
                     "git-lfs-authenticate and git-lfs-transfer)")
