#!/usr/bin/env python3
"""Clone bundle benchmark: a fresh `hg clone` from lfsserve with a current clone bundle, against
`hg serve`'s ordinary changegroup clone of the same repository, in one run.

Not a test. Uses wire_v1_bench's cached synthetic repository (5,000 changesets, 3,000 files),
builds its clone bundles once with `lfsserve clonebundles build` (zstd-v2 and a stream bundle;
the build time is printed), and measures, alternating the servers:

  hg serve          `hg clone -U`           changegroup over bundle2 (the baseline)
  lfsserve          `hg clone -U`           applies the stream bundle (first in the manifest by
                                            default), then pulls nothing
  lfsserve zstd-v2  `hg clone -U` preferring COMPRESSION=zstd: applies the zstd-v2 bundle
  hg serve stream   `hg clone -U --stream`  hg serve's stream clone, for reference

printing wall time, the SERVER's CPU seconds (/proc/<pid>/stat before/after) and the ratios to
the baseline. Targets (issue 16): lfsserve CPU <= 0.05 s per clone, wall <= 0.8x hg serve's clone.

    python bench/clonebundle_bench.py [--changesets 5000] [--files 3000] [--repeat 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wire_v1_bench import HG, REPO_ROOT, Server, add_repo_args, cached_repo, free_port, measure, run_hg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_repo_args(ap)
    ap.add_argument("--repeat", type=int, default=4)
    args = ap.parse_args()

    env, src = cached_repo(args)

    work = Path(tempfile.mkdtemp(prefix="clonebundle-bench-"))
    try:
        root = work / "lfsserve-root"
        shutil.copytree(src, root / "repos" / "bench", symlinks=True)
        lenv = {k: v for k, v in os.environ.items() if not k.startswith("LFSSERVE_")}
        t0 = time.monotonic()
        built = subprocess.run([sys.executable, "-m", "lfsserve", "clonebundles", "build", "--root", str(root),
                                "bench"], cwd=REPO_ROOT, env=lenv, capture_output=True, text=True, check=True)
        build_time = time.monotonic() - t0
        print(built.stdout, end="")

        lport, hport = free_port(), free_port()
        lfs = Server("lfsserve", [sys.executable, "-m", "lfsserve", "serve", "--root", str(root), "--port",
                                  str(lport)], f"http://127.0.0.1:{lport}/bench", lenv, cwd=REPO_ROOT)
        hgs = Server("hg serve", [HG, "serve", "-R", str(root / "repos" / "bench"), "-p", str(hport),
                                  "-a", "127.0.0.1", "--config", "web.push_ssl=false"],
                     f"http://127.0.0.1:{hport}/", env)
        zstd = ["--config", "ui.clonebundleprefers=COMPRESSION=zstd"]
        scenarios = [("hg serve", hgs, [], None), ("lfsserve", lfs, [], "none-v2-stream-v2-"),
                     ("lfsserve zstd-v2", lfs, zstd, "zstd-v2-"), ("hg serve stream", hgs, ["--stream"], None)]
        results: dict[str, list[tuple[float, float, float]]] = {}
        try:
            for i in range(args.repeat):
                order = scenarios if i % 2 == 0 else scenarios[::-1]
                for name, server, extra, bundle in order:
                    d = work / "run"
                    shutil.rmtree(d, ignore_errors=True)
                    d.mkdir()
                    out = d / "clone"

                    def clone(server=server, extra=extra, out=out) -> None:
                        run_hg(["clone", "-U", *extra, server.url, str(out)], env)
                    results.setdefault(name, []).append(measure(server, clone))
                    if i == 0:
                        res = subprocess.run([HG, "clone", "-U", "--debug", *extra, server.url, str(d / "check")],
                                             env=env, capture_output=True, text=True, check=True)
                        applied = [line for line in res.stdout.splitlines()
                                   if line.startswith("applying clone bundle from ")]
                        ok = (bundle is None and not applied) or (bundle is not None and len(applied) == 1
                                                                  and f"/{bundle}" in applied[0])
                        assert ok, (name, res.stdout[-2000:])
                        run_hg(["verify", "-q", "-R", str(out)], env)
                    shutil.rmtree(d, ignore_errors=True)
        finally:
            lfs.stop()
            hgs.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(xs: list[float]) -> float:
        xs = sorted(xs)
        n = len(xs)
        return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2

    print(f"\nclone bundles: {args.changesets} changesets / {args.files} files, median of {args.repeat}; "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}; bundles built in {build_time:.1f}s")
    base_wall = median([w for w, _, _ in results["hg serve"]])
    base_cpu = median([c for _, c, _ in results["hg serve"]])
    print(f"{'scenario':18} {'wall':>8} {'/ hg serve':>10}   {'server CPU':>10} {'/ hg serve':>10}   "
          f"{'client CPU':>10}")
    for name, rows in results.items():
        w, c, k = (median([r[j] for r in rows]) for j in range(3))
        print(f"{name:18} {w:7.2f}s {w / base_wall:10.2f}   {c:9.3f}s {c / base_cpu if base_cpu else 0:10.3f}   "
              f"{k:9.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
