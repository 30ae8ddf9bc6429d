#!/usr/bin/env python3
"""hg over SSH benchmark: `lfsserve ssh` vs `hg serve --stdio` (Mercurial 7.2.4) through one sshd.

Not a test. Serves the wire v1 benchmark's synthetic repository (5,000 changesets, 3,000 files;
built once and cached by wire_v1_bench.py's builder) through a real OpenSSH server on 127.0.0.1
with three keys, each with its forced command run under GNU time (which appends the command's
user+system CPU seconds, its own and its children's, to a file per key):

  lfsserve        `lfsserve ssh`, with `lfsserve serve` running on the same data directory and
                  configuration file: the forced command hands the session to the server
                  (ssh.handoff, the default); its CPU is the forced command's plus the server
                  process's (all threads, from /proc) over the same run
  lfsserve-alone  `lfsserve ssh` with LFSSERVE_SSH_HANDOFF=0: the forced command serves the
                  session itself, as without a running server
  hg              `hg -R <repo> serve --stdio`

Measured:

  clone     `hg clone -U ssh://...`
  stream    `hg clone -U --stream ssh://...`
  pull100   `hg pull` of the last 100 changesets into a clone of the first 4,900

printing wall time and server CPU seconds (sshd's own crypto is outside all of them), best of
--repeat, and lfsserve/hg ratios paired per back-to-back run with the order rotating, as
wire_v1_bench.py does. Needs root (sshd logs the client in as root), openssh-server, GNU time.

    python bench/ssh_bench.py [--changesets 5000] [--files 3000] [--repeat 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wire_v1_bench import (
    HG,
    REPO_ROOT,
    add_repo_args,
    cached_repo,
    cpu_seconds,
    free_port,
    geomean,
    run_hg,
    stop_process,
)

SSHD = "/usr/sbin/sshd"
GNU_TIME = "/usr/bin/time"


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


class Sshd:
    def __init__(self, work: Path, commands: dict[str, str], keys: dict[str, Path]):
        host = keygen(work / "host_key")
        self.port = free_port()
        lines = []
        for name, command in commands.items():
            pub = keys[name].with_suffix(".pub").read_text().strip()
            lines.append(f'command="{command}",no-pty,no-port-forwarding,no-agent-forwarding {pub}')
        authorized = work / "authorized_keys"
        authorized.write_text("\n".join(lines) + "\n")
        self.known_hosts = work / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} " + " ".join(
            host.with_suffix(".pub").read_text().split()[:2]) + "\n")
        config = work / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {host}", f"PidFile {work / 'sshd.pid'}",
            "StrictModes no", "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", f"AuthorizedKeysFile {authorized}",
        ]) + "\n")
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=open(work / "sshd.log", "wb"))  # noqa: SIM115
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("sshd did not start:\n" + (work / "sshd.log").read_text()) from None
                time.sleep(0.05)

    def ssh_command(self, key: Path) -> str:
        return (f"ssh -F /dev/null -o BatchMode=yes -o UserKnownHostsFile={self.known_hosts} "
                f"-o StrictHostKeyChecking=yes -o IdentityFile={key} -o IdentitiesOnly=yes")

    def stop(self) -> None:
        stop_process(self.proc)


class Side:
    """One server as the client reaches it: its ssh command line (key) and its CPU record: the
    forced commands' (GNU time's file) plus, with handoff, the running server's."""

    def __init__(self, name: str, url: str, ssh: str, cpu_file: Path, server_pid: int | None = None):
        self.name, self.url, self.ssh, self.cpu_file, self.server_pid = name, url, ssh, cpu_file, server_pid

    def cpu(self) -> float:
        total = cpu_seconds(self.server_pid) if self.server_pid else 0.0
        if not self.cpu_file.exists():
            return total
        for line in self.cpu_file.read_text().splitlines():
            words = line.split()
            if len(words) == 2:
                total += float(words[0]) + float(words[1])
        return total

    def hg(self, args: list[str], env: dict) -> None:
        run_hg(["--config", f"ui.ssh={self.ssh}", *args], env)


class LfsserveServer:
    """`lfsserve serve` on the benchmark's data directory and configuration file (it takes the
    SSH sessions handed to it); stopped by its pid."""

    def __init__(self, config: Path, work: Path):
        log = work / "lfsserve.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "lfsserve", "serve", "--config", str(config),
                                          "--port", "0"], cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        deadline = time.monotonic() + 60
        while "listening on" not in log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("lfsserve serve did not start:\n" + log.read_text(errors="replace"))
            time.sleep(0.1)
        self.pid = self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)

    def hg(self, args: list[str], env: dict) -> None:
        run_hg(["--config", f"ui.ssh={self.ssh}", *args], env)


def _clone(side: Side, d: Path, env: dict) -> None:
    side.hg(["clone", "-U", side.url, str(d / "clone")], env)


def _stream(side: Side, d: Path, env: dict) -> None:
    side.hg(["clone", "-U", "--stream", side.url, str(d / "stream")], env)


def _pull(side: Side, d: Path, env: dict) -> None:
    side.hg(["pull", "-R", str(d / "pull"), side.url], env)


