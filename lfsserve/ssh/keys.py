"""lfsserve's authorized_keys file: one forced-command line per (user, public key).

    command="<ssh.command> ssh --config <file> --user alice",no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty ssh-ed25519 AAAA... alice@laptop

sshd reads the file directly (AuthorizedKeysFile) or through `lfsserve authorized-keys lookup`
(AuthorizedKeysCommand), which prints the line of the key being offered. Every write replaces
the file atomically (temp file with mode 0600, then rename), so sshd never reads half a file.
A key belongs to one user only: sshd would use the first line it finds, so a key added twice
would log in as whoever came first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import shlex
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "KEY_TYPES",
    "BadKey",
    "KeyEntry",
    "add_key",
    "forced_command",
    "list_keys",
    "lookup",
    "parse_public_key",
    "remove_keys",
]

# Public key algorithms OpenSSH accepts in authorized_keys (DSA is disabled in OpenSSH >= 7.0).
KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
USER = re.compile(r"[A-Za-z0-9._@+-]{1,64}\Z")
_OPTIONS = "no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty"
_LINE = re.compile(r'command="(?P<command>[^"]*)",' + re.escape(_OPTIONS) +
                   r" (?P<type>\S+) (?P<blob>\S+)(?: (?P<comment>.*))?\Z")
_USER_IN_COMMAND = re.compile(r" --user (?P<user>\S+)\Z")


class BadKey(ValueError):
    """A public key or key file problem; the message is for the administrator."""


@dataclass(frozen=True)
class KeyEntry:
    user: str
    type: str
    blob: str        # base64, as in the file
    comment: str
    line: str

    @property
    def fingerprint(self) -> str:
        """As `ssh-keygen -l` shows it: SHA256:<unpadded base64 of the key blob's digest>."""
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).rstrip(b"=").decode("ascii")


def parse_public_key(text: str) -> tuple[str, str, str]:
    """(type, base64 blob, comment) of an OpenSSH public key line (`ssh-ed25519 AAAA... me@host`).

    The blob must be valid base64 and name the same algorithm as the line: a key pasted with a
    wrong type, a truncated blob or options in front is refused here, not at login time."""
    line = text.strip()
    if "\n" in line or "\r" in line:
        raise BadKey("one public key at a time, on one line")
    parts = line.split(None, 2)
    if len(parts) < 2:
        raise BadKey("not an OpenSSH public key (expected `TYPE BASE64 [COMMENT]`)")
    key_type, blob = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) == 3 else ""
    if key_type not in KEY_TYPES:
        raise BadKey(f"unsupported key type {key_type[:40]!r} (one of: {', '.join(KEY_TYPES)})")
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise BadKey("the key is not valid base64") from None
    if len(raw) < 4:
        raise BadKey("the key is truncated")
    (n,) = struct.unpack(">I", raw[:4])
    if raw[4:4 + n] != key_type.encode("ascii"):
        raise BadKey(f"the key's data is not a {key_type} key (truncated or a different type)")
    if key_type == "ssh-ed25519" and len(raw) != 4 + n + 4 + 32:
        raise BadKey("the ed25519 key has the wrong length")
    if any(ord(c) < 32 for c in comment):
        raise BadKey("control characters in the key comment")
    return key_type, blob, comment


def forced_command(program: str, user: str, config: str | None, root: str | None) -> str:
    """The command sshd runs for `user`'s keys (through the user's shell, hence the quoting)."""
    words = [program, "ssh"]
    if config:
        words += ["--config", str(Path(config).resolve())]
    if root:
        words += ["--root", str(Path(root).resolve())]
    words += ["--user", user]
    for w in words:
        if any(c in w for c in '"\\\n\r'):
            raise BadKey(f"{w!r}: quotes, backslashes and line breaks cannot go into authorized_keys")
    return " ".join(shlex.quote(w) for w in words)


def _entry(line: str) -> KeyEntry | None:
    m = _LINE.match(line)
    if not m:
        return None
    u = _USER_IN_COMMAND.search(m.group("command"))
    if not u:
        return None
    return KeyEntry(u.group("user"), m.group("type"), m.group("blob"), m.group("comment") or "", line)


def _read(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("".join(ln + "\n" for ln in lines))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def list_keys(path: Path) -> list[KeyEntry]:
    return [e for e in map(_entry, _read(path)) if e is not None]


def add_key(path: Path, user: str, public_key: str, command: str) -> KeyEntry:
    """Add `user`'s key with its forced command; refuses a key that is already in the file."""
    if not USER.match(user):
        raise BadKey(f"invalid user name {user!r}")
    key_type, blob, comment = parse_public_key(public_key)
    lines = _read(path)
    for e in map(_entry, lines):
        if e is not None and e.blob == blob:
            raise BadKey(f"this key is already registered for user {e.user} ({e.fingerprint}); "
                            "a key can belong to one user only")
    line = f'command="{command}",{_OPTIONS} {key_type} {blob}' + (f" {comment}" if comment else "")
    entry = _entry(line)
    assert entry is not None and entry.user == user
    _write(path, lines + [line])
    return entry


def remove_keys(path: Path, user: str, fingerprint: str | None = None) -> list[KeyEntry]:
    """Remove `user`'s keys (only the one with `fingerprint` when given); returns those removed."""
    lines = _read(path)
    kept, removed = [], []
    for line in lines:
        e = _entry(line)
        if e is not None and e.user == user and fingerprint in (None, e.fingerprint):
            removed.append(e)
        else:
            kept.append(line)
    if removed:
        _write(path, kept)
    return removed


def lookup(path: Path, key: str, key_type: str | None = None) -> list[str]:
    """The file's lines for public key `key` (base64, sshd's %k), of type `key_type` (%t) if given."""
    return [e.line for e in list_keys(path) if e.blob == key and key_type in (None, e.type)]
