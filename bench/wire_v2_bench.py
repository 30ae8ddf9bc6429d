#!/usr/bin/env python3
"""Wire protocol v2 benchmark: lfsserve v2 vs lfsserve v1 vs Mercurial 5.9.3's own v2 server, same run.

Not a test. Uses the synthetic repository of bench/wire_v1_bench.py (5,000 changesets, 3,000
files by default), built with zlib revlogs so the pure-Python 5.9.3 server can read it, and the
real Mercurial 5.9.3 client (the last one speaking v2) for every clone:

  lfsserve v2     hg 5.9.3 `clone -U` with experimental.httppeer.advertise-v2=true
  lfsserve v1     the same client without it (bundle2 changegroup 02, zlib)
  hg serve v2     `hg serve` of 5.9.3 with experimental.web.apiserver / web.api.http-v2 on

and `clone -U --stream` (rawstorefiledata) for both v2 servers. Printed: wall time, the
SERVER's CPU seconds and the client's (the 5.9.3 client is pure Python, so its own CPU dominates
wall time; server CPU is what tells the servers apart), and ratios.

    python bench/wire_v2_bench.py [--changesets 5000] [--files 3000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wire_v1_bench import REPO_ROOT, Server, build_repo, free_port, hg_env, measure

from tests.support import hg593_exe


def run(exe: str, args: list[str], env: dict) -> str:
    res = subprocess.run([exe, *args], env=env, capture_output=True)
    if res.returncode != 0:
        raise RuntimeError(f"{exe} {' '.join(args)} failed: {res.stderr.decode()[-2000:]}")
    return res.stdout.decode()


def clone(hg59: str, env: dict, server: Server, dest: Path, *, v2: bool, stream: bool = False) -> None:
    args = ["--config", f"experimental.httppeer.advertise-v2={'true' if v2 else 'false'}",
            "clone", "-U", "--debug"]
    if stream:
        args.append("--stream")
    out = run(hg59, [*args, server.url, str(dest)], env)
    # Make sure the protocol measured is the one named.
    if v2 and "sending command changesetdata" not in out:
        raise RuntimeError(f"{server.name}: the clone did not use wire protocol v2")
    if not v2 and "sending command" in out:
        raise RuntimeError(f"{server.name}: the clone used wire protocol v2")
    if stream and "sending command rawstorefiledata" not in out:
        raise RuntimeError(f"{server.name}: --stream did not use rawstorefiledata")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changesets", type=int, default=5000)
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=1, help="runs per scenario; the lowest server CPU is kept")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "lfsserve" / "bench"))
    args = ap.parse_args()

    hg59 = hg593_exe()
    cache = Path(args.cache)
    env = hg_env(cache / "home-zlib")
    with open(env["HGRCPATH"], "a") as rc:
        rc.write("[format]\nrevlog-compression = zlib\n")
    src = cache / f"wire-v2-{args.changesets}x{args.files}-zlib"
    build_repo(src, args.changesets, args.files, env)

    work = Path(tempfile.mkdtemp(prefix="wire-v2-bench-"))
    servers: list[Server] = []
    try:
        root = work / "lfsserve-root"
        shutil.copytree(src, root / "repos" / "bench", symlinks=True)
        lport, hport = free_port(), free_port()
        lenv = {k: v for k, v in os.environ.items() if not k.startswith("LFSSERVE_")}
        lfs = Server("lfsserve", [sys.executable, "-m", "lfsserve", "serve", "--root", str(root), "--port",
                                  str(lport)], f"http://127.0.0.1:{lport}/bench", lenv, cwd=REPO_ROOT)
        servers.append(lfs)
        hgs = Server("hg serve 5.9.3", [hg59, "serve", "-R", str(src), "-p", str(hport), "-a", "127.0.0.1",
                                        "--config", "experimental.web.apiserver=true",
                                        "--config", "experimental.web.api.http-v2=true"],
                     f"http://127.0.0.1:{hport}/", env)
        servers.append(hgs)
        scenarios = [
            ("lfsserve v2 clone", lfs, dict(v2=True)),
            ("lfsserve v1 clone", lfs, dict(v2=False)),
            ("hg serve v2 clone", hgs, dict(v2=True)),
            ("lfsserve v2 stream", lfs, dict(v2=True, stream=True)),
            ("hg serve v2 stream", hgs, dict(v2=True, stream=True)),
        ]
        results: dict[str, tuple[float, float, float]] = {}
        for i in range(args.repeat):
            for name, server, kw in scenarios:
                dest = work / f"{name.replace(' ', '-')}-{i}"
                got = measure(server, lambda server=server, dest=dest, kw=kw: clone(hg59, env, server, dest, **kw))
                run(hg59, ["verify", "-q", "-R", str(dest)], env)
                shutil.rmtree(dest)
                if name not in results or got[1] < results[name][1]:
                    results[name] = got
                print(f"  {name:20} {got[0]:7.2f}s wall {got[1]:7.2f}s server CPU {got[2]:7.2f}s client CPU",
                      flush=True)
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nwire v2: {args.changesets} changesets / {args.files} files, Mercurial 5.9.3 (pure) client, "
          f"best of {args.repeat}; {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"{'scenario':20} {'wall':>9} {'server CPU':>11} {'client CPU':>11}")
    for name, (wall, cpu, client) in results.items():
        print(f"{name:20} {wall:8.2f}s {cpu:10.2f}s {client:10.2f}s")

    def ratio(a: str, b: str) -> None:
        (aw, ac, _), (bw, bc, _) = results[a], results[b]
        print(f"{a} / {b}: wall {aw / bw:.2f}, server CPU {ac / bc if bc else float('inf'):.2f}")

    print()
    ratio("lfsserve v2 clone", "lfsserve v1 clone")
    ratio("lfsserve v2 clone", "hg serve v2 clone")
    ratio("lfsserve v2 stream", "hg serve v2 stream")
    return 0


if __name__ == "__main__":
    sys.exit(main())
