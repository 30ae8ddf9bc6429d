"""The floor under lfsserve's per-request cost: server CPU per request of a trivial aiohttp app.

    python bench/aiohttp_floor.py [--count 1000] [--size 65536]

Runs, in a child process with the same event loop lfsserve uses (uvloop when installed), an
aiohttp app that answers GET with `size` bytes from memory (or read from a file in a worker
thread: the one hop a server that never blocks its loop pays) and reads a PUT body of `size` bytes
(then 201), no middlewares, no access log; drives it with lfs_bench's keep-alive client (AConn),
one request at a time, and prints the server's CPU-ms per request (user + system, /proc), beside
the same with the PUT body hashed (SHA-256) on the loop. Compare with lfs_bench's "server CPU-ms
per object" for the small phases: the difference is what lfsserve adds to aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lfs_bench import AConn, free_port, wait_port

_SERVER = r"""
import asyncio, hashlib, sys
from aiohttp import web
size, port, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
body = bytes(size)

async def get(request):
    return web.Response(body=body, headers={"Content-Type": "application/octet-stream"})

def read_file():
    with open(path, "rb") as f:
        return f.read()

async def get_file(request):
    data = await asyncio.get_running_loop().run_in_executor(None, read_file)
    return web.Response(body=data, headers={"Content-Type": "application/octet-stream"})

async def put(request):
    data = await request.read()
    if request.match_info["kind"] == "hash":
        hashlib.sha256(data).hexdigest()
    return web.Response(status=201)

app = web.Application()
app.router.add_get("/get", get)
app.router.add_get("/file", get_file)
app.router.add_put("/put/{kind}", put)
try:
    import uvloop
    loop_factory = uvloop.new_event_loop
except ImportError:
    loop_factory = None
web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
            **({"loop": loop_factory()} if loop_factory else {}))
"""


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(pid: int, port: int, count: int, size: int) -> None:
    conn = AConn()
    base = f"http://127.0.0.1:{port}"
    payload = os.urandom(size)
    await conn.request("GET", f"{base}/get", {})  # connect, warm up
    for name, method, path, body in (("GET, 64 KiB from memory", "GET", "/get", b""),
                                     ("GET, file read in a worker thread", "GET", "/file", b""),
                                     ("PUT, body read", "PUT", "/put/plain", payload),
                                     ("PUT, body read and SHA-256'd", "PUT", "/put/hash", payload)):
        cpu, t = cpu_of(pid), time.perf_counter()
        for _ in range(count):
            status, _ = await conn.request(method, base + path, {"Content-Type": "application/octet-stream"}, body)
            assert status in (200, 201), status
        dt, cpu = time.perf_counter() - t, cpu_of(pid) - cpu
        print(f"{name:32} {count / dt:8.0f} req/s   server CPU-ms per request {1000 * cpu / count:.3f}")
    await conn.close()
    hashlib.sha256(payload)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--size", type=int, default=64 * 1024)
    args = p.parse_args()
    with tempfile.NamedTemporaryFile() as f:
        f.write(os.urandom(args.size))
        f.flush()
        return serve_and_run(f.name, args)


def serve_and_run(path: str, args: argparse.Namespace) -> int:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(args.size), str(port), path])
    try:
        wait_port(port, proc)
        asyncio.run(run(proc.pid, port, args.count, args.size))
    finally:
        proc.terminate()
        proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
