"""Benchmark of the repository engine against Mercurial 7.2.4's own code (C extensions).

    python bench/engine_bench.py [--changesets 5000] [--workdir DIR] [--runs 3]

1. Builds (once, cached in --workdir) a synthetic repository with Mercurial's API: 5,000
   changesets, a few hundred files, a named branch merged back every 50 changesets.
2. Full read: every revision of the changelog, the manifest and every filelog, rebuilt and
   hash-checked, by lfsserve's engine and by hg (`rawdata()` on each revlog, in-process; hg also
   checks hashes). Also shows `hg verify` as a second reference. Cold process-wide caches for both.
3. Push write path: the same changegroup (1, 100 and all changesets) applied by the engine
   (add_changegroup in a transaction, publish) and by hg (its changegroup unpacker's apply() in a
   transaction), into copies of the same base repository.
4. Changegroup generation for a full clone (cg03): engine vs hg's changegroup packer.

Prints times (best of --runs) and the engine/hg ratios. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ENGINE_TESTS = ROOT / "tests" / "interop" / "engine"
ENV = {**os.environ, "HGRCPATH": os.devnull, "HGPLAIN": "1"}

HG_READ = textwrap.dedent("""
    import sys, time
    from mercurial import hg, ui as uimod
    u = uimod.ui.load()
    t = time.perf_counter()
    repo = hg.repository(u, sys.argv[1].encode()).unfiltered()
    n = 0
    revlogs = [repo.changelog, repo.manifestlog.getstorage(b"")._revlog]
    revlogs += [repo.file(e.target_id)._revlog for e in repo.store.data_entries() if e.is_filelog]
    for rl in revlogs:
        for rev in rl:
            rl.rawdata(rev)
            n += 1
    print(time.perf_counter() - t, n)
""")

HG_APPLY = textwrap.dedent("""
    import sys, time
    from mercurial import changegroup, hg, phases, ui as uimod
    u = uimod.ui.load()
    u.setconfig(b"ui", b"quiet", b"yes")
    repo = hg.repository(u, sys.argv[1].encode())
    t = time.perf_counter()
    with repo.lock(), repo.transaction(b"push") as tr, open(sys.argv[2], "rb") as f:
        cg = changegroup.getunbundler(sys.argv[3].encode(), f, None)
        cg.apply(repo, tr, b"push", b"bench")
        phases.advanceboundary(repo, tr, phases.public, [repo.changelog.tip()])
    print(time.perf_counter() - t)
""")

HG_APPLY_SERIES = textwrap.dedent("""
    import sys, time
    from mercurial import changegroup, hg, phases, ui as uimod
    u = uimod.ui.load()
    u.setconfig(b"ui", b"quiet", b"yes")
    repo = hg.repository(u, sys.argv[1].encode())
    times = []
    for cgfile in sys.argv[2:]:
        t = time.perf_counter()
        with repo.lock(), repo.transaction(b"push") as tr, open(cgfile, "rb") as f:
            cg = changegroup.getunbundler(b"03", f, None)
            cg.apply(repo, tr, b"push", b"bench")
            phases.advanceboundary(repo, tr, phases.public, [repo.changelog.tip()])
        times.append(time.perf_counter() - t)
    print(sum(times[2:]) / len(times[2:]))
""")

HG_GENERATE = textwrap.dedent("""
    import sys, time
    from mercurial import changegroup, discovery, hg, ui as uimod
    u = uimod.ui.load()
    t = time.perf_counter()
    repo = hg.repository(u, sys.argv[1].encode()).filtered(b"served")
    out = discovery.outgoing(repo, [], repo.heads())
    size = 0
    for chunk in changegroup.makestream(repo, out, b"03", b"pull"):
        size += len(chunk)
    print(time.perf_counter() - t, size)
""")


def py(code: str, *args: str) -> str:
    return subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True,
                          text=True, env=ENV).stdout


def engine_read(path: Path) -> tuple[float, int]:
    """In a fresh process, as hg's reference does: nothing cached."""
    code = textwrap.dedent("""
        import sys, time
        sys.path.insert(0, sys.argv[2])
        from lfsserve.hg.repository import Repository
        t = time.perf_counter()
        repo = Repository.open(sys.argv[1])
        n = 0
        revlogs = [repo.changelog, repo.manifestlog.revlog]
        revlogs += [repo.file(name[5:-2]) for name in repo.store.data_files() if name.endswith(b".i")]
        for rl in revlogs:
            for rev in rl:
                rl.revision(rev, verify=True)
                n += 1
        print(time.perf_counter() - t, n)
    """)
    t, n = py(code, str(path), str(ROOT)).split()
    return float(t), int(n)


