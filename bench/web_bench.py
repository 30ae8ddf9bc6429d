#!/usr/bin/env python3
"""Web UI benchmark: page latency of lfsserve vs `hg serve`'s hgweb (Mercurial 7.2.4), same run.

Not a test. Serves the same repositories with both servers on 127.0.0.1:

  bench   the 5,000-changeset / 3,000-file repository of wire_v1_bench.py (built once, cached)
  annot   a 2,000-line file edited by 500 changesets (built once, cached)

and measures, at concurrency 1 and 16 (keep-alive connections, one per concurrent client):

  summary     /bench/summary
  log         /bench/log
  rev         /bench/rev/<a changeset touching several files>   (metadata + diff)
  file        /bench/file/tip/<a file>
  annotate    /annot/annotate/tip/big.txt
  tar.gz      /bench/archive/tip.tar.gz                         (whole repository)

printing p50 / p99 latency and throughput (requests/s) per server and the lfsserve/hgweb
throughput ratio; and lfsserve's resident memory (VmRSS) sampled during the archive runs, to
show that it stays flat. A page lfsserve does not serve yet (404 "unknown web command") is left
out with a message. Every answer is checked for status 200 (and, for archives, the same size
from both servers within a margin: both write the same members).

    python bench/web_bench.py [--requests 40] [--archive-requests 4] [--only summary,log]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aiohttp
from wire_v1_bench import HG, REPO_ROOT, add_repo_args, cached_repo, free_port

ANNOT_SCRIPT = r'''
import random, sys
from mercurial import context, hg, ui as uimod
from mercurial.node import nullid
path, nrevs, nlines = sys.argv[1].encode(), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(7)
u = uimod.ui.load()
repo = hg.repository(u, path, create=True)
lines = [b"line %d: %s\n" % (i, b"x" * rng.randint(10, 60)) for i in range(nlines)]
p1 = nullid
with repo.wlock(), repo.lock(), repo.transaction(b"bench"):
    for i in range(nrevs):
        if i:
            for _ in range(rng.randint(1, 6)):
                k = rng.randrange(len(lines))
                lines[k] = b"rev %d changed line %d\n" % (i, k)
        data = b"".join(lines)
        def filectx(repo, mctx, p, _d=data):
            return context.memfilectx(repo, mctx, p, _d)
        ctx = context.memctx(repo, (p1, nullid), b"edit %d" % i, [b"big.txt"], filectx,
                             user=b"User %d <u%d@example.com>" % (i % 7, i % 7), date=(1700000000 + i, 0))
        p1 = ctx.commit()
'''


def build_annot(path: Path, revs: int, lines: int, env: dict) -> None:
    if (path / ".hg" / "store" / "00changelog.i").exists():
        return
    print(f"building a {lines}-line file with {revs} revisions in {path} (cached) ...", flush=True)
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", ANNOT_SCRIPT, str(path), str(revs), str(lines)], check=True, env=env)


def wait_http(url: str, timeout: float = 60) -> None:
    import urllib.error
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except urllib.error.HTTPError:
            return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not answer")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RssSampler:
    """Peak VmRSS of a process while running (sampled every 20 ms)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.base = rss_kb(pid)
        self.peak = self.base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, rss_kb(self.pid))

    def done(self) -> tuple[int, int]:
        self.stop.set()
        self.thread.join()
        return self.base, self.peak


