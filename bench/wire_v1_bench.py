#!/usr/bin/env python3
"""Wire protocol v1 benchmark: lfsserve vs `hg serve` (Mercurial 7.2.4, C extensions), same run.

Not a test. Builds (once, cached) a synthetic repository of 5,000 changesets touching 3,000
files, serves the same copy with both servers on 127.0.0.1, and measures for each:

  clone     `hg clone -U` (changegroup over bundle2, zstd)
  stream    `hg clone -U --stream` (stream2)
  pull100   `hg pull` of the last 100 changesets into a clone of the first 4,900
  clone x8  8 concurrent `hg clone -U`

printing wall time and the SERVER's CPU seconds (utime+stime of the server process from
/proc/<pid>/stat, before/after), and lfsserve/hg serve ratios. On a small machine the hg client's
own CPU dominates wall time, so server CPU is the figure that tells the servers apart.

    python bench/wire_v1_bench.py [--changesets 5000] [--files 3000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HG = str(Path(sys.executable).with_name("hg"))
CLK = os.sysconf("SC_CLK_TCK")


def hg_env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    rc = home / "hgrc"
    rc.write_text("[ui]\nusername = Bench <bench@example.com>\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HG", "LFSSERVE_"))}
    env.update(HOME=str(home), HGRCPATH=str(rc), HGPLAIN="1", LANG="C.UTF-8")
    return env


BUILD_SCRIPT = r'''
import random, sys
from mercurial import context, hg, ui as uimod
from mercurial.node import nullid
path, nchangesets, nfiles = sys.argv[1].encode(), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(42)
u = uimod.ui.load()
u.setconfig(b"ui", b"username", b"Bench <bench@example.com>")
repo = hg.repository(u, path, create=True)
names = [b"src/mod%02d/file%04d.txt" % (i % 40, i) for i in range(nfiles)]
contents = {n: b"".join(b"line %d of %s\n" % (j, n) for j in range(rng.randint(20, 80))) for n in names}
p1 = nullid
with repo.wlock(), repo.lock(), repo.transaction(b"bench"):
    for i in range(nchangesets):
        if i == 0:
            touched = names
        else:
            touched = rng.sample(names, rng.randint(1, 5))
            for n in touched:
                lines = contents[n].split(b"\n")
                k = rng.randrange(len(lines))
                lines.insert(k, b"change %d at %d" % (i, k))
                contents[n] = b"\n".join(lines)
        def filectx(repo, mctx, p, _c=contents):
            return context.memfilectx(repo, mctx, p, _c[p])
        ctx = context.memctx(repo, (p1, nullid), b"commit %d" % i, touched, filectx,
                             date=(1700000000 + i, 0))
        p1 = ctx.commit()
'''


def build_repo(path: Path, changesets: int, files: int, env: dict) -> None:
    if (path / ".hg" / "store" / "00changelog.i").exists():
        return
    print(f"building a {changesets}-changeset / {files}-file repository in {path} (cached) ...", flush=True)
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", BUILD_SCRIPT, str(path), str(changesets), str(files)],
                   check=True, env=env)
    print(f"  built in {time.monotonic() - t0:.0f}s", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime, stime (fields 14, 15)


def wait_http(url: str, timeout: float = 30) -> None:
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "?cmd=capabilities", timeout=2).read()
            return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not answer")


class Server:
    def __init__(self, name: str, cmd: list[str], url: str, env: dict, cwd: Path | None = None):
        self.name, self.url = name, url
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_http(url)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_hg(args: list[str], env: dict, cwd: Path | None = None) -> None:
    res = subprocess.run([HG, *args], env=env, cwd=cwd, capture_output=True)
    if res.returncode != 0:
        raise RuntimeError(f"hg {' '.join(args)} failed: {res.stderr.decode()[-2000:]}")


def measure(server: Server, fn) -> tuple[float, float]:
    c0 = server.cpu()
    t0 = time.monotonic()
    fn()
    wall = time.monotonic() - t0
    time.sleep(0.3)  # let the server finish its bookkeeping for the last request
    return wall, server.cpu() - c0


def scenarios(server: Server, work: Path, env: dict, base_clone: Path) -> dict[str, tuple[float, float]]:
    out = {}
    d = work / server.name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    out["clone"] = measure(server, lambda: run_hg(["clone", "-U", server.url, str(d / "clone")], env))
    run_hg(["verify", "-q", "-R", str(d / "clone")], env)
    out["stream clone"] = measure(server, lambda: run_hg(["clone", "-U", "--stream", server.url,
                                                          str(d / "stream")], env))
    run_hg(["verify", "-q", "-R", str(d / "stream")], env)
    shutil.copytree(base_clone, d / "pull", symlinks=True)
    out["pull 100"] = measure(server, lambda: run_hg(["pull", "-R", str(d / "pull"), server.url], env))

    errors: list[str] = []

    def eight():
        def one(i):
            try:
                run_hg(["clone", "-U", server.url, str(d / f"c8-{i}")], env)
            except RuntimeError as exc:
                errors.append(str(exc))
        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    out["8 concurrent clones"] = measure(server, eight)
    if errors:
        raise RuntimeError(f"{server.name}: {len(errors)} of 8 concurrent clones failed: {errors[0]}")
    shutil.rmtree(d, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changesets", type=int, default=5000)
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per server, alternating; the best wall time and the best CPU time are kept "
                         "(other processes on a shared machine only ever add time)")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "lfsserve" / "bench"))
    args = ap.parse_args()

    cache = Path(args.cache)
    env = hg_env(cache / "home")
    src = cache / f"wire-v1-{args.changesets}x{args.files}"
    build_repo(src, args.changesets, args.files, env)

    work = Path(tempfile.mkdtemp(prefix="wire-v1-bench-"))
    try:
        root = work / "lfsserve-root"
        shutil.copytree(src, root / "repos" / "bench", symlinks=True)
        base = work / "base"
        run_hg(["clone", "-q", "-U", "-r", str(args.changesets - 101), str(src), str(base)], env)
        run_hg(["phase", "-p", "-r", "all()", "-R", str(base)], env)

        lport, hport = free_port(), free_port()
        lenv = {k: v for k, v in os.environ.items() if not k.startswith("LFSSERVE_")}
        lfs = Server("lfsserve", [sys.executable, "-m", "lfsserve", "serve", "--root", str(root), "--port",
                                  str(lport)], f"http://127.0.0.1:{lport}/bench", lenv, cwd=REPO_ROOT)
        hgs = Server("hg serve", [HG, "serve", "-R", str(root / "repos" / "bench"), "-p", str(hport),
                                  "-a", "127.0.0.1", "--config", "web.push_ssl=false"],
                     f"http://127.0.0.1:{hport}/", env)
        results: dict[str, dict[str, tuple[float, float]]] = {}
        try:
            for _ in range(args.repeat):
                for server in (hgs, lfs):
                    got = scenarios(server, work, env, base)
                    best = results.setdefault(server.name, {})
                    for k, (wall, cpu) in got.items():
                        old = best.get(k, (wall, cpu))
                        best[k] = (min(old[0], wall), min(old[1], cpu))
        finally:
            lfs.stop()
            hgs.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nwire v1: {args.changesets} changesets / {args.files} files, best of {args.repeat}; "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"{'scenario':22} {'hg serve wall':>13} {'lfsserve wall':>13} {'ratio':>6}   "
          f"{'hg serve CPU':>12} {'lfsserve CPU':>12} {'ratio':>6}")
    for k in results["hg serve"]:
        hw, hc = results["hg serve"][k]
        lw, lc = results["lfsserve"][k]
        print(f"{k:22} {hw:12.2f}s {lw:12.2f}s {lw / hw:6.2f}   {hc:11.2f}s {lc:11.2f}s "
              f"{(lc / hc if hc else float('inf')):6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
