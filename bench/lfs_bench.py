#!/usr/bin/env python3
"""Git LFS benchmark: lfsserve side by side with `hg serve` (hgext/lfs) and giftless. Not a test.

Measures, per server, in one run on one machine:
  - one large object (default 1 GiB): upload and download MiB/s, and the server's peak RSS
  - 1,000 x 64 KiB objects: upload and download MiB/s over one keep-alive connection
  - 64 concurrent clients x 10 x 1 MiB: upload and download MiB/s, and errors
  - batch requests naming 100 objects at concurrency 1 and 64: p50 / p99 latency
and this machine's single-thread SHA-256 MiB/s, the ceiling for a single upload stream (the
server must hash every byte it stores).

    python bench/lfs_bench.py                                  # lfsserve only
    python bench/lfs_bench.py --targets lfsserve,hgserve,giftless
    python bench/lfs_bench.py --big-mib 5120 --skip small,concurrent,batch   # RSS on 5 GiB
    python bench/lfs_bench.py --targets lfsserve,lfsserve-nofsync,hgserve --skip concurrent,batch --rounds 2
                                             # issue 16's targets, as ratios against hg serve
    python bench/lfs_bench.py --targets lfsserve-base,lfsserve,hgserve --base-src /tmp/old   # before / after
    PYTHONPATH=$PWD python bench/lfs_bench.py --targets lfsserve-1x,lfsserve-2x --skip big
                          # one vs two instances behind nginx, sharing PostgreSQL and a data dir

lfsserve-1x and lfsserve-2x run the scale-out deployment (README "Several instances") with the
test fixtures' PostgreSQL (tests/pgserver.py) and nginx (tests/interop/nginx.py, deploy/nginx.conf):
`lfsserve-Nx` is N instances in nginx's upstream; RSS is summed over the instances.

giftless is installed on first use into a throwaway venv (default /tmp/lfsserve-bench-giftless,
`pip install giftless gunicorn`) and served by gunicorn (gthread workers, one per core); hg serve
is the `hg` next to this Python (Mercurial from the test extra). Server data goes to a temporary
directory under --data-dir (default: the system temp dir); put it on the disk you care about.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
REPO_ROOT = Path(__file__).resolve().parent.parent
HG = str(Path(sys.executable).with_name("hg"))
LFS_JSON = "application/vnd.git-lfs+json"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- payloads --------------------------------------------------------------------------------------

_BLOCK = os.urandom(MiB)


def make_object(tag: int, size: int) -> bytes:
    """A distinct object of `size` bytes (random-looking, unique per tag)."""
    head = tag.to_bytes(8, "big")
    if size <= MiB:
        return head + _BLOCK[8:size] if size >= 8 else head[:size]
    raise ValueError("use big_chunks for objects above 1 MiB")


def big_chunks(size: int, tag: int = 7):
    """The large object as 1 MiB chunks (one buffer, rewritten in place: send each before the next)."""
    buf = bytearray(_BLOCK)
    buf[8:16] = tag.to_bytes(8, "big")
    sent = 0
    i = 0
    while sent < size:
        buf[0:8] = i.to_bytes(8, "big")
        n = min(MiB, size - sent)
        yield memoryview(buf)[:n]
        sent += n
        i += 1


def big_oid(size: int) -> str:
    h = hashlib.sha256()
    for chunk in big_chunks(size):
        h.update(chunk)
    return h.hexdigest()


def sha256_baseline(total_mib: int = 1024) -> float:
    """Single-thread SHA-256 MiB/s over 1 MiB buffers (best of three, by thread CPU time, so
    other jobs on the machine do not count): 1024 / this is the CPU-s one GiB costs to hash."""
    best = 0.0
    for _ in range(3):
        h = hashlib.sha256()
        t = time.thread_time()
        for _ in range(total_mib // 3):
            h.update(_BLOCK)
        best = max(best, (total_mib // 3) / (time.thread_time() - t))
    return best


# -- servers ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on port {port}")


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    lfs_base: str          # URL the batch endpoint is under ({lfs_base}/objects/batch)
    workdir: Path
    logfile: Path
    # More server processes (other instances), and what runs around them (nginx, PostgreSQL),
    # stopped after them.
    more: list[subprocess.Popen] = field(default_factory=list)
    around: list[Callable[[], None]] = field(default_factory=list)

    def pids(self) -> list[int]:
        """The server processes and all their descendants (gunicorn workers)."""
        out, todo = [], [self.proc.pid, *(p.pid for p in self.more)]
        while todo:
            pid = todo.pop()
            out.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    todo += [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    pass
        return out

    def stop(self) -> None:
        for proc in (self.proc, *self.more):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (self.proc, *self.more):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stop in self.around:
            stop()


def start_lfsserve(workdir: Path, fsync: bool = True, extra_config: str = "", name: str = "server",
                   src: Path = REPO_ROOT) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    logfile = workdir / f"{name}.log"
    config = workdir / f"{name}.toml"
    config.write_text('[log]\naccess_format = "off"\n' + ("" if fsync else "[lfs]\nfsync = false\n")
                      + extra_config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lfsserve", "serve", "--root", str(workdir / "data"), "--port", str(port),
         "--anonymous", "write", "--config", str(config)],
        cwd=src, stdout=logfile.open("w"), stderr=subprocess.STDOUT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("LFSSERVE_")}, "PYTHONPATH": str(src)})
    wait_port(port, proc)
    return proc, port, logfile


def start_lfsserve_alone(workdir: Path, fsync: bool = True, src: Path = REPO_ROOT) -> Server:
    proc, port, logfile = start_lfsserve(workdir, fsync, src=src)
    return Server("lfsserve", proc, f"http://127.0.0.1:{port}/bench/repo.git/info/lfs", workdir, logfile)


def start_lfsserve_cluster(workdir: Path, instances: int, fsync: bool = True) -> Server:
    """`instances` lfsserve behind one nginx, sharing a PostgreSQL database and the data dir."""
    from tests.interop.nginx import start_nginx
    from tests.pgserver import PgServer

    pg = PgServer()
    pg.start()
    around: list[Callable[[], None]] = [pg.close]
    procs: list[subprocess.Popen] = []
    try:
        config = f'[server]\ntrusted_proxies = ["127.0.0.1"]\n[database]\nurl = "{pg.create_database()}"\n'
        ports = []
        for i in range(instances):
            proc, port, _ = start_lfsserve(workdir, fsync, config, name=f"server{i}")
            procs.append(proc)
            ports.append(port)
        nginx = start_nginx(workdir / "nginx", ports)
        around.insert(0, nginx.stop)
    except BaseException:
        for proc in procs:
            proc.kill()
        pg.close()
        raise
    return Server(f"lfsserve-{instances}x", procs[0], f"{nginx.url}/bench/repo.git/info/lfs", workdir,
                  workdir / "server0.log", procs[1:], around)


def start_hgserve(workdir: Path) -> Server:
    repo = workdir / "repo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HG")}
    env.update({"HGRCPATH": str(workdir / "hgrc"), "HGPLAIN": "1", "HOME": str(workdir)})
    (workdir / "hgrc").write_text(
        "[extensions]\nlfs =\n[web]\npush_ssl = False\nallow_push = *\naccesslog = /dev/null\n"
        f"[lfs]\nusercache = {workdir / 'usercache'}\n")
    subprocess.run([HG, "init", str(repo)], env=env, check=True)
    # The server-side LFS endpoint needs the repository to use lfs.
    with open(repo / ".hg" / "requires", "a") as fh:
        fh.write("lfs\n")
    port = free_port()
    logfile = workdir / "server.log"
    proc = subprocess.Popen([HG, "serve", "-R", str(repo), "-a", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=logfile.open("w"), stderr=subprocess.STDOUT)
    wait_port(port, proc)
    return Server("hg serve", proc, f"http://127.0.0.1:{port}/.git/info/lfs", workdir, logfile)


# giftless 0.6.2's wheel declares no dependencies; these are what it imports. PyJWT 2.10+ rejects its
# action tokens ("sub": null), hence the pin.
GIFTLESS_PACKAGES = ["giftless", "gunicorn", "flask", "flask-classful", "flask-marshmallow", "marshmallow",
                     "webargs", "pyyaml", "pyjwt<2.10", "python-dateutil", "figcan", "cachetools",
                     "typing-extensions", "python-dotenv"]


def giftless_venv(venv: Path) -> Path:
    py = venv / "bin" / "python"
    marker = venv / ".lfsbench-installed"
    if not marker.exists():
        log(f"installing giftless + gunicorn into {venv} ...")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *GIFTLESS_PACKAGES], check=True)
        marker.write_text(" ".join(GIFTLESS_PACKAGES) + "\n")
    return venv


def start_giftless(workdir: Path, venv: Path) -> Server:
    giftless_venv(venv)
    storage = workdir / "storage"
    storage.mkdir()
    config = workdir / "giftless.yaml"
    config.write_text(f"""AUTH_PROVIDERS:
  - giftless.auth.allow_anon:read_write
