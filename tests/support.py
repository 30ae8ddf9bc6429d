"""Test support: run a real `lfsserve serve` subprocess and real clients (hg, git, git-lfs) against it.

Interop tests skip when an external program is missing, with a reason that says what to install.
With LFSSERVE_NO_SKIP=1 (set by .ci/run) a missing program fails the test instead: CI must prove
the real peers were exercised, not silently skip them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
HG = str(Path(sys.executable).with_name("hg"))


def require(condition: bool, reason: str) -> None:
    """Skip loudly (or fail, under LFSSERVE_NO_SKIP=1) unless `condition` holds."""
    if condition:
        return
    message = f"SKIPPED, NOT TESTED: {reason}"
    if os.environ.get("LFSSERVE_NO_SKIP") == "1":
        pytest.fail(f"{message} (LFSSERVE_NO_SKIP=1 forbids skipping)")
    print(f"\n*** {message} ***", file=sys.stderr)
    pytest.skip(message)


def require_program(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed ({install_hint})")
    return path  # type: ignore[return-value]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LISTENING = re.compile(r"listening on (http://\S+)")


@dataclass
class LfsserveProcess:
    """A `lfsserve serve` subprocess. `url` has no trailing slash."""

    root: Path
    proc: subprocess.Popen
    url: str
    output: list[str] = field(default_factory=list)
    stopped: bool = False  # stop() was called: exiting is expected, not a crash

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return "".join(self.output)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_lfsserve(root: Path, *args: str, config: str | None = None, env: dict | None = None,
                   anonymous: str | None = "write", timeout: float = 30, cwd: Path | None = None
                   ) -> LfsserveProcess:
    """Start `python -m lfsserve serve --root ROOT --port 0 ...` and wait until it listens.

    `config` is TOML text written to ROOT/../<name>.toml and passed with --config. The harness
    defaults to `--anonymous write` (the product's default is read). `cwd` runs the server there
    (relative paths in its arguments and config), still with this checkout's lfsserve.
    """
    root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "lfsserve", "serve", "--root", str(root), "--port", "0"]
    if anonymous is not None:
        cmd += ["--anonymous", anonymous]
    if config is not None:
        cfg = root.parent / f"{root.name}-config.toml"
        cfg.write_text(config)
        cmd += ["--config", str(cfg)]
    cmd += list(args)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LFSSERVE_")}
    full_env.update(env or {})
    full_env["PYTHONUNBUFFERED"] = "1"
    if cwd is not None:
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), full_env.get("PYTHONPATH")]))
    proc = subprocess.Popen(cmd, cwd=str(cwd or REPO_ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=full_env)
    output: list[str] = []
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if not found:
                m = _LISTENING.search(line)
                if m:
                    found.append(m.group(1))
                    ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout) or not found:
        proc.kill()
        raise RuntimeError(f"lfsserve did not start: {' '.join(cmd)}\n{''.join(output)}")
    return LfsserveProcess(root=root, proc=proc, url=found[0], output=output)


def hg_env(home: Path, hgrc: str = "") -> dict[str, str]:
    """Environment for a real `hg` isolated from the user's config: its own HOME and hgrc."""
    home.mkdir(parents=True, exist_ok=True)
    rc = home / "hgrc"
    rc.write_text("[ui]\nusername = Test User <test@example.com>\ninteractive = False\n"
                  "[lfs]\nusercache = " + str(home / "lfs-usercache") + "\n" + hgrc)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HG", "LFSSERVE_"))}
    env.update({"HOME": str(home), "HGRCPATH": str(rc), "HGPLAIN": "1", "HGENCODING": "utf-8",
                "LANG": "C.UTF-8", "TZ": "UTC"})
    return env


def run(cmd: list[str], cwd: Path | str | None = None, env: dict | None = None, check: bool = True,
        input: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command, capturing bytes output; on failure the assertion shows everything."""
    res = subprocess.run(cmd, cwd=cwd, env=env, input=input, capture_output=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(
            f"command failed ({res.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{res.stdout.decode(errors='replace')}\n"
            f"--- stderr ---\n{res.stderr.decode(errors='replace')}")
    return res


HG593_VENV = Path(os.environ.get("LFSSERVE_HG593_VENV", Path.home() / ".cache" / "lfsserve" / "hg593"))


def _build_hg593(venv: Path) -> None:
    """Install Mercurial 5.9.3 from its sdist, pure Python (its C extensions do not build on 3.11)."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="hg593-build-"))
    try:
        if not (venv / "bin" / "python").exists():
            run([sys.executable, "-m", "venv", str(venv)])
        run([str(venv / "bin" / "python"), "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "-d", str(work), "mercurial==5.9.3"], timeout=600)
        (sdist,) = work.glob("mercurial-5.9.3.tar.gz")
        run(["tar", "xzf", str(sdist), "-C", str(work)])
        run([str(venv / "bin" / "python"), "setup.py", "--pure", "install"], cwd=work / "mercurial-5.9.3",
            timeout=900)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def hg593_exe() -> str:
    """Path of a Mercurial 5.9.3 (pure) `hg`, building the cached venv on first use.

    The last Mercurial series with the wire protocol v2 client, and a cg02-only client for v1.
    Cached in ~/.cache/lfsserve/hg593 (LFSSERVE_HG593_VENV overrides); concurrent test
    processes wait for one build.
    """
    import fcntl

    exe = HG593_VENV / "bin" / "hg"
    HG593_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(str(HG593_VENV) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ok = exe.exists() and b"version 5.9.3" in subprocess.run(
            [str(exe), "--version"], capture_output=True, env=hg_env(HG593_VENV / "home")).stdout
        if not ok:
            try:
                _build_hg593(HG593_VENV)
            except (AssertionError, subprocess.SubprocessError, ValueError) as exc:
                require(False, f"could not build Mercurial 5.9.3 (pure) into {HG593_VENV}: {exc}")
    return str(exe)


class Hg:
    """The real Mercurial 7.2.4 client, with an isolated configuration."""

    def __init__(self, home: Path, hgrc: str = "", exe: str = HG):
        self.exe = exe
        self.env = hg_env(home, hgrc)

    def __call__(self, *args: str, cwd: Path | str | None = None, check: bool = True,
                 input: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return run([self.exe, *args], cwd=cwd, env=self.env, check=check, input=input, timeout=timeout)

    def out(self, *args: str, cwd: Path | str | None = None) -> str:
        return self(*args, cwd=cwd).stdout.decode("utf-8")
