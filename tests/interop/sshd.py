"""A real OpenSSH server (Debian's openssh-server) whose keys run `lfsserve ssh`, for interop tests.

sshd runs as this (root) user on 127.0.0.1 with its own host key, config and pid file; clients
log in as root with generated keys. The forced commands run a wrapper script that starts this
checkout's lfsserve with the test's python (sshd gives commands a minimal environment). The
wrapper lives under ~/.cache, not /tmp: sshd refuses an AuthorizedKeysCommand with a group- or
world-writable directory on its path.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..support import REPO_ROOT, free_port, require, require_program, run

SSHD = "/usr/sbin/sshd"


def make_key(directory: Path, name: str) -> Path:
    """A new ed25519 key pair without passphrase; returns the private key's path (.pub next to it)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / name
    run([require_program("ssh-keygen", "apt-get install -y openssh-client"), "-q", "-t", "ed25519", "-N", "",
         "-C", f"{name}@test", "-f", str(key)])
    return key


def make_wrapper() -> Path:
    """An executable that runs `python -m lfsserve` from this checkout, in a root-owned 0755 dir."""
    base = Path.home() / ".cache" / "lfsserve"
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    directory = Path(tempfile.mkdtemp(prefix="ssh-wrapper-", dir=base))
    os.chmod(directory, 0o755)
    wrapper = directory / "lfsserve"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={REPO_ROOT} exec {sys.executable} -m lfsserve \"$@\"\n")
    os.chmod(wrapper, 0o755)
    return wrapper


@dataclass
class Sshd:
    proc: subprocess.Popen
    port: int
    directory: Path
    known_hosts: Path

    def log(self) -> str:
        p = self.directory / "sshd.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def ssh_command(self, identity: Path) -> str:
        """For GIT_SSH_COMMAND / hg's ui.ssh (the port comes from the URL)."""
        return (f"ssh -F /dev/null -o BatchMode=yes -o UserKnownHostsFile={self.known_hosts} "
                f"-o StrictHostKeyChecking=yes -o IdentityFile={identity} -o IdentitiesOnly=yes")

    def ssh(self, identity: Path, command: str, input: bytes | None = None) -> subprocess.CompletedProcess:
        """Run `command` on the server as root with `identity` (no shell on this side)."""
        return run(self.ssh_command(identity).split() + ["-T", "-p", str(self.port), "root@127.0.0.1", command],
                   input=input, check=False, timeout=120)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_sshd(directory: Path, *, authorized_keys: Path | None = None, keys_command: str | None = None) -> Sshd:
    """sshd -D on a free port of 127.0.0.1; keys from `authorized_keys` or `keys_command`."""
    require(os.path.exists(SSHD), f"{SSHD} is not installed (apt-get install -y openssh-server)")
    require(os.geteuid() == 0, "the sshd tests log in as root and need to run as root")
    require_program("ssh", "apt-get install -y openssh-client")
    directory.mkdir(parents=True, exist_ok=True)
    # The privilege separation directory sshd insists on.
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    host_key = make_key(directory, "host_ed25519")
    port = free_port()
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} " + " ".join(
        host_key.with_suffix(".pub").read_text().split()[:2]) + "\n")
    lines = [
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {directory / 'sshd.pid'}",
        "StrictModes no", "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "LogLevel VERBOSE",
        f"AuthorizedKeysFile {authorized_keys or 'none'}",
    ]
    if keys_command:
        lines += [f"AuthorizedKeysCommand {keys_command}", "AuthorizedKeysCommandUser root"]
    config = directory / "sshd_config"
    config.write_text("\n".join(lines) + "\n")
    with open(directory / "sshd.log", "wb") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited ({proc.returncode}):\n{(directory / 'sshd.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return Sshd(proc, port, directory, known_hosts)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"sshd did not listen on {port}:\n{(directory / 'sshd.log').read_text()}")


def remove_wrapper(wrapper: Path) -> None:
    shutil.rmtree(wrapper.parent, ignore_errors=True)