TRANSFER_ADAPTERS:
  basic:
    factory: giftless.transfer.basic_streaming:factory
    options:
      storage_class: giftless.storage.local_storage:LocalStorage
      storage_options:
        path: {storage}
""")
    port = free_port()
    logfile = workdir / "server.log"
    env = {**os.environ, "GIFTLESS_CONFIG_FILE": str(config)}
    workers = os.cpu_count() or 2
    proc = subprocess.Popen(
        [str(venv / "bin" / "gunicorn"), "--worker-class", "gthread", "--workers", str(workers),
         "--threads", "16", "--timeout", "600", "--bind", f"127.0.0.1:{port}", "giftless.wsgi_entrypoint:app"],
        cwd=workdir, env=env, stdout=logfile.open("w"), stderr=subprocess.STDOUT)
    wait_port(port, proc)
    return Server("giftless", proc, f"http://127.0.0.1:{port}/bench/repo.git/info/lfs", workdir, logfile)


# -- peak RSS --------------------------------------------------------------------------------------

def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakRss:
    """Peak resident memory of a server (summed over its processes) while a block runs.

    The kernel's own peak (VmHWM) is reset at the start (`echo 5 > /proc/PID/clear_refs`) and read
    at the end; a 20 ms poller of VmRSS covers systems where the reset is not allowed.
    """

    def __init__(self, server: Server):
        self.server = server
        self.peak_kib = 0
        self._stop = threading.Event()

    def __enter__(self):
        for pid in self.server.pids():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                pass
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_kib = max(self.peak_kib, sum(_status_kib(p, "VmRSS") for p in self.server.pids()))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, sum(_status_kib(p, "VmHWM") for p in self.server.pids()))

    @property
    def mib(self) -> float:
        return self.peak_kib / 1024


def server_cpu(server: Server) -> float:
    """CPU seconds (user + system, all threads) the server's processes have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in server.pids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