def engine_apply(path: Path, cg: Path, version: str) -> float:
    code = textwrap.dedent("""
        import sys, time
        sys.path.insert(0, sys.argv[4])
        from lfsserve.hg import changegroup  # noqa: F401 (imported before timing, as hg's modules are)
        from lfsserve.hg.repository import Repository
        repo = Repository.open(sys.argv[1])
        t = time.perf_counter()
        with repo.lock(), repo.transaction(b"push") as tr, open(sys.argv[2], "rb") as f:
            res = repo.add_changegroup(tr, f, sys.argv[3])
            repo.phases_advance(tr, 0, res.added)
        print(time.perf_counter() - t)
    """)
    return float(py(code, str(path), str(cg), version, str(ROOT)))


def engine_apply_series(path: Path, cgs: list[Path], durable: bool = True) -> float:
    """Successive one-changeset pushes in one process, as a server sees them (mean, warm)."""
    code = textwrap.dedent("""
        import sys, time
        sys.path.insert(0, sys.argv[2])
        from lfsserve.hg.repository import Repository
        durable = sys.argv[3] == "1"
        times = []
        for cgfile in sys.argv[4:]:
            t = time.perf_counter()
            repo = Repository.open(sys.argv[1])  # one Repository per request
            repo.durable = durable
            with repo.lock(), repo.transaction(b"push") as tr, open(cgfile, "rb") as f:
                res = repo.add_changegroup(tr, f, "03")
                repo.phases_advance(tr, 0, res.added)
            times.append(time.perf_counter() - t)
        print(sum(times[2:]) / len(times[2:]))
    """)
    return float(py(code, str(path), str(ROOT), "1" if durable else "0", *map(str, cgs)))


def engine_generate(path: Path) -> tuple[float, int]:
    code = textwrap.dedent("""
        import sys, time
        sys.path.insert(0, sys.argv[2])
        from lfsserve.hg.repository import Repository
        from lfsserve.hg import changegroup
        t = time.perf_counter()
        repo = Repository.open(sys.argv[1])
        size = 0
        for chunk in changegroup.generate(repo, repo.missing([], repo.heads()), "03"):
            size += len(chunk)
        print(time.perf_counter() - t, size)
    """)
    t, size = py(code, str(path), str(ROOT)).split()
    return float(t), int(size)


def best(fn, runs: int):
    results = [fn() for _ in range(runs)]
    return min(results, key=lambda r: r if isinstance(r, float) else r[0])


