"""SSH session handoff (ssh/forward.py, ssh/handoff.py) with a real `lfsserve serve`, driven the
way sshd runs the forced command (`lfsserve ssh --config ... --user ...` with SSH_ORIGINAL_COMMAND,
stdin and stdout pipes), without sshd: what the server takes, what it declines (the forced command
then serves the session itself), and what happens when the server goes away or is flooded.
The hg clients through a real sshd in both modes are in test_ssh.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..support import REPO_ROOT, hg_env, run

pytestmark = pytest.mark.interop

HANDED_OVER = "SSH session handed over"
NULL_PAIR = b"-".join([b"0" * 40] * 2)
HANDSHAKE = b"hello\nbetween\npairs %d\n%s" % (len(NULL_PAIR), NULL_PAIR)


def _config_text(root: Path, extra: str = "") -> str:
    return (f'[server]\nroot = "{root}"\nshutdown_grace = 3\n[auth]\nanonymous = "none"\n'
            f'[[auth.rules]]\nrepos = "team/**"\nread = ["bob"]\nwrite = ["alice"]\n{extra}')


@pytest.fixture
def handoff_site(lfsserve, tmp_path):
    """(start_server, config path, root): a repository team/app with one changeset."""
    root = tmp_path / "site"
    res = run([sys.executable, "-m", "lfsserve", "init", "--root", str(root), "team/app"], cwd=REPO_ROOT)
    assert res.returncode == 0
    work = tmp_path / "work"
    env = hg_env(tmp_path / "home")
    run(["hg", "init", str(work)], env=env)
    (work / "a.txt").write_text("a\n")
    run(["hg", "commit", "-A", "-m", "a", "-R", str(work)], env=env)
    run(["hg", "push", "-R", str(work), str(root / "repos" / "team" / "app")], env=env)
    config = root.parent / f"{root.name}-config.toml"

    def start(extra: str = "", env: dict | None = None):
        return lfsserve(root=root, anonymous=None, config=_config_text(root, extra), env=env)
    return start, config, root


def _forced(config: Path, user: str, command: str, tmp_path: Path, extra_env: dict | None = None
            ) -> subprocess.Popen:
    """`lfsserve ssh` as sshd starts it: pipes for stdin, stdout and stderr."""
    env = {**hg_env(tmp_path / "home"), "SSH_ORIGINAL_COMMAND": command, "SSH_CLIENT": "192.0.2.7 50000 22",
           **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "lfsserve", "ssh", "--config", str(config), "--user", user],
                            cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _talk(config: Path, user: str, data: bytes, tmp_path: Path, repo: str = "team/app",
          extra_env: dict | None = None) -> tuple[int, bytes, bytes]:
    p = _forced(config, user, f"hg -R {repo} serve --stdio", tmp_path, extra_env)
    out, err = p.communicate(data, timeout=120)
    return p.returncode, out, err


def _handed(server, expect: int | None = None) -> int:
    """How many sessions the server took; with `expect`, waits (briefly) for that many: the
    server's log reaches this test through a reader thread."""
    if expect is not None:
        _wait_for(lambda: server.log().count(HANDED_OVER) >= expect)
    return server.log().count(HANDED_OVER)


