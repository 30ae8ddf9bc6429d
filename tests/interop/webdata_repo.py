"""A small repository made by the real hg 7.2.4 with what diffs, annotate, raw files and archives
must get right: merges, copies and renames (with edits), binary files, empty files, files without a
trailing newline, non-ASCII and spaced paths, exec/symlink flags and flag changes, a named branch."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support import Hg

NON_ASCII = "dïr/ünïcode naïve ✓.txt"


def build_webdata_repo(hg: Hg, path: Path) -> Path:
    hg("init", str(path))
    w = path
    t = [1600000000]

    def commit(msg: str, user: str = "Alice <alice@example.com>", tz: str = "0") -> None:
        t[0] += 3600
        hg("commit", "-q", "-A", "-m", msg, "-u", user, "-d", f"{t[0]} {tz}", cwd=w)

    def write(name: str, data: bytes | str) -> None:
        p = w / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)

    lines = [f"line {i}\n" for i in range(1, 41)]
    write("src/main.py", "".join(lines))
    write("README", "hello\nworld\n")
    write("empty", "")
    write("bin.dat", bytes(range(256)) * 4)
    write("no-eol.txt", "first\nlast without newline")
    write(NON_ASCII, "ünïcode content\n")
    write("with space.txt", "spaced\n")
    write("run.sh", "#!/bin/sh\necho hi\n")
    os.symlink("README", w / "link")
    commit("initial import\n\nwith a longer description\n", tz="-3600")

    lines[4] = "line 5 changed\n"
    lines[30:32] = ["inserted a\n", "inserted b\n", "inserted c\n"]
    write("src/main.py", "".join(lines))
    write("no-eol.txt", "first\nlast without newline, edited")
    write("empty", "now has content\n")
    os.chmod(w / "run.sh", 0o755)
    write("bin.dat", bytes(range(255, -1, -1)) * 4)
    commit("edit several files", user="Bob Büchner <bob@example.com>", tz="18000")

    hg("cp", "src/main.py", "src/copy.py", cwd=w)
    hg("mv", "README", "README.txt", cwd=w)
    hg("mv", "with space.txt", "moved with space.txt", cwd=w)
    write("src/copy.py", "".join(lines[:-1]) + "copied and edited\n")
    hg("rm", "no-eol.txt", cwd=w)
    write("new-empty", "")
    commit("copy, renames, a removal, an empty file")

    hg("branch", "-q", "stable", cwd=w)
    lines2 = list(lines)
    lines2[0] = "line 1 on stable\n"
    write("src/main.py", "".join(lines2))
    write("stable.txt", "stable\nno newline")
    commit("stable: edit main.py", user="Carol <carol@example.com>")

    hg("update", "-q", "default", cwd=w)
    lines[-1] = "last line on default\n"
    write("src/main.py", "".join(lines))
    write(NON_ASCII, "ünïcode content\nmore ✓\n")
    os.unlink(w / "link")
    os.symlink("README.txt", w / "link")
    commit("default: edit main.py, retarget link")

    hg("merge", "-q", "stable", cwd=w)
    commit("merge stable")

    write("bin.dat", b"")
    write("empty", "")
    write("src/main.py", "".join(lines2[:10]) + "".join(lines2[10:]).replace("line 2", "LINE 2"))
    hg("mv", "src/copy.py", "lib/copy.py", cwd=w)
    write("lib/copy.py", "header\n" + (w / "lib/copy.py").read_text())
    commit("empty two files, rename and edit copy.py")
    return path