class Profile:
    """`py-spy record` of the server while a block runs (--profile DIR), top entries kept for the report."""

    def __init__(self, server: Server, outdir: str | None, tag: str):
        self.server, self.outdir, self.tag = server, outdir, tag
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        if self.outdir:
            out = Path(self.outdir) / f"{self.server.name.replace(' ', '')}-{self.tag}"
            self.proc = subprocess.Popen(
                ["py-spy", "record", "--pid", str(self.server.proc.pid), "--rate", "250", "--nonblocking",
                 "--threads", "--format", "raw", "-o", f"{out}.txt"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # attached before the phase starts
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- a small blocking HTTP client for single large streams -----------------------------------------

def _parse_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed before the response headers")
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, rest


def _discard_chunked(sock: socket.socket, pending: bytes) -> int:
    """Read a chunked body, returning the number of payload bytes (framing excluded)."""
    buf = bytes(pending)
    pos = 0
    total = 0

    def more() -> None:
        nonlocal buf, pos
        data = sock.recv(4 * MiB)
        if not data:
            raise ConnectionError("connection closed inside a chunked body")
        buf = buf[pos:] + data
        pos = 0

    while True:
        end = buf.find(b"\r\n", pos)
        while end < 0:
            more()
            end = buf.find(b"\r\n", pos)
        size = int(buf[pos:end].split(b";")[0], 16)
        pos = end + 2
        if size == 0:
            return total
        total += size
        size += 2  # the chunk's trailing CRLF
        while size:
            if pos >= len(buf):
                buf, pos = b"", 0
                data = sock.recv(4 * MiB)
                if not data:
                    raise ConnectionError("connection closed inside a chunked body")
                buf = data
            take = min(size, len(buf) - pos)
            pos += take
            size -= take


def blocking_transfer(url: str, method: str, headers: dict[str, str], chunks=None, length: int = 0,
                      timeout: float = 900) -> tuple[int, int]:
    """Send one request (body from `chunks`), read and discard the response body; (status, body bytes)."""
    u = urllib.parse.urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
    try:
        hdrs = {"Host": u.netloc, "Connection": "close", **headers}
        if chunks is not None:
            hdrs["Content-Length"] = str(length)
            hdrs.setdefault("Content-Type", "application/octet-stream")
        path = u.path + (f"?{u.query}" if u.query else "")
        sock.sendall((f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
                      + "\r\n").encode("latin-1"))
        if chunks is not None:
            for chunk in chunks:
                sock.sendall(chunk)
        status, rhdrs, rest = _parse_head(sock)
        if rhdrs.get("transfer-encoding", "").lower() == "chunked":
            return status, _discard_chunked(sock, rest)
        got = len(rest)
        buf = bytearray(4 * MiB)
        view = memoryview(buf)
        want = int(rhdrs["content-length"]) if "content-length" in rhdrs else None
        while want is None or got < want:
            n = sock.recv_into(view)
            if not n:
                break
            got += n
        if want is not None and got < want:
            raise ConnectionError(f"response cut at {got} of {want} bytes")
        return status, got
    finally:
        sock.close()


def blocking_json(url: str, body: dict) -> dict:
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Accept": LFS_JSON, "Content-Type": LFS_JSON})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


# -- a small asyncio HTTP/1.1 client (keep-alive) for many small requests --------------------------

class AConn:
    def __init__(self):
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.netloc = ""

    async def _connect(self, netloc: str) -> None:
        host, port = netloc.rsplit(":", 1)
        self.reader, self.writer = await asyncio.open_connection(host, int(port), limit=4 * MiB)
        self.netloc = netloc

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.writer = None

    async def request(self, method: str, url: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
        u = urllib.parse.urlsplit(url)
        if self.writer is None or self.netloc != u.netloc or self.reader.at_eof():
            await self.close()
            await self._connect(u.netloc)
        path = u.path + (f"?{u.query}" if u.query else "")
        hdrs = {"Host": u.netloc, **headers}
        if body or method in ("PUT", "POST"):
            hdrs["Content-Length"] = str(len(body))
        self.writer.write((f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
                           + "\r\n").encode("latin-1"))
        if body:
            self.writer.write(body)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        rh = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k:
                rh[k.strip().lower()] = v.strip()
        if "content-length" in rh:
            data = await self.reader.readexactly(int(rh["content-length"]))
        elif rh.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            data = b"".join(parts)
        else:
            data = await self.reader.read()
            await self.close()
        if rh.get("connection", "").lower() == "close":
            await self.close()
        return status, data

    async def batch(self, lfs_base: str, operation: str, objs: list[tuple[str, int]]) -> dict:
        body = json.dumps({"operation": operation, "objects": [{"oid": o, "size": s} for o, s in objs]}).encode()
        status, data = await self.request("POST", f"{lfs_base}/objects/batch",
                                          {"Accept": LFS_JSON, "Content-Type": LFS_JSON}, body)
        if status != 200:
            raise RuntimeError(f"batch {operation}: HTTP {status}: {data[:200]!r}")
        return json.loads(data)


class TransferError(Exception):
    pass


async def upload_objects(conn: AConn, lfs_base: str, objects: dict[str, bytes]) -> None:
    answer = await conn.batch(lfs_base, "upload", [(o, len(d)) for o, d in objects.items()])
    for obj in answer["objects"]:
        if "error" in obj:
            raise TransferError(f"upload batch: {obj['error']}")
        actions = obj.get("actions") or {}
        if "upload" not in actions:
            continue
        act = actions["upload"]
        status, data = await conn.request("PUT", act["href"], {**act.get("header", {}),
                                          "Content-Type": "application/octet-stream"}, objects[obj["oid"]])
        if status not in (200, 201):
            raise TransferError(f"PUT {status}: {data[:200]!r}")
        if "verify" in actions:
            ver = actions["verify"]
            body = json.dumps({"oid": obj["oid"], "size": obj["size"]}).encode()
            status, data = await conn.request("POST", ver["href"], {**ver.get("header", {}),
                                              "Content-Type": LFS_JSON}, body)
            if status != 200:
                raise TransferError(f"verify {status}: {data[:200]!r}")


async def download_objects(conn: AConn, lfs_base: str, objects: dict[str, int]) -> int:
    answer = await conn.batch(lfs_base, "download", list(objects.items()))
    total = 0
    for obj in answer["objects"]:
        if "error" in obj:
            raise TransferError(f"download batch: {obj['error']}")
        act = obj["actions"]["download"]
        status, data = await conn.request("GET", act["href"], act.get("header", {}))
        if status != 200 or len(data) != objects[obj["oid"]]:
            raise TransferError(f"GET {status}, {len(data)} bytes")
        total += len(data)
    return total


# -- the phases ------------------------------------------------------------------------------------

@dataclass
class Results:
    target: str
    values: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def phase_big(server: Server, res: Results, size: int, profile: str | None = None) -> None:
    log(f"  {server.name}: computing the oid of the {size // MiB} MiB object ...")
    oid = big_oid(size)
    answer = blocking_json(f"{server.lfs_base}/objects/batch",
                           {"operation": "upload", "objects": [{"oid": oid, "size": size}]})
    act = answer["objects"][0]["actions"]["upload"]
    log(f"  {server.name}: uploading {size // MiB} MiB ...")
    with Profile(server, profile, "big-upload"), PeakRss(server) as rss:
        cpu = server_cpu(server)
        t = time.perf_counter()
        status, _ = blocking_transfer(act["href"], "PUT", act.get("header", {}), big_chunks(size), size)
        dt = time.perf_counter() - t
        cpu = server_cpu(server) - cpu
    if status not in (200, 201):
        raise RuntimeError(f"big upload: HTTP {status}")
    res.values["big_upload_mibs"] = size / MiB / dt
    res.values["big_upload_cpu_gib"] = cpu / (size / GiB)
    res.values["big_upload_rss_mib"] = rss.mib
    answer = blocking_json(f"{server.lfs_base}/objects/batch",
                           {"operation": "download", "objects": [{"oid": oid, "size": size}]})
    act = answer["objects"][0]["actions"]["download"]
    log(f"  {server.name}: downloading {size // MiB} MiB ...")
    with PeakRss(server) as rss:
        cpu = server_cpu(server)
        t = time.perf_counter()
        status, got = blocking_transfer(act["href"], "GET", act.get("header", {}))
        dt = time.perf_counter() - t
        cpu = server_cpu(server) - cpu
    if status != 200 or got != size:
        raise RuntimeError(f"big download: HTTP {status}, {got} bytes")
    res.values["big_download_mibs"] = size / MiB / dt
    res.values["big_download_cpu_gib"] = cpu / (size / GiB)
    res.values["big_download_rss_mib"] = rss.mib


def small_set(count: int, size: int, tag: int) -> dict[str, bytes]:
    out = {}
    for i in range(count):
        data = make_object(tag * 1_000_000 + i, size)
        out[hashlib.sha256(data).hexdigest()] = data
    return out


async def phase_small(server: Server, res: Results, count: int, profile: str | None = None) -> dict[str, int]:
    objects = small_set(count, 64 * 1024, 1)
    items = list(objects.items())
    conn = AConn()
    with Profile(server, profile, "small-upload"):
        cpu = server_cpu(server)
        t = time.perf_counter()
        for i in range(0, len(items), 100):
            await upload_objects(conn, server.lfs_base, dict(items[i:i + 100]))
        dt = time.perf_counter() - t
        cpu = server_cpu(server) - cpu
    res.values["small_upload_mibs"] = count * 64 / 1024 / dt
    res.values["small_upload_objs"] = count / dt
    res.values["small_upload_cpu_ms"] = 1000 * cpu / count
    with Profile(server, profile, "small-download"):
        cpu = server_cpu(server)
        t = time.perf_counter()
        for i in range(0, len(items), 100):
            await download_objects(conn, server.lfs_base, {o: len(d) for o, d in items[i:i + 100]})
        dt = time.perf_counter() - t
        cpu = server_cpu(server) - cpu
    res.values["small_download_mibs"] = count * 64 / 1024 / dt
    res.values["small_download_objs"] = count / dt
    res.values["small_download_cpu_ms"] = 1000 * cpu / count
    await conn.close()
    return {o: len(d) for o, d in objects.items()}


async def phase_concurrent(server: Server, res: Results, clients: int, per_client: int) -> None:
    sets = [small_set(per_client, MiB, 100 + c) for c in range(clients)]
    errors: list[str] = []
    conns = [AConn() for _ in range(clients)]

    async def up(c: int) -> None:
        try:
            await upload_objects(conns[c], server.lfs_base, sets[c])
        except Exception as exc:  # counted, not fatal: the point is how many
            errors.append(f"upload: {type(exc).__name__}: {exc}")
            await conns[c].close()

    async def down(c: int) -> None:
        try:
            await download_objects(conns[c], server.lfs_base, {o: len(d) for o, d in sets[c].items()})
        except Exception as exc:
            errors.append(f"download: {type(exc).__name__}: {exc}")
            await conns[c].close()

    total = clients * per_client
    t = time.perf_counter()
    await asyncio.gather(*(up(c) for c in range(clients)))
    res.values["concurrent_upload_mibs"] = total / (time.perf_counter() - t)
    t = time.perf_counter()
    await asyncio.gather(*(down(c) for c in range(clients)))
    res.values["concurrent_download_mibs"] = total / (time.perf_counter() - t)
    res.values["concurrent_errors"] = len(errors)
    for e in sorted(set(errors))[:5]:
        res.notes.append(f"concurrent: {e[:160]}")
    for conn in conns:
        await conn.close()


async def phase_batch(server: Server, res: Results, stored: dict[str, int]) -> None:
    oids = list(stored.items())
    # Request bodies made in advance, and answers only scanned for errors: the load generator
    # shares the CPUs with the server and should spend as little of them as it can.
    bodies = [json.dumps({"operation": "download",
                          "objects": [{"oid": o, "size": n} for o, n in oids[i:i + 100]]}).encode()
              for i in range(0, len(oids), 100)]
    headers = {"Accept": LFS_JSON, "Content-Type": LFS_JSON}

    async def worker(n: int, out: list[float], errs: list[str]) -> None:
        conn = AConn()
        for i in range(n):
            t = time.perf_counter()
            try:
                status, data = await conn.request("POST", f"{server.lfs_base}/objects/batch", headers,
                                                  bodies[i % len(bodies)])
                if status != 200 or b'"error"' in data:
                    raise TransferError(f"batch: HTTP {status}, {data[:200]!r}")
            except Exception as exc:
                errs.append(str(exc))
                await conn.close()
                continue
            out.append(time.perf_counter() - t)
        await conn.close()

    for conc, per in ((1, 300), (64, 15)):
        lat: list[float] = []
        errs: list[str] = []
        await worker(5, [], [])  # warm-up
        await asyncio.gather(*(worker(per, lat, errs) for _ in range(conc)))
        lat.sort()
        if lat:
            res.values[f"batch_c{conc}_p50_ms"] = 1000 * lat[len(lat) // 2]
            res.values[f"batch_c{conc}_p99_ms"] = 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        res.values[f"batch_c{conc}_errors"] = len(errs)


def run_target(name: str, args) -> Results:
    res = Results(name)
    workdir = Path(tempfile.mkdtemp(prefix=f"lfsbench-{name}-", dir=args.data_dir))
    fsync = not args.no_fsync
    if name.startswith("lfsserve"):
        res.notes.append(f"setting: lfs.fsync = {str(fsync and name != 'lfsserve-nofsync').lower()}")
    starter = {"lfsserve": lambda w: start_lfsserve_alone(w, fsync=fsync),
               "lfsserve-nofsync": lambda w: start_lfsserve_alone(w, fsync=False),
               "lfsserve-base": lambda w: start_lfsserve_alone(w, fsync=fsync, src=Path(args.base_src)),
               "lfsserve-1x": lambda w: start_lfsserve_cluster(w, 1, fsync=fsync),
               "lfsserve-2x": lambda w: start_lfsserve_cluster(w, 2, fsync=fsync),
               "hgserve": start_hgserve,
               "giftless": lambda w: start_giftless(w, Path(args.giftless_venv))}[name]
    server = starter(workdir)
    server.name = name if name.startswith("lfsserve") else server.name
    log(f"{server.name}: {server.lfs_base}")
    try:
        with PeakRss(server) as whole:
            if "big" not in args.skip:
                try:
                    phase_big(server, res, args.big_mib * MiB, args.profile)
                except Exception as exc:
                    res.notes.append(f"big object: {type(exc).__name__}: {exc}")
            stored: dict[str, int] = {}
            if "small" not in args.skip:
                try:
                    stored = asyncio.run(phase_small(server, res, args.small_count, args.profile))
                except Exception as exc:
                    res.notes.append(f"small objects: {type(exc).__name__}: {exc}")
            if "concurrent" not in args.skip:
                asyncio.run(phase_concurrent(server, res, args.clients, 10))
            if "batch" not in args.skip and stored:
                asyncio.run(phase_batch(server, res, stored))
        res.values["peak_rss_mib"] = whole.mib
        if server.proc.poll() is not None:
            res.notes.append(f"server exited with {server.proc.returncode}")
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return res


ROWS = [
    ("big_upload_mibs", "large object upload, MiB/s", True),
    ("big_upload_cpu_gib", "  server CPU-s per GiB", False),
    ("big_download_mibs", "large object download, MiB/s", True),
    ("big_download_cpu_gib", "  server CPU-s per GiB", False),
    ("big_upload_rss_mib", "  peak RSS during upload, MiB", False),
    ("big_download_rss_mib", "  peak RSS during download, MiB", False),
    ("small_upload_mibs", "1000 x 64 KiB upload, MiB/s", True),
    ("small_upload_objs", "  objects/s", True),
    ("small_upload_cpu_ms", "  server CPU-ms per object", False),
    ("small_download_mibs", "1000 x 64 KiB download, MiB/s", True),
    ("small_download_objs", "  objects/s", True),
    ("small_download_cpu_ms", "  server CPU-ms per object", False),
    ("concurrent_upload_mibs", "64 clients x 10 x 1 MiB upload, MiB/s", True),
    ("concurrent_download_mibs", "64 clients x 10 x 1 MiB download, MiB/s", True),
    ("concurrent_errors", "  errors", False),
    ("batch_c1_p50_ms", "batch of 100, c=1, p50 ms", False),
    ("batch_c1_p99_ms", "batch of 100, c=1, p99 ms", False),
    ("batch_c64_p50_ms", "batch of 100, c=64, p50 ms", False),
    ("batch_c64_p99_ms", "batch of 100, c=64, p99 ms", False),
    ("batch_c64_errors", "  errors", False),
    ("peak_rss_mib", "peak RSS over the run, MiB", False),
]


def merge_rounds(rounds: list[Results]) -> Results:
    """One target's results over several rounds: the median of each value."""
    out = Results(rounds[0].target)
    for key in {k for r in rounds for k in r.values}:
        out.values[key] = statistics.median(r.values[key] for r in rounds if key in r.values)
    out.notes = list(dict.fromkeys(n for r in rounds for n in r.notes))
    return out


def targets(results: list[Results], baseline: float) -> list[str]:
    """Issue 16's targets, each as a ratio measured in this run, met or missed."""
    by = {r.target: r.values for r in results}
    lfs, hg, nofs = by.get("lfsserve", {}), by.get("hgserve", {}), by.get("lfsserve-nofsync", {})
    sha_cpu = 1024 / baseline  # CPU-s to hash one GiB, one thread
    rows: list[tuple[str, float, float, bool]] = []  # label, ratio, bound, higher is better

    def add(label: str, a: dict, akey: str, b: dict | float, bkey: str | None, bound: float, higher: bool) -> None:
        bv = b if isinstance(b, float) else b.get(bkey or akey)
        if akey in a and bv:
            rows.append((label, a[akey] / bv, bound, higher))

    add("large upload: server CPU per GiB / single-thread SHA-256 CPU per GiB", lfs, "big_upload_cpu_gib",
        sha_cpu, None, 1.5, False)
    add("large upload: throughput / hg serve's", lfs, "big_upload_mibs", hg, None, 2.0, True)
    add("64 KiB upload: server CPU per object / hg serve's", lfs, "small_upload_cpu_ms", hg, None, 0.5, False)
    # hg serve syncs nothing: the same ratio without lfs.fsync (the journal commits are kernel
    # CPU charged to lfsserve) says what the request path itself costs.
    add("64 KiB upload, lfs.fsync off: server CPU per object / hg serve's", nofs, "small_upload_cpu_ms", hg, None,
        0.5, False)
    add("64 KiB download: server CPU per object / hg serve's", lfs, "small_download_cpu_ms", hg, None, 0.5, False)
    add("64 KiB upload, lfs.fsync on: objects/s / hg serve's", lfs, "small_upload_objs", hg, None, 1.0, True)
    add("64 KiB upload, lfs.fsync off: objects/s / hg serve's", nofs, "small_upload_objs", hg, None, 1.5, True)
    add("64 KiB download: objects/s / hg serve's", lfs, "small_download_objs", hg, None, 1.5, True)
    lines = [f"targets (issue 16; single-thread SHA-256 costs {sha_cpu:.2f} CPU-s per GiB here):"]
    for label, ratio, bound, higher in rows:
        met = ratio >= bound if higher else ratio <= bound
        lines.append(f"  {label}: {ratio:.2f} ({'>=' if higher else '<='} {bound:g}) {'met' if met else 'MISSED'}")
    return lines


def report(results: list[Results], baseline: float, big_mib: int, load: float, rounds: int) -> str:
    lines = [f"single-thread SHA-256: {baseline:.0f} MiB/s   (large object: {big_mib} MiB; "
             f"{os.cpu_count()} CPUs; load average at start {load:.2f}, at end {os.getloadavg()[0]:.2f}; "
             f"{rounds} round(s), servers alternating, medians)", ""]
    for r in results:
        for note in r.notes:
            if note.startswith("setting:"):
                lines.insert(1, f"{r.target} {note}")
    names = [r.target for r in results]
    lines.append(f"{'':42}" + "".join(f"{n:>17}" for n in names))
    for key, label, _ in ROWS:
        if not any(key in r.values for r in results):
            continue
        cells = "".join(f"{r.values[key]:>17.2f}" if key in r.values else f"{'-':>17}" for r in results)
        lines.append(f"{label:42}{cells}")
    base = next((r for r in results if r.target == "lfsserve"), None)
    if base is not None:
        lines.append("")
        if "big_upload_mibs" in base.values:
            lines.append(f"lfsserve large upload / SHA-256 ceiling: {base.values['big_upload_mibs'] / baseline:.0%}")
        for other in results:
            if other is base:
                continue
            for key, label, higher_better in ROWS:
                if key in base.values and key in other.values and other.values[key] > 0 and higher_better:
                    lines.append(f"lfsserve / {other.target}: {label.strip()}: "
                                 f"{base.values[key] / other.values[key]:.2f}x")
        lines.append("")
        lines += targets(results, baseline)
    for r in results:
        for note in r.notes:
            if not note.startswith("setting:"):
                lines.append(f"note ({r.target}): {note}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="lfsserve",
                   help="comma-separated: lfsserve,hgserve,giftless,lfsserve-1x,lfsserve-2x")
    p.add_argument("--big-mib", type=int, default=1024, help="size of the large object in MiB (default 1024)")
    p.add_argument("--small-count", type=int, default=1000)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--skip", default="", help="comma-separated phases to skip: big,small,concurrent,batch")
    p.add_argument("--data-dir", default=None, help="where servers keep their data (default: temp dir)")
    p.add_argument("--giftless-venv", default="/tmp/lfsserve-bench-giftless")
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("--keep", action="store_true", help="keep the servers' data directories")
    p.add_argument("--no-fsync", action="store_true",
                   help="run lfsserve with lfs.fsync = false (hg serve and giftless never fsync); "
                        "the target lfsserve-nofsync runs a second lfsserve that way in the same run")
    p.add_argument("--base-src", metavar="DIR",
                   help="a source tree of another lfsserve version (e.g. `git archive <commit> | tar -x -C DIR`) "
                        "for the target lfsserve-base: before / after in one run")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every target this many times, alternating their order; report medians")
    p.add_argument("--profile", metavar="DIR",
                   help="record the server with py-spy (raw, --threads) during the large upload and "
                        "the small uploads / downloads, into DIR")
    args = p.parse_args()
    args.skip = set(filter(None, args.skip.split(",")))
    try:
        import uvloop  # type: ignore[import-not-found]
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    load = os.getloadavg()[0]
    baseline = sha256_baseline()
    log(f"single-thread SHA-256: {baseline:.0f} MiB/s")
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    per: dict[str, list[Results]] = {n: [] for n in names}
    for i in range(args.rounds):
        # Alternate the order, so that neither server always runs right after the other.
        for name in (names if i % 2 == 0 else names[::-1]):
            per[name].append(run_target(name, args))
        baseline = max(baseline, sha256_baseline())
    results = [merge_rounds(per[n]) for n in names]
    text = report(results, baseline, args.big_mib, load, args.rounds)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"sha256_mibs": baseline, "big_mib": args.big_mib,
                                               "results": [r.__dict__ for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