def _wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_server_serves_the_session_and_refuses_as_the_forced_command_would(handoff_site, tmp_path):
    start, config, root = handoff_site
    server = start()
    sock = root / "run" / "ssh.sock"
    assert sock.exists() and sock.stat().st_mode & 0o777 == 0o600
    assert (root / "run").stat().st_mode & 0o777 == 0o700

    status, out, err = _talk(config, "bob", HANDSHAKE, tmp_path)
    assert status == 0, err
    assert b"capabilities: " in out and b"unbundle=" in out, out
    assert _handed(server, 1) == 1 and "bob, hg -R team/app" in server.log()

    # refusals say the forced command's words on stderr, exit 1 (no session started)
    status, out, err = _talk(config, "mallory", HANDSHAKE, tmp_path)
    assert status == 1 and out == b"" and b"lfsserve: user mallory may not read team/app" in err, err
    status, out, err = _talk(config, "bob", HANDSHAKE, tmp_path, repo="team/nope")
    assert status == 255 and b"abort: repository team/nope not found" in err, err
    p = _forced(config, "bob", "hg -R team/app serve --stdio; rm -rf /", tmp_path)
    out, err = p.communicate(b"", timeout=60)
    assert p.returncode == 1 and b"lfsserve: " in err and out == b"", err
    assert _handed(server) == 2   # the missing repository's session was the server's to refuse

    # a read-only user's push: hg's out-of-band error from the server's session
    status, out, err = _talk(config, "bob", HANDSHAKE + b"unbundle\nheads 5\nforce" + b"heads\n", tmp_path)
    assert status == 0 and err == b"user bob may not write to team/app\n-\n", err
    assert b"\n\n41\n" in out, out   # the empty answer, then the session went on
    assert server.alive()


def test_another_configuration_or_handoff_off_is_served_by_the_forced_command(handoff_site, tmp_path):
    start, config, _root = handoff_site
    server = start()
    other = tmp_path / "other.toml"
    other.write_text(config.read_text())   # the same settings, another file: not this server's
    for cfg, env in ((other, None), (config, {"LFSSERVE_SSH_HANDOFF": "0"})):
        status, out, err = _talk(cfg, "bob", HANDSHAKE, tmp_path, extra_env=env)
        assert status == 0 and b"capabilities: " in out, err
        p = _forced(cfg, "bob", "git-lfs-authenticate team/app download", tmp_path, env)
        out, err = p.communicate(b"", timeout=60)
        assert p.returncode == 1 and b"server.base_url" in err, err   # no base_url in this configuration
    assert _handed(server) == 0


def test_git_lfs_commands_are_answered_by_the_server(handoff_site, tmp_path):
    start, config, _root = handoff_site
    # base_url comes from the server's environment, which the forced command does not share:
    # only the server can answer git-lfs-authenticate
    server = start("[ssh]\nlfs_transfer = false\n", env={"LFSSERVE_BASE_URL": "https://hg.example.com"})
    p = _forced(config, "bob", "git-lfs-authenticate team/app download", tmp_path)
    out, err = p.communicate(b"", timeout=60)
    assert p.returncode == 0, err
    answer = json.loads(out)
    assert answer["href"] == "https://hg.example.com/team/app.git/info/lfs"
    assert answer["header"]["Authorization"].startswith("Bearer ") and answer["expires_in"] > 0
    assert _handed(server, 1) == 1 and "bob, git-lfs-authenticate team/app download" in server.log()
    # a reader's upload token is refused before anything is handed over
    p = _forced(config, "bob", "git-lfs-authenticate team/app upload", tmp_path)
    out, err = p.communicate(b"", timeout=60)
    assert p.returncode == 1 and out == b"" and b"may not write" in err, err
    # with ssh.lfs_transfer off the server declines git-lfs-transfer; the forced command says why
    p = _forced(config, "alice", "git-lfs-transfer team/app upload", tmp_path)
    out, err = p.communicate(b"", timeout=60)
    assert p.returncode == 1 and b"git-lfs-transfer is turned off" in err, err
    assert _handed(server) == 1