SCENARIOS: list[tuple[str, Callable[[Side, Path, dict], None], str]] = [
    ("clone", _clone, "clone"),
    ("stream clone", _stream, "stream"),
    ("pull 100", _pull, "pull"),
]


def run_scenario(name: str, fn: Callable[[Side, Path, dict], None], check: str, side: Side, work: Path,
                 env: dict, base: Path) -> tuple[float, float]:
    d = work / "run"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    if name == "pull 100":
        shutil.copytree(base, d / "pull", symlinks=True)
    os.sync()
    c0 = side.cpu()
    t0 = time.monotonic()
    fn(side, d, env)
    wall = time.monotonic() - t0
    time.sleep(0.3)  # GNU time writes its line when the server command has exited
    cpu = side.cpu() - c0
    run_hg(["verify", "-q", "-R", str(d / check)], env)
    shutil.rmtree(d, ignore_errors=True)
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_repo_args(ap)
    ap.add_argument("--repeat", type=int, default=4, help="back-to-back pairs, order alternating")
    args = ap.parse_args()
    for program in (SSHD, GNU_TIME):
        if not os.path.exists(program):
            sys.exit(f"{program} is needed (apt-get install -y openssh-server time)")

    env, src = cached_repo(args)

    work = Path(tempfile.mkdtemp(prefix="ssh-bench-"))
    os.chmod(work, 0o755)
    sshd = server = None
    names = ("lfsserve", "lfsserve-alone", "hg")
    try:
        root = work / "root"
        repos = root / "repos"
        shutil.copytree(src, repos / "bench", symlinks=True)
        base = work / "base"
        run_hg(["clone", "-q", "-U", "-r", str(args.changesets - 101), str(src), str(base)], env)
        run_hg(["phase", "-p", "-r", "all()", "-R", str(base)], env)
        config = work / "lfsserve.toml"
        config.write_text(f'[server]\nroot = "{root}"\n[auth]\nanonymous = "none"\nauthenticated = "write"\n')
        server = LfsserveServer(config, work)
        keys = {name: keygen(work / f"key-{name}") for name in names}
        cpu_files = {name: work / f"cpu-{name}" for name in keys}
        timed = f"{GNU_TIME} -f '%U %S' -a -o"
        lfs = f"{sys.executable} -m lfsserve ssh --config {config} --user bench"
        commands = {
            "lfsserve": f"PYTHONPATH={REPO_ROOT} {timed} {cpu_files['lfsserve']} {lfs}",
            "lfsserve-alone": (f"PYTHONPATH={REPO_ROOT} LFSSERVE_SSH_HANDOFF=0 {timed} {cpu_files['lfsserve-alone']} "
                               f"{lfs}"),
            "hg": f"cd {repos} && {timed} {cpu_files['hg']} {HG} -R bench serve --stdio",
        }
        sshd = Sshd(work, commands, keys)
        url = f"ssh://root@127.0.0.1:{sshd.port}/bench"
        sides = {name: Side(name, url, sshd.ssh_command(keys[name]), cpu_files[name],
                            server.pid if name == "lfsserve" else None) for name in names}
        results: dict[str, dict[str, tuple[float, float]]] = {}
        pairs: dict[str, dict[str, list[tuple[float, float]]]] = {"lfsserve": {}, "lfsserve-alone": {}}
        for i in range(args.repeat):
            for name, fn, check in SCENARIOS:
                got = {}
                order = names[i % 3:] + names[:i % 3]
                for side in order:
                    v = got[side] = run_scenario(name, fn, check, sides[side], work, env, base)
                    best = results.setdefault(side, {})
                    best[name] = (min(best.get(name, v)[0], v[0]), min(best.get(name, v)[1], v[1]))
                h = got["hg"]
                for ours in pairs:
                    o = got[ours]
                    pairs[ours].setdefault(name, []).append((o[0] / h[0], o[1] / h[1] if h[1] else float("inf")))
    finally:
        if sshd is not None:
            sshd.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nhg over SSH: {args.changesets} changesets / {args.files} files, best of {args.repeat}; "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"{'scenario':14} {'wall: hg':>9} {'lfsserve':>9} {'alone':>9}   "
          f"{'server CPU: hg':>14} {'lfsserve':>9} {'alone':>9}")
    for k in results["hg"]:
        hw, hc = results["hg"][k]
        lw, lc = results["lfsserve"][k]
        aw, ac = results["lfsserve-alone"][k]
        print(f"{k:14} {hw:8.2f}s {lw:8.2f}s {aw:8.2f}s   {hc:13.2f}s {lc:8.2f}s {ac:8.2f}s")
    for ours, by_scenario in pairs.items():
        print(f"\npaired ratios, {ours} / hg serve --stdio (geometric mean over {args.repeat} back-to-back "
              f"runs, order rotating; targets: server CPU <= 0.6, wall <= 1.0):")
        for k, rs in by_scenario.items():
            wall, cpu = geomean([w for w, _ in rs]), geomean([c for _, c in rs])
            each = " ".join(f"{w:.2f}/{c:.2f}" for w, c in rs)
            verdict = "met" if wall <= 1.0 and cpu <= 0.6 else "MISSED"
            print(f"{k:14} wall {wall:5.2f}   server CPU {cpu:5.2f}   {verdict}   (each wall/CPU: {each})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
