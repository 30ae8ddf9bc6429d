"""The README's quick start and its "Users and permissions" section, followed step by step.

The commands and the configuration are read from README.md itself and run as written, with real
hg, in a fresh directory: a README that drifts from the product fails here. What the test has
to change is said where it does it: the port (the README's 8080 -> a free one), the password
(typed at a prompt in the README, given with --password-stdin here), and `lfsserve` is this
checkout's (`python -m lfsserve` through a wrapper on PATH).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ..support import REPO_ROOT, Hg

pytestmark = pytest.mark.interop

README = REPO_ROOT / "README.md"
README_URL = "http://127.0.0.1:8080"
PASSWORD = "correct horse battery"
TIMEOUT = 120  # a hang fails the test instead of the suite


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def blocks(text: str) -> list[tuple[str, str]]:
    """The fenced code blocks of `text`, as (language, content)."""
    return re.findall(r"```(\w*)\n(.*?)```", text, flags=re.DOTALL)


def commands(block: str) -> list[str]:
    """The shell commands of a block, without comments and blank lines."""
    out = []
    for line in block.splitlines():
        line = re.sub(r"(^|\s+)#.*$", "", line).strip()
        if line:
            out.append(line)
    return out


def test_readme_quick_start_then_users_and_permissions(lfsserve, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "lfsserve"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO_ROOT))} exec "
                       f"{shlex.quote(sys.executable)} -m lfsserve \"$@\"\n")
    wrapper.chmod(0o755)
    hg = Hg(tmp_path / "home")
    env = {**hg.env, "PATH": f"{bindir}{os.pathsep}{hg.env['PATH']}"}
    servers = []

    def serve(line: str):
        args = shlex.split(line)
        assert args[:2] == ["lfsserve", "serve"], line
        for s in servers:
            s.stop()
        # The README's server listens on 8080 and keeps its data in ./data; the test's on a free
        # port, with --root naming that same ./data.
        server = lfsserve(*args[2:], root=work / "data", cwd=work, anonymous=None)
        servers.append(server)
        return server

    def sh(line: str, cwd: Path, input: bytes | None = None) -> subprocess.CompletedProcess:
        line = line.replace(README_URL, servers[-1].url)
        res = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, input=input, capture_output=True, check=False,
                             timeout=TIMEOUT)
        assert res.returncode == 0, f"{line}\n{res.stdout.decode()}\n{res.stderr.decode()}"
        return res

    # Quick start: `lfsserve serve` serves ./data; anonymous clients may read, nobody may write.
    intro = README.read_text(encoding="utf-8").split("\n## ")[0]
    (quick,) = [part.strip() for lang, b in blocks(intro) if lang == "sh" for c in commands(b)
                for part in c.split("&&") if part.strip().startswith("lfsserve serve")]
    server = serve(quick)
    assert "who may write: nobody" in server.log()

    users = section("Users and permissions")
    steps = blocks(users)
    langs = [lang for lang, _ in steps]
    # adduser (and token), the TOML file, the restart, init + clone, the hgrc, commit + push, a rule.
    assert langs[:6] == ["sh", "toml", "sh", "sh", "ini", "sh"], langs
    cwd = work
    for line in commands(steps[0][1]):
        if line.startswith("lfsserve adduser"):
            sh(line + " --password-stdin", cwd, input=PASSWORD.encode() + b"\n")
        else:
            sh(line, cwd)
    config_name = re.search(r"a file `([^`]+\.toml)`", users).group(1)
    (work / config_name).write_text(steps[1][1])
    (restart,) = commands(steps[2][1])
    assert config_name in restart
    server = serve(restart)
    assert "who may write: every authenticated user" in server.log(), server.log()
    for line in commands(steps[3][1]):
        if line.startswith("cd "):
            cwd = cwd / shlex.split(line)[1]
        else:
            sh(line, cwd)
    hgrc = re.sub(r"(?m)^(\w+\.password = ).*$", lambda m: m.group(1) + PASSWORD, steps[4][1])
    with open(cwd / ".hg" / "hgrc", "a") as fh:
        fh.write("\n" + hgrc.replace(README_URL, server.url))
    for line in commands(steps[5][1]):
        res = sh(line, cwd)
    assert b"added 1 changesets" in res.stdout, res.stdout

    # A fresh anonymous clone has the pushed file; an anonymous push is refused as the README says.
    anon = Hg(tmp_path / "anon-home")
    clone = tmp_path / "anon-clone"
    anon("clone", f"{server.url}/team/app", str(clone), timeout=TIMEOUT)
    assert (clone / "hello.txt").read_text() == "hello\n"
    (clone / "hello.txt").write_text("anonymous change\n")
    anon("commit", "-m", "anonymous", cwd=clone)
    refused = anon("push", cwd=clone, check=False, timeout=TIMEOUT)
    said = re.search(r"A push without credentials is refused \(`([^`]+)`\)", users).group(1)
    assert refused.returncode != 0 and said.encode() in refused.stderr, refused.stderr
    assert "Traceback" not in server.log()
