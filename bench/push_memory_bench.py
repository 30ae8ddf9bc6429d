"""Peak server memory for a compressed push holding one large revision (issue 10, part 6).

Starts `lfsserve serve` on a fresh root with one repository, pushes (raw HTTP unbundle) a zstd
bundle2 whose changegroup carries one root changeset adding a file of SIZE MiB of zeros (a few
KiB on the wire), and prints the server's peak RSS (VmHWM) before and after, and the answer.

    PYTHONPATH=$PWD python bench/push_memory_bench.py [SIZE_MIB] [extra TOML for [hg]]

Example: `... 256` (accepted under the default hg.max_revision_size of 256 MiB) and
`... 256 "max_revision_size = 67108864"` (refused before the revision is read).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bundle_build import changegroup03, changegroup_bundle
from tests.interop.lfs_util import request
from tests.support import REPO_ROOT, start_lfsserve


def hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def main() -> None:
    size_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    extra = sys.argv[2] if len(sys.argv) > 2 else ""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "srv"
        subprocess.run([sys.executable, "-m", "lfsserve", "init", "--root", str(root), "bench/app"],
                       cwd=REPO_ROOT, check=True, capture_output=True)
        server = start_lfsserve(root, config=f"[hg]\n{extra}\n")
        try:
            bundle = changegroup_bundle(changegroup03(b"zeros.bin", b"\0" * (size_mib << 20)), "ZS")
            before = hwm_kib(server.proc.pid)
            t0 = time.monotonic()
            status, _, raw = request(f"{server.url}/bench/app?cmd=unbundle", "POST", bundle,
                                     {"X-HgArg-1": "heads=" + b"force".hex(),
                                      "Content-Type": "application/mercurial-0.1"}, timeout=600)
            took = time.monotonic() - t0
            after = hwm_kib(server.proc.pid)
            refused = b"error:abort" in raw.lower()
            print(f"revision {size_mib} MiB, bundle {len(bundle)} bytes on the wire: HTTP {status}, "
                  f"{'refused' if refused else 'applied'} in {took:.1f} s; server peak RSS "
                  f"{before / 1024:.0f} -> {after / 1024:.0f} MiB (+{(after - before) / 1024:.0f} MiB)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