def test_garbage_on_the_socket_leaves_the_server_serving(handoff_site, tmp_path):
    start, config, root = handoff_site
    server = start()
    path = str(root / "run" / "ssh.sock")
    for junk in (b"", b"GET / HTTP/1.1\r\n\r\n", b"lfsserve-ssh-handoff 1\n\xff\xff\xff\xff",
                 b"lfsserve-ssh-handoff 1\n\x00\x00\x00\x05{}{}{"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            if junk:
                s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(30)
            assert s.recv(100) == b"fallback\n"   # not understood: serve it yourself
    # a well-formed message without descriptors
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        body = b'{"user": "bob", "command": "hg -R team/app serve --stdio", "config": "", "root": ""}'
        s.sendall(b"lfsserve-ssh-handoff 1\n" + len(body).to_bytes(4, "big") + body)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(30)
        assert s.recv(100) == b"fallback\n"
    status, out, err = _talk(config, "bob", HANDSHAKE, tmp_path)
    assert status == 0 and b"capabilities: " in out, err
    assert _handed(server, 1) == 1 and server.alive()


def test_sessions_beyond_the_limit_serve_themselves(handoff_site, tmp_path):
    start, config, _root = handoff_site
    server = start("[ssh]\nhandoff_sessions = 1\n")
    held = _forced(config, "bob", "hg -R team/app serve --stdio", tmp_path)
    assert held.stdin is not None and held.stdout is not None
    held.stdin.write(b"hello\n")
    held.stdin.flush()
    size = int(held.stdout.readline())
    assert b"capabilities: " in held.stdout.read(size)
    assert _handed(server, 1) == 1   # the server holds this session open
    status, out, err = _talk(config, "bob", HANDSHAKE, tmp_path)
    assert status == 0 and b"capabilities: " in out, err
    assert _handed(server) == 1   # the second was served by its forced command
    held.stdin.close()
    assert held.wait(60) == 0
    status, out, err = _talk(config, "bob", HANDSHAKE, tmp_path)
    assert status == 0 and _handed(server, 2) == 2   # room again


def test_server_killed_mid_session_then_stale_socket_then_restart(handoff_site, tmp_path):
    start, config, root = handoff_site
    server = start()
    held = _forced(config, "bob", "hg -R team/app serve --stdio", tmp_path)
    assert held.stdin is not None and held.stdout is not None and held.stderr is not None
    held.stdin.write(b"hello\n")
    held.stdin.flush()
    size = int(held.stdout.readline())
    held.stdout.read(size)
    server.stop(signal.SIGKILL)
    assert held.wait(60) == 1
    assert b"the server ended this session before it was over" in held.stderr.read()

    # the socket of the dead server is left behind: forced commands serve themselves meanwhile
    sock = root / "run" / "ssh.sock"
    assert sock.exists()
    status, out, err = _talk(config, "bob", HANDSHAKE, tmp_path)
    assert status == 0 and b"capabilities: " in out, err

    # a new server replaces the stale socket and takes sessions again
    server = start()
    status, out, err = _talk(config, "bob", HANDSHAKE, tmp_path)
    assert status == 0 and b"capabilities: " in out, err
    assert _handed(server, 1) == 1


def test_shutdown_removes_the_socket_and_waits_for_sessions(handoff_site, tmp_path):
    start, config, root = handoff_site
    server = start()
    sock = root / "run" / "ssh.sock"
    held = _forced(config, "bob", "hg -R team/app serve --stdio", tmp_path)
    assert held.stdin is not None and held.stdout is not None
    held.stdin.write(b"hello\n")
    held.stdin.flush()
    size = int(held.stdout.readline())
    held.stdout.read(size)
    server.proc.send_signal(signal.SIGTERM)
    _wait_for(lambda: not sock.exists())   # no new sessions handed over from here
    # the session in progress still answers within the grace period (3 s here) ...
    held.stdin.write(b"heads\n")
    held.stdin.flush()
    assert held.stdout.readline() == b"41\n"
    held.stdin.close()
    assert held.wait(60) == 0
    assert server.proc.wait(60) == 0
    server.stopped = True
    # ... and the forced commands serve themselves once the server is gone
    status, out, err = _talk(config, "bob", HANDSHAKE, tmp_path)
    assert status == 0 and b"capabilities: " in out, err


def test_socket_path_is_checked_and_a_foreign_file_is_left_alone(handoff_site, tmp_path):
    start, config, root = handoff_site
    (root / "run").mkdir(mode=0o700)
    (root / "run" / "ssh.sock").write_text("not a socket")
    server = start()
    assert "cannot listen on" in server.log() and (root / "run" / "ssh.sock").read_text() == "not a socket"
    status, out, err = _talk(config, "bob", HANDSHAKE, tmp_path)
    assert status == 0 and b"capabilities: " in out, err
    assert _handed(server) == 0
    os.unlink(root / "run" / "ssh.sock")
