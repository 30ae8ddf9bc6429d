"""A real nginx (own prefix, config from deploy/nginx.conf) in front of a real lfsserve, for interop tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..support import REPO_ROOT, free_port, require_interop_marker, require_program

TEMPLATE = REPO_ROOT / "deploy" / "nginx.conf"
MOUNT = "/hg"  # the sub-path deploy/nginx.conf mounts lfsserve under


@dataclass
class Nginx:
    proc: subprocess.Popen
    prefix: Path
    port: int

    @property
    def url(self) -> str:
        """Public base URL of lfsserve through nginx (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}{MOUNT}"

    def error_log(self) -> str:
        p = self.prefix / "error.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def access_log(self) -> str:
        p = self.prefix / "access.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def site_config(backend_port: int | Sequence[int], listen_port: int) -> str:
    """deploy/nginx.conf with the backend(s) and listen address of this test; fails if it drifted.
    Several backend ports: an upstream of several lfsserve instances."""
    text = TEMPLATE.read_text()
    ports = [backend_port] if isinstance(backend_port, int) else list(backend_port)
    servers = "\n    ".join(f"server 127.0.0.1:{p};" for p in ports)
    for old, new in (("server 127.0.0.1:8080;", servers),
                     ("listen 80;", f"listen 127.0.0.1:{listen_port};")):
        assert text.count(old) == 1, f"deploy/nginx.conf no longer has exactly one {old!r}"
        text = text.replace(old, new)
    return text


def start_nginx(prefix: Path, backend_port: int | Sequence[int], timeout: float = 20) -> Nginx:
    """nginx in front of `backend_port` (or an upstream of several), on a free port (another one if
    that port is taken meanwhile, e.g. by another test worker: free_port() only says it was free a
    moment ago)."""
    require_interop_marker("nginx")
    exe = require_program("nginx", "apt-get install -y nginx-light")
    for _ in range(4):
        try:
            return _start_nginx(exe, prefix, backend_port, free_port(), timeout)
        except PortTaken:
            continue
    raise RuntimeError("nginx: every free port tried was taken before it could bind")


class PortTaken(Exception):
    pass


def _start_nginx(exe: str, prefix: Path, backend_port: int | Sequence[int], port: int, timeout: float) -> Nginx:
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "error.log").unlink(missing_ok=True)  # what a previous attempt logged
    (prefix / "lfsserve.conf").write_text(site_config(backend_port, port))
    temp = "\n".join(f"    {kind}_temp_path {prefix / kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # As root, nginx's workers would switch to "nobody", who cannot enter pytest's 0700 tmp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(
        f"{user}worker_processes 1;\npid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'} info;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n    access_log {prefix / 'access.log'};\n{temp}\n    include {prefix / 'lfsserve.conf'};\n}}\n")
    proc = subprocess.Popen([exe, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e",
                             str(prefix / "error.log"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    nginx = Nginx(proc, prefix, port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if "Address already in use" in nginx.error_log():
                raise PortTaken(port)
            raise RuntimeError(f"nginx exited ({proc.returncode}): {proc.stderr.read().decode(errors='replace')}"
                               f"\n{nginx.error_log()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return nginx
        except OSError:
            time.sleep(0.05)
    nginx.stop()
    raise RuntimeError(f"nginx did not listen on {port} within {timeout}s\n{nginx.error_log()[-2000:]}")