def hg_changegroup(src: Path, out: Path, common_rev: int | None) -> None:
    cmd = [sys.executable, str(ENGINE_TESTS / "hgcg.py"), str(src), "03", str(out)]
    if common_rev is not None:
        node = subprocess.run(["hg", "log", "-R", str(src), "-r", str(common_rev), "-T", "{node}"],
                              check=True, capture_output=True, text=True, env=ENV).stdout
        cmd += ["--common", node]
    subprocess.run(cmd, check=True, env=ENV)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--changesets", type=int, default=5000)
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "lfsserve-engine-bench"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    repo = work / f"synthetic-{args.changesets}-{args.files}"
    if not (repo / ".hg").exists():
        print(f"building {repo} ...", flush=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, str(ENGINE_TESTS / "hgbuild.py"), str(repo), str(args.changesets),
                        "--files", str(args.files), "--merges", "--desc", "80"], check=True, env=ENV)
        print(f"  built in {time.perf_counter() - t:.1f}s")
    size = sum(p.stat().st_size for p in (repo / ".hg" / "store").rglob("*") if p.is_file())
    print(f"repository: {args.changesets} changesets, {args.files} files, store {size / 1e6:.1f} MB")

    print("\n== full read: every revision of every revlog, rebuilt and hash-checked")
    ours, n = best(lambda: engine_read(repo), args.runs)
    theirs, n2 = best(lambda: tuple(float(x) for x in py(HG_READ, str(repo)).split()), args.runs)
    assert n == int(n2), (n, n2)
    print(f"  revisions      {n}")
    print(f"  lfsserve       {ours:8.3f}s")
    print(f"  hg 7.2.4 (C)   {theirs:8.3f}s   ratio {ours / theirs:.2f}x (target: within 3x)")
    t = time.perf_counter()
    subprocess.run(["hg", "-R", str(repo), "verify", "-q"], check=True, env=ENV)
    print(f"  (hg verify     {time.perf_counter() - t:8.3f}s, which also cross-checks)")

    print("\n== changegroup 03 for a full clone")
    ours, size_ours = best(lambda: engine_generate(repo), args.runs)
    theirs, size_theirs = best(lambda: tuple(float(x) for x in py(HG_GENERATE, str(repo)).split()), args.runs)
    print(f"  lfsserve       {ours:8.3f}s  {size_ours / 1e6:.1f} MB")
    print(f"  hg 7.2.4       {theirs:8.3f}s  {size_theirs / 1e6:.1f} MB   ratio {ours / theirs:.2f}x")

    print("\n== push: apply a changegroup 03 in a transaction and publish")
    n = args.changesets
    for label, base_rev in (("1 changeset", n - 2), ("100 changesets", n - 101), (f"{n} changesets", None)):
        cg = work / f"cg-{label.split()[0]}.bin"
        base = work / f"base-{label.split()[0]}"
        if not cg.exists():
            hg_changegroup(repo, cg, base_rev)
        if not base.exists():
            if base_rev is None:
                subprocess.run(["hg", "init", str(base)], check=True, env=ENV)
            else:
                subprocess.run(["hg", "clone", "-q", "-U", "-r", str(base_rev), str(repo), str(base)],
                               check=True, env=ENV)

        def fresh_apply(tag: str, base: Path = base) -> Path:
            dst = work / f"apply-{tag}"
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(base, dst, symlinks=True)
            return dst

        ours = best(lambda cg=cg: engine_apply(fresh_apply("ours"), cg, "03"), args.runs)
        theirs = best(lambda cg=cg: float(py(HG_APPLY, str(fresh_apply("hg")), str(cg), "03")), args.runs)
        subprocess.run(["hg", "-R", str(work / "apply-ours"), "verify", "-q"], check=True, env=ENV)
        print(f"  {label:<16} lfsserve {ours * 1000:9.1f} ms   hg {theirs * 1000:9.1f} ms   "
              f"ratio {ours / theirs:.2f}x")

    print("\n== a server's steady state: 20 successive one-changeset pushes in one process (mean of the last 18)")
    k = 20
    base = work / "base-series"
    if not base.exists():
        subprocess.run(["hg", "clone", "-q", "-U", "-r", str(n - k - 1), str(repo), str(base)], check=True, env=ENV)
    cgs = []
    for i in range(k):
        cg = work / f"cg-series-{i}.bin"
        if not cg.exists():
            rev = n - k + i
            nodes = subprocess.run(["hg", "log", "-R", str(repo), "-r", f"{rev} + p1({rev})", "-T", "{node}\\n"],
                                   check=True, capture_output=True, text=True, env=ENV).stdout.split()
            subprocess.run([sys.executable, str(ENGINE_TESTS / "hgcg.py"), str(repo), "03", str(cg),
                            "--heads", nodes[0], "--common", nodes[1]], check=True, env=ENV)
        cgs.append(cg)

    def fresh(tag: str) -> Path:
        dst = work / f"series-{tag}"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(base, dst, symlinks=True)
        return dst

    ours = best(lambda: engine_apply_series(fresh("ours"), cgs), args.runs)
    nosync = best(lambda: engine_apply_series(fresh("ours"), cgs, durable=False), args.runs)
    theirs = best(lambda: float(py(HG_APPLY_SERIES, str(fresh("hg")), *map(str, cgs))), args.runs)
    subprocess.run(["hg", "-R", str(work / "series-ours"), "verify", "-q"], check=True, env=ENV)
    print(f"  per push         lfsserve {ours * 1000:9.1f} ms   hg {theirs * 1000:9.1f} ms   "
          f"ratio {ours / theirs:.2f}x")
    print(f"  without fsync    lfsserve {nosync * 1000:9.1f} ms   (hg never syncs; lfsserve does by default)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
