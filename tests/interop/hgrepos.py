"""Repositories for the wire v1 interop tests, made by the real hg client, and ways to compare them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..support import Hg, LfsserveProcess

NON_ASCII = "dir/ünïcode-naïve ✓.txt"


def build_rich_repo(hg: Hg, path: Path) -> None:
    """A small history with everything a changegroup has to carry: merges, copies and renames,
    binary, executable and symlink files, a non-ASCII path, a named branch, a tag, a bookmark,
    public, draft and secret changesets."""
    hg("init", str(path))
    t = [1700000000]

    def commit(msg: str, *extra: str) -> None:
        t[0] += 60
        hg("commit", "-q", "-A", "-m", msg, "-d", f"{t[0]} 0", *extra, cwd=path)

    (path / "README").write_text("hello\n" * 20)
    (path / "bin.dat").write_bytes(bytes(range(256)) * 8 + b"\0\0\xff")
    (path / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(path / "run.sh", 0o755)
    os.symlink("README", path / "link-to-readme")
    (path / "dir").mkdir()
    (path / NON_ASCII).write_text("non-ascii path\n")
    commit("initial: text, binary, executable, symlink, non-ascii path")
    (path / "README").write_text("hello\n" * 20 + "more\n")
    (path / "dir" / "a.txt").write_text("a\n" * 50)
    commit("edit README, add dir/a.txt")
    hg("cp", "README", "README.copy", cwd=path)
    hg("mv", "dir/a.txt", "dir/b.txt", cwd=path)
    commit("copy README, rename dir/a.txt -> dir/b.txt")
    hg("branch", "-q", "stable", cwd=path)
    (path / "stable.txt").write_text("stable\n")
    commit("start named branch stable")
    hg("update", "-q", "default", cwd=path)
    (path / "bin.dat").write_bytes(bytes(range(255, -1, -1)) * 9)
    commit("change binary file")
    hg("merge", "-q", "stable", cwd=path)
    commit("merge stable into default")
    t[0] += 60
    hg("tag", "-d", f"{t[0]} 0", "v1.0", cwd=path)
    hg("bookmark", "-r", ".", "feature", cwd=path)
    (path / NON_ASCII).write_text("non-ascii path, edited\n")
    commit("edit non-ascii file")
    hg("phase", "--public", "-r", "3", cwd=path)
    (path / "secret.txt").write_text("not for the server's clients\n")
    commit("a secret changeset", "--secret")
    hg("update", "-q", "feature", cwd=path)


def install(server: LfsserveProcess, source: Path, name: str) -> Path:
    """Put a copy of an hg-made repository where the server serves `name` from."""
    dest = server.root / "repos" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, dest, symlinks=True)
    return dest


LOG_TEMPLATE = "{node} {phase} {branch} {bookmarks} {tags}\n"


def history(hg: Hg, repo: Path, revs: str = "not secret()") -> str:
    """`hg log` with LOG_TEMPLATE, less the `tip` tag (a secret changeset is the source's tip)."""
    out = hg.out("log", "-R", str(repo), "-r", revs, "-T", LOG_TEMPLATE)
    return "".join(" ".join(w for w in line.split(" ") if w != "tip").rstrip() + "\n" for line in out.splitlines())


def manifests(hg: Hg, repo: Path, revs: str = "not secret()") -> list[str]:
    out = []
    for node in hg.out("log", "-R", str(repo), "-r", revs, "-T", "{node}\n").split():
        out.append(hg.out("manifest", "--debug", "-R", str(repo), "-r", node))
    return out


def assert_same(hg: Hg, a: Path, b: Path, revs: str = "not secret()") -> None:
    """Both repositories hold the same changesets with the same phases, branches, bookmarks, tags
    and manifests (file nodes, flags, paths)."""
    ha, hb = history(hg, a, revs), history(hg, b, revs)
    assert ha == hb, f"history differs:\n--- {a}\n{ha}\n--- {b}\n{hb}"
    assert manifests(hg, a, revs) == manifests(hg, b, revs)


def verify(hg: Hg, repo: Path) -> None:
    res = hg("verify", "-q", "-R", str(repo), check=False)
    assert res.returncode == 0, f"hg verify {repo} failed:\n{res.stdout.decode()}\n{res.stderr.decode()}"
