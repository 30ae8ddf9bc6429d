"""git-lfs-transfer (the pure-SSH protocol) spoken to a real `lfsserve ssh` process over its
stdin/stdout, as sshd would connect it: the happy path byte for byte, and bad input on the
channel (garbage, broken framing, a huge declared size, EOF inside put-object, wrong content):
a clear error, nothing stored, the process exits."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

pytestmark = pytest.mark.interop

FLUSH, DELIM = b"0000", b"0001"


def pkt(data: bytes) -> bytes:
    return b"%04x" % (len(data) + 4) + data


def t(line: str) -> bytes:
    return pkt(line.encode() + b"\n")


def msg(command: str, *args: str, data: bytes | list[str] | None = None) -> bytes:
    out = t(command) + b"".join(t(a) for a in args)
    if data is None:
        return out + FLUSH
    out += DELIM
    if isinstance(data, list):
        out += b"".join(t(line) for line in data)
    else:
        out += b"".join(pkt(data[i:i + 65516]) for i in range(0, len(data), 65516))
    return out + FLUSH


def parse(stream: bytes) -> list[list[str | bytes]]:
    """The server's output as messages: lists of text lines / payloads, "<delim>" for delimiters."""
    messages, current, i = [], [], 0
    while i < len(stream):
        n = int(stream[i:i + 4], 16)
        if n == 0:
            messages.append(current)
            current = []
            i += 4
            continue
        if n == 1:
            current.append("<delim>")
            i += 4
            continue
        payload = stream[i + 4:i + n]
        i += n
        try:
            current.append(payload.decode().removesuffix("\n"))
        except UnicodeDecodeError:
            current.append(payload)
    assert current == [], f"output ends inside a message: {current!r}"
    return messages


VERSION = msg("version 1")
QUIT = msg("quit")


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "data"


