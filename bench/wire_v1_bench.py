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

    python bench/wire_v1_bench.py [--changesets 5000] [--files 3000] [--repeat 4]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
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


def add_repo_args(ap: argparse.ArgumentParser) -> None:
    """--changesets, --files, --cache: the synthetic repository the hg benchmarks share."""
    ap.add_argument("--changesets", type=int, default=5000)
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "lfsserve" / "bench"))


def cached_repo(args: argparse.Namespace) -> tuple[dict[str, str], Path]:
    """(hg's environment, the synthetic repository built once into --cache)."""
    cache = Path(args.cache)
    env = hg_env(cache / "home")
    src = cache / f"wire-v1-{args.changesets}x{args.files}"
    build_repo(src, args.changesets, args.files, env)
    return env, src


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s; reaped either way."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
        stop_process(self.proc)


def run_hg(args: list[str], env: dict, cwd: Path | None = None) -> None:
    res = subprocess.run([HG, *args], env=env, cwd=cwd, capture_output=True)
    if res.returncode != 0:
        raise RuntimeError(f"hg {' '.join(args)} failed: {res.stderr.decode()[-2000:]}")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(server: Server, fn) -> tuple[float, float, float]:
    """(wall, server CPU, client CPU) of fn(); client CPU is that of the hg processes it ran.

    Dirty pages left by the previous scenario (thousands of files written or deleted) are flushed
    first; otherwise their writeback lands as kernel time on whichever client runs next."""
    os.sync()
    c0, k0 = server.cpu(), _children_cpu()
    t0 = time.monotonic()
    fn()
    wall = time.monotonic() - t0
    time.sleep(0.3)  # let the server finish its bookkeeping for the last request
    return wall, server.cpu() - c0, _children_cpu() - k0


def _clone(server: Server, d: Path, env: dict, base_clone: Path) -> None:
    run_hg(["clone", "-U", server.url, str(d / "clone")], env)


def _stream(server: Server, d: Path, env: dict, base_clone: Path) -> None:
    run_hg(["clone", "-U", "--stream", server.url, str(d / "stream")], env)


def _pull(server: Server, d: Path, env: dict, base_clone: Path) -> None:
    run_hg(["pull", "-R", str(d / "pull"), server.url], env)


def _eight(server: Server, d: Path, env: dict, base_clone: Path) -> None:
    errors: list[str] = []

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
    if errors:
        raise RuntimeError(f"{server.name}: {len(errors)} of 8 concurrent clones failed: {errors[0]}")


# (name, run, what to verify afterwards)
SCENARIOS = [
    ("clone", _clone, "clone"),
    ("stream clone", _stream, "stream"),
    ("pull 100", _pull, "pull"),
    ("8 concurrent clones", _eight, None),
]


def run_scenario(name, fn, check, server: Server, work: Path, env: dict, base_clone: Path):
    d = work / "run"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    if name == "pull 100":
        shutil.copytree(base_clone, d / "pull", symlinks=True)
    got = measure(server, lambda: fn(server, d, env, base_clone))
    if check:
        run_hg(["verify", "-q", "-R", str(d / check)], env)
    shutil.rmtree(d, ignore_errors=True)
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_repo_args(ap)
    ap.add_argument("--repeat", type=int, default=4,
                    help="back-to-back pairs, order alternating (even: a steady drift cancels in the "
                         "paired ratios); the best wall and CPU times per server are printed too")
    args = ap.parse_args()

    env, src = cached_repo(args)

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
        results: dict[str, dict[str, tuple[float, float, float]]] = {}
        # Per repeat and scenario, lfsserve's (wall, server CPU) over hg serve's from the same pair.
        pairs: dict[str, list[tuple[float, float]]] = {}
        try:
            # Scenario by scenario, the two servers back to back, in alternating order: whatever the
            # machine does meanwhile falls on both alike.
            for i in range(args.repeat):
                for name, fn, check in SCENARIOS:
                    got = {}
                    for server in ((hgs, lfs) if i % 2 == 0 else (lfs, hgs)):
                        v = got[server.name] = run_scenario(name, fn, check, server, work, env, base)
                        best = results.setdefault(server.name, {})
                        best[name] = tuple(min(a, b) for a, b in zip(best.get(name, v), v, strict=True))
                    h, ours = got["hg serve"], got["lfsserve"]
                    pairs.setdefault(name, []).append((ours[0] / h[0], ours[1] / h[1] if h[1] else float("inf")))
        finally:
            lfs.stop()
            hgs.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nwire v1: {args.changesets} changesets / {args.files} files, best of {args.repeat}; "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"{'scenario':20} {'wall: hg serve':>14} {'lfsserve':>9} {'ratio':>6}   "
          f"{'server CPU: hg serve':>20} {'lfsserve':>9} {'ratio':>6}   {'client CPU: hg serve':>20} {'lfsserve':>9}")
    for k in results["hg serve"]:
        hw, hc, hk = results["hg serve"][k]
        lw, lc, lk = results["lfsserve"][k]
        print(f"{k:20} {hw:13.2f}s {lw:8.2f}s {lw / hw:6.2f}   {hc:19.2f}s {lc:8.2f}s "
              f"{(lc / hc if hc else float('inf')):6.2f}   {hk:19.2f}s {lk:8.2f}s")
    # Best-of ratios favour whichever server ran first while the machine slowly drifts (on the
    # development VM each clone's file creation gets slower run after run, whichever server it
    # talks to). Ratios taken within each back-to-back pair, with the order alternating, cancel a
    # steady drift when averaged over an even number of repeats.
    print(f"\npaired ratios, lfsserve / hg serve (geometric mean over {args.repeat} back-to-back pairs, "
          f"order alternating{'' if args.repeat % 2 == 0 else '; use an even --repeat to cancel drift'}):")
    for k, rs in pairs.items():
        wall, cpu = geomean([w for w, _ in rs]), geomean([c for _, c in rs])
        each = " ".join(f"{w:.2f}" for w, _ in rs)
        print(f"{k:20} wall {wall:5.2f} (each: {each})   server CPU {cpu:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
