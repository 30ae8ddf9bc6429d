#!/usr/bin/env python3
"""LFS on S3 benchmark: local storage vs S3 proxy vs S3 direct (presigned). Not a test.

Per target, against a fresh `lfsserve serve` (and, for S3, a moto server started here):
  - one large object (default 1 GiB): upload and download MiB/s
  - N x 64 KiB objects (default 1,000), 8 at a time: upload and download objects/s
  - the lfsserve process's CPU seconds per GiB moved (user + system, from /proc) and its peak RSS

moto is a Python S3 emulator, not a performance reference: compare the targets' ratios (how much
of the server's CPU and memory each mode costs), not the absolute speeds.

    python bench/s3_bench.py                                  # 1 GiB, 1,000 x 64 KiB
    python bench/s3_bench.py --big-mib 64 --small 200         # quick run
    python bench/s3_bench.py --targets s3-proxy,s3-direct
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.s3server import MotoServer  # noqa: E402

MiB = 1 << 20
LFS_JSON = "application/vnd.git-lfs+json"
_BLOCK = os.urandom(MiB)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def big_chunks(tag: int, size: int):
    """The large object, generated block by block (never held whole in memory)."""
    head = tag.to_bytes(8, "big")
    done = 0
    while done < size:
        n = min(MiB, size - done)
        yield (head + _BLOCK[8:])[:n] if done == 0 else _BLOCK[:n]
        done += n


def big_oid(tag: int, size: int) -> str:
    h = hashlib.sha256()
    for chunk in big_chunks(tag, size):
        h.update(chunk)
    return h.hexdigest()


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_mib(pid: int) -> float:
    m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


def start_server(root: Path, config: str, env: dict) -> tuple[subprocess.Popen, str]:
    root.mkdir(parents=True)
    cfg = root.parent / f"{root.name}.toml"
    cfg.write_text(config)
    proc = subprocess.Popen([sys.executable, "-m", "lfsserve", "serve", "--root", str(root), "--port", "0",
                             "--anonymous", "write", "--config", str(cfg)], cwd=REPO_ROOT,
                            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            # Keep draining its output so it never blocks on a full pipe.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, m.group(1).rstrip("/")
    raise RuntimeError("lfsserve did not start")


async def batch(http: aiohttp.ClientSession, base: str, op: str, objects: list[dict]) -> list[dict]:
    async with http.post(f"{base}/objects/batch", json={"operation": op, "objects": objects},
                         headers={"Accept": LFS_JSON, "Content-Type": LFS_JSON}) as r:
        assert r.status == 200, await r.text()
        return (await r.json(content_type=None))["objects"]


async def transfer_up(http: aiohttp.ClientSession, obj: dict, body, size: int) -> None:
    actions = obj.get("actions")
    if not actions:
        return  # already stored
    up = actions["upload"]
    async with http.put(up["href"], data=body, headers={**up.get("header", {}), "Content-Length": str(size)}) as r:
        assert r.status in (200, 201), (r.status, await r.text())
    if "verify" in actions:
        v = actions["verify"]
        async with http.post(v["href"], json={"oid": obj["oid"], "size": obj["size"]},
                             headers={**v.get("header", {}), "Content-Type": LFS_JSON}) as r:
            assert r.status == 200, await r.text()


async def transfer_down(http: aiohttp.ClientSession, obj: dict) -> str:
    d = obj["actions"]["download"]
    h = hashlib.sha256()
    async with http.get(d["href"], headers=d.get("header", {})) as r:
        assert r.status == 200, r.status
        async for chunk in r.content.iter_chunked(MiB):
            h.update(chunk)
    return h.hexdigest()


async def run_target(name: str, base: str, pid: int, big_mib: int, small: int) -> dict:
    out: dict = {"target": name}
    size = big_mib * MiB
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        if big_mib:
            oid = big_oid(1, size)

            async def body():
                for chunk in big_chunks(1, size):
                    yield chunk

            cpu0, t0 = proc_cpu(pid), time.monotonic()
            [obj] = await batch(http, base, "upload", [{"oid": oid, "size": size}])
            await transfer_up(http, obj, body(), size)
            t1, cpu1 = time.monotonic(), proc_cpu(pid)
            [obj] = await batch(http, base, "download", [{"oid": oid, "size": size}])
            assert await transfer_down(http, obj) == oid
            t2, cpu2 = time.monotonic(), proc_cpu(pid)
            gib = size / (1 << 30)
            out.update(big_up_mibs=round(big_mib / (t1 - t0), 1), big_down_mibs=round(big_mib / (t2 - t1), 1),
                       big_up_cpu_s_per_gib=round((cpu1 - cpu0) / gib, 2),
                       big_down_cpu_s_per_gib=round((cpu2 - cpu1) / gib, 2),
                       peak_rss_mib_after_big=round(proc_peak_rss_mib(pid), 1))
        if small:
            blobs = [i.to_bytes(8, "big") + os.urandom(64 * 1024 - 8) for i in range(small)]
            objs = [{"oid": hashlib.sha256(b).hexdigest(), "size": len(b)} for b in blobs]
            data = {o["oid"]: b for o, b in zip(objs, blobs, strict=True)}
            sem = asyncio.Semaphore(8)

            async def up(o: dict) -> None:
                async with sem:
                    await transfer_up(http, o, data[o["oid"]], o["size"])

            async def down(o: dict) -> None:
                async with sem:
                    assert await transfer_down(http, o) == o["oid"]

            cpu0, t0 = proc_cpu(pid), time.monotonic()
            await asyncio.gather(*(up(o) for o in await batch(http, base, "upload", objs)))
            t1, cpu1 = time.monotonic(), proc_cpu(pid)
            await asyncio.gather(*(down(o) for o in await batch(http, base, "download", objs)))
            t2, cpu2 = time.monotonic(), proc_cpu(pid)
            gib = small * 64 * 1024 / (1 << 30)
            out.update(small_up_per_s=round(small / (t1 - t0)), small_down_per_s=round(small / (t2 - t1)),
                       small_up_cpu_s_per_gib=round((cpu1 - cpu0) / gib, 1),
                       small_down_cpu_s_per_gib=round((cpu2 - cpu1) / gib, 1))
        out["peak_rss_mib"] = round(proc_peak_rss_mib(pid), 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--targets", default="local,s3-proxy,s3-direct")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    moto = None
    results = []
    with tempfile.TemporaryDirectory(dir=args.data_dir) as tmp:
        try:
            for i, target in enumerate(args.targets.split(",")):
                env: dict = {}
                config = ""
                if target.startswith("s3-"):
                    if moto is None:
                        moto = MotoServer.start()
                    bucket = moto.create_bucket()
                    config = moto.storage_toml(bucket, transfer=target.removeprefix("s3-"))
                    env = moto.env
                elif target != "local":
                    raise SystemExit(f"unknown target {target!r}")
                proc, url = start_server(Path(tmp) / f"server{i}", config, env)
                try:
                    log(f"{target}: running")
                    res = asyncio.run(run_target(target, f"{url}/bench/repo.git/info/lfs", proc.pid,
                                                 args.big_mib, args.small))
                    log(json.dumps(res))
                    results.append(res)
                finally:
                    proc.terminate()
                    proc.wait(30)
        finally:
            if moto is not None:
                moto.stop()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
