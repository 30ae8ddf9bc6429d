"""Repositories built with the real hg 7.2.4 for the engine tests (built once per session)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from tests.support import Hg

HERE = Path(__file__).resolve().parent

# names that exercise the store encoding: case folding, reserved characters and device names,
# leading dots and spaces, directories that look like revlogs, non-ASCII, hashed long paths
ODD_NAMES = [
    "Upper/CASE.TXT",
    "aux.txt",
    "con/prn.c",
    "dir.i/file",
    "x.d/y.hg/z",
    ".hidden/.dot",
    "trailing. /space .txt",
    "Ünïcödé/ファイル.txt",
    "colon:question?.txt",
    "deep/" + "/".join(f"Directory{i:02d}WithAVeryLongName" for i in range(8)) + "/Leaf File.TXT",
    "wide/" + "x" * 200 + ".dat",
]


def build_varied(hg: Hg, path: Path, *, config: list[str] = ()) -> Path:
    """Merges, named and closed branches, copies and renames, binary, exec and symlink flags,
    odd file names, tags, bookmarks, public/draft/secret phases, a split filelog."""
    cfg = [a for c in config for a in ("--config", c)]
    hg("init", *cfg, str(path))
    w = path
    rnd = random.Random(7)

    def commit(msg: str, *extra: str, user: str = "Alice <alice@example.com>", date: str = "1000000 -3600"):
        hg("commit", "-A", "-m", msg, "-u", user, "-d", date, *extra, cwd=w)

    (w / "a.txt").write_text("".join(f"line {i}\n" for i in range(50)))
    commit("initial")
    (w / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(w / "run.sh", 0o755)
    os.symlink("a.txt", w / "link")
    commit("exec and symlink", date="1000100 7200")
    (w / "bin.dat").write_bytes(bytes(range(256)) * 8 + b"\0\x01\n")
    commit("binary", user="Bob <bob@example.com>")
    hg("copy", "a.txt", "copied.txt", cwd=w)
    hg("rename", "run.sh", "script.sh", cwd=w)
    commit("copy and rename\n\nwith a longer\ndescription")
    for name in ODD_NAMES:
        p = w / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"content of {name}\n")
    (w / "meta.txt").write_bytes(b"\x01\nstarts with the metadata marker\n")
    commit("odd names")
    hg("branch", "stable", cwd=w)
    (w / "stable.txt").write_text("stable\n")
    commit("on stable")
    hg("update", "default", cwd=w)
    with open(w / "a.txt", "a") as f:
        f.write("more on default\n")
    commit("default moves")
    hg("merge", "stable", cwd=w)
    commit("merge stable")
    hg("branch", "old", cwd=w)
    (w / "old.txt").write_text("old\n")
    commit("old branch")
    commit("close old", "--close-branch")
    hg("update", "default", cwd=w)
    # a big, barely compressible file: its filelog is split into .i and .d
    (w / "big.bin").write_bytes(rnd.randbytes(150_000))
    commit("big file")
    for i in range(6):
        with open(w / "a.txt", "a") as f:
            f.write(f"edit {i}\n" * (i + 1))
        (w / "big.bin").write_bytes(rnd.randbytes(1000) + (w / "big.bin").read_bytes()[1000:])
        commit(f"edit {i}")
    hg("tag", "-r", "2", "v1.0", "-u", "Tagger <t@example.com>", "-d", "1000200 0", cwd=w)
    hg("tag", "v2.0", "-u", "Tagger <t@example.com>", "-d", "1000300 0", cwd=w)
    hg("tag", "--local", "localtag", cwd=w)
    hg("bookmark", "-r", "1", "bm-old", cwd=w)
    hg("bookmark", "main", cwd=w)
    hg("phase", "--public", "-r", "5", cwd=w)
    # a second head on default, still draft
    hg("update", "-r", "6", cwd=w)
    (w / "side.txt").write_text("side\n")
    commit("side head")
    # secret changesets on top: never served
    hg("update", "default", cwd=w)
    (w / "secret.txt").write_text("secret\n")
    commit("secret work", "--secret")
    return path


def build_lfs(hg: Hg, path: Path, blobs: Path) -> Path:
    """A repository using the lfs extension: pointers with the 0x2000 flag, an lfs rename."""
    cfg = ["--config", "extensions.lfs=", "--config", "lfs.track=**.bin or size('>2KB')",
           "--config", f"lfs.url=file://{blobs}"]
    hg("init", *cfg, str(path))
    w = path
    (w / "small.txt").write_text("not in lfs\n")
    (w / "one.bin").write_bytes(b"\0binary lfs content\n" * 10)
    (w / "text.txt").write_text("large text\n" * 400)
    hg(*cfg, "commit", "-A", "-m", "lfs files", cwd=w)
    hg(*cfg, "rename", "one.bin", "two.bin", cwd=w)
    with open(w / "text.txt", "a") as f:
        f.write("appended\n")
    hg(*cfg, "commit", "-m", "rename and edit", cwd=w)
    return path


def build_synthetic(path: Path, changesets: int, *args: str) -> Path:
    """Many changesets through Mercurial's API (hgbuild.py): revlogs split into .i/.d."""
    subprocess.run([sys.executable, str(HERE / "hgbuild.py"), str(path), str(changesets), *args],
                   check=True, capture_output=True, env={**os.environ, "HGRCPATH": os.devnull})
    return path


def hg_dump(path: Path, *lookup_keys: str) -> dict:
    """Everything hgdump.py reports, computed by Mercurial's own code."""
    import json

    out = subprocess.run([sys.executable, str(HERE / "hgdump.py"), str(path), *lookup_keys], check=True,
                         capture_output=True, env={**os.environ, "HGRCPATH": os.devnull})
    return json.loads(out.stdout)