async def load(base: str, path: str, total: int, concurrency: int) -> tuple[list[float], float, int]:
    """(latencies, wall seconds, bytes of the last answer) of `total` GETs, `concurrency` at a time."""
    latencies: list[float] = []
    size = 0
    todo = list(range(total))
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False,
                                     connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker() -> None:
            nonlocal size
            while todo:
                todo.pop()
                t0 = time.perf_counter()
                async with session.get(base + path) as resp:
                    n = 0
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        n += len(chunk)
                    if resp.status != 200:
                        raise RuntimeError(f"{base}{path}: HTTP {resp.status}")
                latencies.append(time.perf_counter() - t0)
                size = n
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - t0, size


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_repo_args(ap)
    ap.add_argument("--requests", type=int, default=40, help="requests per page and concurrency (x2 at 16)")
    ap.add_argument("--archive-requests", type=int, default=4, help="archives per concurrency level (x4 at 16)")
    ap.add_argument("--only", default="", help="comma-separated pages to run (default: all)")
    ap.add_argument("--archive-cache", action="store_true",
                    help="let lfsserve keep finished archives ([web] archive_cache_mb); by default it makes "
                         "every archive anew, as hgweb does")
    args = ap.parse_args()

    env, src = cached_repo(args)
    cache = Path(args.cache)
    annot_src = cache / "web-annotate-500x2000"
    build_annot(annot_src, 500, 2000, env)

    rng = random.Random(1)
    rev_node = subprocess.run([HG, "log", "-R", str(src), "-r", str(rng.randrange(1, args.changesets)), "-T",
                               "{node}"], env=env, capture_output=True, check=True).stdout.decode()
    some_file = subprocess.run([HG, "files", "-R", str(src), "-r", "tip", "-T", "{path}\n"], env=env,
                               capture_output=True, check=True).stdout.decode().splitlines()[0]
    pages = {
        "summary": ("/bench/summary", args.requests),  # hgweb: in the gitweb style (paper has none)
        "log": ("/bench/log", args.requests),
        "rev": (f"/bench/rev/{rev_node}", args.requests),
        "file": (f"/bench/file/tip/{some_file}", args.requests),
        "annotate": ("/annot/annotate/tip/big.txt", max(4, args.requests // 4)),
        "tar.gz": ("/bench/archive/tip.tar.gz", args.archive_requests),
    }
    if args.only:
        pages = {k: v for k, v in pages.items() if k in args.only.split(",")}

    work = Path(tempfile.mkdtemp(prefix="web-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        root = work / "lfsserve-root"
        shutil.copytree(src, root / "repos" / "bench", symlinks=True)
        shutil.copytree(annot_src, root / "repos" / "annot", symlinks=True)
        cfg = work / "lfsserve.toml"
        cfg.write_text(f'[web]\nallow_archive = ["gz"]\narchive_cache_mb = {256 if args.archive_cache else 0}\n'
                       '[log]\naccess_format = "off"\n')
        webconf = work / "hgweb.conf"
        webconf.write_text(f"[paths]\nbench = {root / 'repos' / 'bench'}\nannot = {root / 'repos' / 'annot'}\n"
                           "[web]\nallow-archive = gz\n")
        lport, hport = free_port(), free_port()
        lenv = {k: v for k, v in os.environ.items() if not k.startswith("LFSSERVE_")}
        lfs = subprocess.Popen([sys.executable, "-m", "lfsserve", "serve", "--root", str(root), "--port", str(lport),
                                "--config", str(cfg)], env=lenv, cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(lfs)
        hgs = subprocess.Popen([HG, "serve", "--web-conf", str(webconf), "-p", str(hport), "-a", "127.0.0.1"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(hgs)
        servers = {"lfsserve": (f"http://127.0.0.1:{lport}", lfs), "hgweb": (f"http://127.0.0.1:{hport}", hgs)}
        for url, _ in servers.values():
            wait_http(url + "/bench/summary")

        # which pages lfsserve serves today
        import urllib.error
        import urllib.request
        for name, (path, _) in list(pages.items()):
            try:
                urllib.request.urlopen(servers["lfsserve"][0] + path, timeout=600).read()
            except urllib.error.HTTPError as exc:
                print(f"  {name}: lfsserve answers {exc.code} ({exc.read()[:80]!r}): left out of this run")
                del pages[name]

        print(f"\nweb pages: {args.changesets} changesets / {args.files} files; annotate: 2,000 lines x 500 "
              f"revisions. Latency ms p50 / p99, throughput req/s (lfsserve/hgweb ratio)\n")
        print(f"{'page':10} {'conc':>4}  {'lfsserve p50/p99':>18} {'req/s':>7}   {'hgweb p50/p99':>18} "
              f"{'req/s':>7}   {'ratio':>5}")
        for name, (path, n) in pages.items():
            for conc in (1, 16):
                total = n * (4 if name == "tar.gz" and conc == 16 else 2 if conc == 16 else 1)
                total = max(total, conc)
                row = {}
                rss = None
                # warm both (caches, imports), then measure; order alternates per level
                order = ("hgweb", "lfsserve") if conc == 1 else ("lfsserve", "hgweb")
                for sname in order:
                    url, proc = servers[sname]
                    path = pages[name][0] + ("?style=gitweb" if sname == "hgweb" and name == "summary" else "")
                    asyncio.run(load(url, path, min(2, total), 1))
                    sampler = RssSampler(proc.pid) if sname == "lfsserve" and name == "tar.gz" else None
                    lat, wall, size = asyncio.run(load(url, path, total, conc))
                    if sampler is not None:
                        rss = sampler.done()
                    row[sname] = (pct(lat, 0.5) * 1000, pct(lat, 0.99) * 1000, total / wall, size)
                lo, hw = row["lfsserve"], row["hgweb"]
                print(f"{name:10} {conc:>4}  {lo[0]:8.1f} /{lo[1]:8.1f} {lo[2]:7.1f}   {hw[0]:8.1f} /{hw[1]:8.1f} "
                      f"{hw[2]:7.1f}   {lo[2] / hw[2]:5.2f}x", flush=True)
                if rss is not None:
                    print(f"{'':16}lfsserve RSS during the archives: {rss[0] / 1024:.0f} MiB before, "
                          f"{rss[1] / 1024:.0f} MiB peak; archive {lo[3] / 1e6:.1f} MB (hgweb {hw[3] / 1e6:.1f} MB)")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