def transfer(root: Path, stdin: bytes | None, operation: str = "upload", repo: str = "team/app",
             user: str = "alice", config: str = "", command: str = "git-lfs-transfer"
             ) -> subprocess.CompletedProcess:
    cfg = root.parent / "config.toml"
    # Users write where no rule says otherwise (auth.authenticated defaults to read).
    cfg.write_text(f'[server]\nroot = "{root}"\n[auth]\nauthenticated = "write"\n' + config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LFSSERVE_")}
    env["SSH_ORIGINAL_COMMAND"] = f"{command} {repo} {operation}"
    # stdin None: /dev/null, which asyncio cannot wait on (a session started by hand, or by cron)
    extra = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run([sys.executable, "-m", "lfsserve", "ssh", "--config", str(cfg), "--user", user],
                          capture_output=True, cwd=REPO_ROOT, env=env, timeout=120, check=False, **extra)


def stored(root: Path) -> set[str]:
    return {p.name for p in (root / "lfs" / "objects").glob("*/*/*")}


def leftovers(root: Path) -> list[Path]:
    tmp = root / "lfs" / "tmp"
    return list(tmp.iterdir()) if tmp.exists() else []


def oid(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_upload_verify_download_and_locks(root):
    data = os.urandom(150_000)
    o = oid(data)
    res = transfer(root, VERSION + msg("batch", "transfer=ssh", "hash-algo=sha256", data=[f"{o} {len(data)}"])
                   + msg(f"put-object {o}", f"size={len(data)}", data=data)
                   + msg(f"verify-object {o}", f"size={len(data)}")
                   + msg("batch", data=[f"{o} {len(data)}"])
                   + msg("lock", "path=dir/a file.bin", "refname=refs/heads/main")
                   + msg("lock", "path=dir/a file.bin") + msg("list-locks") + QUIT)
    assert res.returncode == 0, res.stderr
    out = parse(res.stdout)
    assert out[0] == ["version=1", "locking"]
    assert out[1] == ["status 200"]
    assert out[2] == ["status 200", "hash-algo=sha256", "<delim>", f"{o} {len(data)} upload"]
    assert out[3] == ["status 200"] and out[4] == ["status 200"]
    assert out[5] == ["status 200", "hash-algo=sha256", "<delim>", f"{o} {len(data)} noop"]
    lock_id = out[6][1].removeprefix("id=")
    assert out[6][0] == "status 201" and out[6][2] == "path=dir/a file.bin" and out[6][4] == "ownername=alice"
    assert out[7][0] == "status 409" and out[7][1] == f"id={lock_id}"
    assert out[7][-1] == "dir/a file.bin is already locked by alice"
    assert out[8][:4] == ["status 200", "<delim>", f"lock {lock_id}", f"path {lock_id} dir/a file.bin"]
    assert out[8][4].startswith(f"locked-at {lock_id} 20")
    assert out[8][5:] == [f"ownername {lock_id} alice", f"owner {lock_id} ours"]
    assert out[9] == ["status 200"]
    assert stored(root) == {o}

    # Another user reads it through a download session, and sees the lock as theirs.
    res = transfer(root, VERSION + msg("batch", data=[f"{o} {len(data)}", f"{'0' * 64} 5"])
                   + msg(f"get-object {o}") + msg("list-lock", "path=dir/a file.bin")
                   + msg(f"unlock {lock_id}") + QUIT, operation="download", user="bob")
    assert res.returncode == 0, res.stderr
    out = parse(res.stdout)
    assert out[2][3:] == [f"{o} {len(data)} download", f"{'0' * 64} 5 noop"]
    assert out[3][:3] == ["status 200", f"size={len(data)}", "<delim>"]
    assert b"".join(p if isinstance(p, bytes) else p.encode() for p in out[3][3:]) == data
    assert out[4][:4] == ["status 200", "<delim>", f"lock {lock_id}", f"path {lock_id} dir/a file.bin"]
    assert out[4][5:] == [f"ownername {lock_id} alice"]  # list-lock: no ours/theirs
    refusal = "dir/a file.bin is locked by alice; only they can unlock it (or unlock with --force)"
    assert out[5] == ["status 403", "<delim>", refusal]
    # Other namespaces cannot see it, even knowing its oid.
    res = transfer(root, VERSION + msg(f"get-object {o}") + QUIT, operation="download", repo="team/other")
    assert parse(res.stdout)[2] == ["status 404", "<delim>", "The object does not exist"]


def test_errors_answered_in_the_session(root):
    data = b"hello lfs\n"
    o = oid(data)
    res = transfer(root, msg("batch", data=[]) + VERSION
                   + msg("version 2")
                   + msg("frobnicate", "x=1", data=["a", "b"])
                   + msg(f"get-object {o}")                                      # upload session
                   + msg(f"put-object {o}", f"size={len(data)}", data=b"not hello\n")  # wrong content
                   + msg(f"put-object {o}", "size=999999999999999999", data=data)  # huge declared size
                   + msg(f"put-object {o}", "size=3", data=data)                 # more data than declared
                   + msg("put-object xyz", "size=1", data=b"x")
                   + msg("batch", "hash-algo=sha512", data=[f"{o} 10"])
                   + msg("batch", data=["garbage line"])
                   + msg("batch", data=[f"{o} 10 " + "x" * 2000])
                   + msg(f"verify-object {o}", "size=10")
                   + msg(f"put-object {o}", f"size={len(data)}", data=data)      # still usable
                   + QUIT)
    assert res.returncode == 0, res.stderr
    out = parse(res.stdout)
    assert out[1] == ["status 400", "<delim>", "send `version 1` first"]
    assert out[3][0] == "status 400" and "this server speaks version 1" in out[3][2]
    assert out[4] == ["status 400", "<delim>", "unknown command 'frobnicate'"]
    assert out[5][0] == "status 400" and "needs a git-lfs-transfer session for download" in out[5][2]
    assert out[6][0] == "status 422"
    assert out[7] == ["status 400", "<delim>", "object data ended after 10 bytes; size=999999999999999999 was declared"]
    assert out[8] == ["status 400", "<delim>", "more object data than the declared size=3"]
    assert out[9][0] == "status 422" and "not an LFS object id" in out[9][2]
    assert out[10][0] == "status 409"
    assert out[11][0] == "status 422" and "garbage line" in out[11][2]
    assert out[12] == ["status 422", "<delim>", "a line longer than 1024 characters"]
    assert out[13][0] == "status 404"
    assert out[14] == ["status 200"] and out[15] == ["status 200"]
    assert stored(root) == {o} and not leftovers(root)


def test_size_limit_refused_before_storing(root):
    res = transfer(root, VERSION + msg(f"put-object {'a' * 64}", "size=2000", data=os.urandom(2000)) + QUIT,
                   config="[lfs]\nmax_object_size = 1000\n")
    assert res.returncode == 0, res.stderr
    assert parse(res.stdout)[2] == ["status 413", "<delim>", "object larger than this server's limit of 1000 bytes"]
    assert stored(root) == set() and not leftovers(root)


@pytest.mark.parametrize("stdin, message", [
    (b"hello world\n", "not a pkt-line length"),
    (VERSION + b"zzzz", "not a pkt-line length"),
    (VERSION + b"0002", "unexpected special packet"),
    (VERSION + b"ffff" + b"x" * 100, "packet longer than 65520"),
    (VERSION + DELIM, "expected a command"),
    (VERSION + t("batch") + b"0010abc", "in the middle of a packet"),
    (VERSION + t("put-object " + "b" * 64) + t("size=100000") + DELIM + pkt(b"x" * 50000),
     "in the middle of a message"),
])
def test_broken_framing_ends_the_session(root, stdin, message):
    res = transfer(root, stdin)
    assert res.returncode == 1
    err = res.stderr.decode()
    assert message in err and "protocol error" in err and err.count("\n") == 1, err
    parse(res.stdout)  # whole messages only: nothing half-written
    assert stored(root) == set() and not leftovers(root)


def test_eof_between_messages_is_a_clean_end(root):
    res = transfer(root, VERSION)
    assert res.returncode == 0 and res.stderr == b""


@pytest.mark.parametrize("command", ["git-lfs-transfer", "hg"])
def test_stdin_that_cannot_be_waited_on_is_refused_not_hung(root, command):
    # Before: git-lfs-transfer waited forever on /dev/null; both channels now refuse at once.
    init = subprocess.run([sys.executable, "-m", "lfsserve", "init", "--root", str(root), "team/app"],
                          capture_output=True, cwd=REPO_ROOT, timeout=120, check=False)
    assert init.returncode == 0, init
    if command == "hg":
        res = transfer(root, None, command="hg -R", repo="team/app", operation="serve --stdio")
    else:
        res = transfer(root, None)
    assert res.returncode == 1 and res.stdout == b"", res
    assert res.stderr.decode().endswith("needs pipes or sockets as stdin and stdout (as sshd gives)\n"), res


def test_read_only_user_cannot_open_an_upload_session(root):
    res = transfer(root, VERSION, user="bob", config='[[auth.rules]]\nrepos = "**"\nread = ["bob"]\n')
    assert res.returncode == 1 and res.stdout == b""
    assert res.stderr.decode() == "lfsserve: user bob may not write to team/app\n"


def test_batch_over_the_object_limit_is_refused_and_the_session_goes_on(root):
    lines = [f"{i:064x} 1" for i in range(3)]
    res = transfer(root, VERSION + msg("batch", data=lines) + msg("batch", data=lines[:2]) + QUIT,
                   operation="download", config="[lfs]\nmax_batch_objects = 2\n")
    assert res.returncode == 0, res.stderr
    out = parse(res.stdout)
    assert out[2] == ["status 413", "<delim>",
                      "too many lines in one request (this server takes at most 2); split it"]
    assert out[3] == ["status 200", "hash-algo=sha256", "<delim>", *(f"{line} noop" for line in lines[:2])]


def test_git_lfs_authenticate_needs_base_url_and_transfer_can_be_turned_off(root):
    res = transfer(root, b"", command="git-lfs-authenticate", operation="download")
    assert res.returncode == 1 and res.stdout == b""
    assert "needs server.base_url" in res.stderr.decode()
    res = transfer(root, VERSION, config="[ssh]\nlfs_transfer = false\n")
    assert res.returncode == 1 and res.stdout == b""
    assert "git-lfs-transfer is turned off on this server (ssh.lfs_transfer)" in res.stderr.decode()


def test_hg_session_runs_without_asyncio_or_aiohttp(root):
    """`lfsserve ssh` starts once per hg command: what its hg session imports is start-up CPU on
    every clone and pull (bench/ssh_bench.py). A whole read session (handshake, heads) through the
    forced command imports neither the HTTP stack nor asyncio (it runs without an event loop; only
    writes start one)."""
    init = subprocess.run([sys.executable, "-m", "lfsserve", "init", "--root", str(root), "team/app"],
                          capture_output=True, cwd=REPO_ROOT, timeout=120, check=False)
    assert init.returncode == 0, init
    cfg = root.parent / "config.toml"
    cfg.write_text(f'[server]\nroot = "{root}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("LFSSERVE_")}
    env["SSH_ORIGINAL_COMMAND"] = "hg -R team/app serve --stdio"
    null = b"0" * 40
    session = b"hello\nbetween\npairs 81\n" + null + b"-" + null + b"heads\n"
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "lfsserve", "ssh", "--config", str(cfg),
                          "--user", "alice"], input=session, cwd=REPO_ROOT, env=env, capture_output=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    length, _, rest = res.stdout.partition(b"\n")
    hello, rest = rest[:int(length)], rest[int(length):]
    assert hello.startswith(b"capabilities: ") and b" unbundle=" in hello, hello
    assert rest == b"1\n\n" + b"41\n" + null + b"\n", rest
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.decode().splitlines()
                if line.startswith("import time:")}
    assert "lfsserve.ssh.hg" in imported and "lfsserve.wire.v1.commands" in imported, sorted(imported)
    assert not {m for m in imported if m.split(".")[0] in ("asyncio", "aiohttp")}, sorted(imported)


def test_upload_queues_signed_lfs_webhook_a_server_delivers(root, lfsserve):
    """An object uploaded over git-lfs-transfer queues the `lfs` webhook event in the durable
    queue (the SSH session does not deliver); a failed upload queues nothing; the server started
    afterwards delivers the event, signed, to the receiver."""
    import hmac
    import json

    from .test_webhooks_rights import Receiver

    receiver = Receiver()
    receiver.accepting = True
    try:
        hooks = (f'[webhooks]\nretry_base = 0.5\ntimeout = 5.0\n[[webhooks.targets]]\nurl = "{receiver.url}"\n'
                 f'repos = "team/**"\nevents = ["lfs"]\nsecret = "s3cret"\n')
        data = os.urandom(10_000)
        o = oid(data)
        bad = os.urandom(100)
        res = transfer(root, VERSION + msg(f"put-object {oid(bad)}", f"size={len(bad)}", data=bad[::-1]) + QUIT,
                       config=hooks)  # the content does not match its oid: refused, no event
        res = transfer(root, VERSION + msg(f"put-object {o}", f"size={len(data)}", data=data) + QUIT, config=hooks)
        assert res.returncode == 0 and parse(res.stdout)[1] == ["status 200"], res.stderr
        cfg = root.parent / "config.toml"
        listed = subprocess.run([sys.executable, "-m", "lfsserve", "webhooks", "list", "--config", str(cfg)],
                                capture_output=True, cwd=REPO_ROOT, timeout=120, check=True).stdout.decode()
        rows = [line for line in listed.splitlines()[1:] if line.strip()]
        assert len(rows) == 1 and " lfs " in rows[0] and " pending " in rows[0], listed
        assert receiver.attempts == []

        lfsserve(root=root, config=f'[server]\nroot = "{root}"\n' + hooks)
        receiver.wait(lambda: len(receiver.accepted) == 1)
        event = receiver.accepted[0]
        assert (event["event"], event["repo"], event["user"], event["lfs_oids"]) == ("lfs", "team/app", "alice", [o])
        headers, body = receiver.attempts[0]
        sig = {k.lower(): v for k, v in headers.items()}["x-lfsserve-signature"]
        assert sig == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert json.loads(body) == event
    finally:
        receiver.close()
