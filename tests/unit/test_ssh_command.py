"""The forced command's parsing of SSH_ORIGINAL_COMMAND and lfsserve's authorized_keys file."""

from __future__ import annotations

import base64
import os
import struct

import pytest

from lfsserve.ssh.command import BadCommand, SshCommand, parse_command
from lfsserve.ssh.keys import (
    BadKey,
    add_key,
    forced_command,
    list_keys,
    lookup,
    parse_public_key,
    remove_keys,
)


@pytest.mark.parametrize("text, expected", [
    ("hg -R team/app serve --stdio", SshCommand("hg", "team/app")),
    ("hg -R /team/app/ serve --stdio", SshCommand("hg", "team/app")),       # ssh://host//team/app/
    ("hg -R 'team/app' serve --stdio", SshCommand("hg", "team/app")),       # older hg quotes every path
    ("git-lfs-authenticate team/app.git upload", SshCommand("git-lfs-authenticate", "team/app", "upload")),
    ("git-lfs-authenticate /team/app download", SshCommand("git-lfs-authenticate", "team/app", "download")),
    ("git-lfs-transfer team/app/.git download", SshCommand("git-lfs-transfer", "team/app", "download")),
    ("git-lfs-transfer 'team/app' upload", SshCommand("git-lfs-transfer", "team/app", "upload")),
])
def test_accepted_commands(text, expected):
    assert parse_command(text) == expected


@pytest.mark.parametrize("text, message", [
    (None, "interactive logins"),
    ("", "interactive logins"),
    ("bash", "not allowed"),
    ("hg -R x serve --stdio; rm -rf /", "not allowed"),
    ("hg -R x serve --stdio --debugger", "not allowed"),
    ("hg -R x serve --stdio --hidden", "not allowed"),
    ("hg -R x  serve --stdio", "quoting or spacing"),
    ('hg -R "x" serve --stdio', "quoting or spacing"),
    ("hg -R x$(id) serve --stdio", "quoting or spacing"),
    ("hg -R 'x$(id)' serve --stdio", "invalid repository path"),
    ("hg -R 'x; rm -rf /' serve --stdio", "invalid repository path"),
    ("hg -R ../x serve --stdio", "invalid repository path"),
    ("hg -R team/.hg serve --stdio", "invalid repository path"),
    ("/usr/bin/hg -R x serve --stdio", "not allowed"),
    ("git-lfs-authenticate ../x upload", "invalid repository path"),
    ("git-lfs-authenticate x upload;id", "operation must be upload or download"),
    ("git-lfs-authenticate x upload extra", "not allowed"),
    ("git-lfs-transfer x lock", "operation must be upload or download"),
    ("git-lfs-transfer x\\ y upload", "quoting or spacing"),
    ("git-lfs-transfer 'unterminated upload", "cannot parse"),
    ("git-lfs-transfer x upload\n", "control characters"),
    ("git-lfs-transfer " + "a/" * 3000 + " upload", "too long"),
])
def test_refused_commands(text, message):
    with pytest.raises(BadCommand, match=message.replace("$", r"\$")):
        parse_command(text)


def _pubkey(tmp_path, name="k"):
    """An ed25519 public key line as ssh-keygen writes it (the key blob is RFC 8709's encoding)."""
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + os.urandom(32)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {name}@host\n"


def test_public_key_validation(tmp_path):
    key = _pubkey(tmp_path)
    key_type, blob, comment = parse_public_key(key)
    assert key_type == "ssh-ed25519" and comment == "k@host"
    for bad, message in [
        ("ssh-ed25519", "not an OpenSSH public key"),
        ("ssh-dss AAAA", "unsupported key type"),
        (f"ssh-ed25519 {blob[:-4]}!!!!", "not valid base64"),
        (f"ssh-rsa {blob}", "not a ssh-rsa key"),
        (f"ssh-ed25519 {base64.b64encode(base64.b64decode(blob)[:-3]).decode()}", "wrong length"),
        (f'command="sh" {key}', "unsupported key type"),
        (key + key, "one public key at a time"),
    ]:
        with pytest.raises(BadKey, match=message):
            parse_public_key(bad)


def test_authorized_keys_add_list_lookup_remove(tmp_path):
    path = tmp_path / "ssh" / "authorized_keys"
    alice, alice2, bob = _pubkey(tmp_path, "a1"), _pubkey(tmp_path, "a2"), _pubkey(tmp_path, "b")
    cmd = forced_command("/opt/lfsserve/bin/lfsserve", "alice", "/etc/lfs serve.toml", None)
    assert cmd == "/opt/lfsserve/bin/lfsserve ssh --config '/etc/lfs serve.toml' --user alice"
    e1 = add_key(path, "alice", alice, cmd)
    add_key(path, "alice", alice2, cmd)
    add_key(path, "bob", bob, forced_command("lfsserve", "bob", None, "/srv/data"))
    assert path.stat().st_mode & 0o777 == 0o600
    assert not list(path.parent.glob("*.tmp*"))
    with pytest.raises(BadKey, match="already registered for user alice"):
        add_key(path, "bob", alice, cmd)
    with pytest.raises(BadKey, match="invalid user name"):
        add_key(path, "al ice", _pubkey(tmp_path, "c"), cmd)
    lines = path.read_text().splitlines()
    assert lines[0] == (f'command="{cmd}",no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty '
                        f"{alice.strip()}")
    assert [(e.user, e.comment) for e in list_keys(path)] == [("alice", "a1@host"), ("alice", "a2@host"),
                                                              ("bob", "b@host")]
    fp = e1.fingerprint  # checked against ssh-keygen -l in tests/interop/test_ssh.py
    blob = alice.split()[1]
    assert lookup(path, blob) == [lines[0]]
    assert lookup(path, blob, "ssh-ed25519") == [lines[0]]
    assert lookup(path, blob, "ssh-rsa") == []
    assert lookup(path, "AAAA") == []
    assert [e.comment for e in remove_keys(path, "alice", fp)] == ["a1@host"]
    assert [e.user for e in list_keys(path)] == ["alice", "bob"]
    assert [e.comment for e in remove_keys(path, "alice")] == ["a2@host"]
    assert remove_keys(path, "alice") == []
    assert [e.user for e in list_keys(path)] == ["bob"]
    with pytest.raises(BadKey, match="cannot go into authorized_keys"):
        forced_command("lfsserve", "alice", '/etc/"x".toml', None)
