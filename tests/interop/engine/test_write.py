"""The engine writes repositories hg accepts: pushes applied by lfsserve match hg's own unbundle,
survive a SIGKILL at any point, and share hg's lock."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lfsserve.hg.error import BadChangegroup, LockTimeout, PushRaced
from lfsserve.hg.repository import Repository
from lfsserve.hg.verify import verify

from .bundles import hg20
from .repos import HERE, hg_dump

pytestmark = pytest.mark.interop
ENV = {**os.environ, "HGRCPATH": os.devnull}


def hg_changegroup(src: Path, version: str, out: Path, common=(), heads=()) -> Path:
    """The changegroup hg itself would push (made by Mercurial's packer)."""
    cmd = [sys.executable, str(HERE / "hgcg.py"), str(src), version, str(out)]
    for c in common:
        cmd += ["--common", c.hex()]
    for h in heads:
        cmd += ["--heads", h.hex()]
    subprocess.run(cmd, check=True, env=ENV, capture_output=True)
    return out


def store_snapshot(repo_path: Path) -> dict[str, bytes]:
    """Every file of .hg/store and .hg/bookmarks (what a rollback must restore exactly)."""
    out = {}
    for p in sorted((repo_path / ".hg" / "store").rglob("*")):
        if p.is_file() and not p.name.startswith(("undo", "lock")):
            out[str(p.relative_to(repo_path))] = p.read_bytes()
    bm = repo_path / ".hg" / "bookmarks"
    if bm.exists():
        out["bookmarks"] = bm.read_bytes()
    return out


def apply(repo_path: Path, cg: Path, version: str, *, publish: bool = True):
    repo = Repository.open(repo_path)
    with repo.lock(timeout=5), repo.transaction(b"push") as tr, open(cg, "rb") as f:
        res = repo.add_changegroup(tr, f, version)
        if publish:
            repo.phases_advance(tr, 0, res.added)
    return res


def hg_unbundle(hg, target: Path, cg: Path, version: str, tmp: Path, *extra: str) -> None:
    bundle = tmp / f"ref-{version}.hg"
    bundle.write_bytes(hg20([cg.read_bytes()], version))
    hg(*extra, "unbundle", "-q", str(bundle), cwd=target)


def dump_without_storage(d: dict) -> dict:
    return {k: d[k] for k in ("changelog", "manifest", "files", "heads", "branchmap", "tags")}


@pytest.mark.parametrize("name,version", [("varied", "01"), ("varied", "02"), ("varied", "03"),
                                          ("synthetic", "03"), ("lfs", "03"), ("oldformat", "02")])
def test_push_into_empty_repo_matches_hg_unbundle(built, session_hg, tmp_path, name, version):
    """The same changegroup, applied by lfsserve and by hg unbundle: identical repositories,
    and hg verify accepts ours."""
    src = built[name]
    cg = hg_changegroup(src, version, tmp_path / "cg")
    lfs = ("--config", "extensions.lfs=") if name == "lfs" else ()
    if name == "oldformat":
        init = ("--config", "format.usegeneraldelta=false", "--config", "format.sparse-revlog=false",
                "--config", "format.dotencode=false", "--config", "format.revlog-compression=zlib")
        session_hg(*init, "init", str(tmp_path / "ours"))
    else:
        Repository.init(tmp_path / "ours")
    session_hg(*lfs, "init", str(tmp_path / "ref"))
    res = apply(tmp_path / "ours", cg, version)
    hg_unbundle(session_hg, tmp_path / "ref", cg, version, tmp_path, *lfs)
    session_hg(*lfs, "verify", "-q", cwd=tmp_path / "ours")
    assert verify(Repository.open(tmp_path / "ours")) == []  # also checks the fncache
    ours, ref = hg_dump(tmp_path / "ours"), hg_dump(tmp_path / "ref")
    assert dump_without_storage(ours) == dump_without_storage(ref)
    assert set(ours["phases"]) == {0}  # published
    assert len(res.added) == len(ref["changelog"])
    open_heads = session_hg(*lfs, "log", "-r", "heads(all()) and not closed()", "-T", "x", cwd=tmp_path / "ref").stdout
    # hg's convention: 1 + heads added - heads removed (the empty repository's null head),
    # closing heads not counted
    assert res.return_code == 1 + len(open_heads) - 1
    tmpl = "{rev}:{node} {branch} {author} {date|hgdate} {files} {desc}\\n"
    assert session_hg(*lfs, "log", "-T", tmpl, cwd=tmp_path / "ours").stdout == \
        session_hg(*lfs, "log", "-T", tmpl, cwd=tmp_path / "ref").stdout
    if name == "lfs":
        assert "lfs" in Repository.open(tmp_path / "ours").requirements
        assert len(res.lfs_oids) == 3


def test_incremental_pushes_and_return_codes(built, session_hg, tmp_path):
    src = built["synthetic"]
    ours, ref = tmp_path / "ours", tmp_path / "ref"
    session_hg("clone", "-q", "-r", "120", str(src), str(ours))
    session_hg("clone", "-q", "-r", "120", str(src), str(ref))
    # hg's caches exist before our write: they must still be right afterwards
    before_branches = session_hg("branches", cwd=ours).stdout
    assert before_branches
    repo = Repository.open(src)
    cl = repo.changelog
    common = [cl.node(120)]
    steps = [[cl.node(199)], [cl.node(260), cl.node(len(cl) - 1)]]
    for heads in steps:
        cg = hg_changegroup(src, "03", tmp_path / "cg", common=common, heads=heads)
        res = apply(ours, cg, "03")
        hg_unbundle(session_hg, ref, cg, "03", tmp_path)
        assert res.added and res.return_code >= 1
        common = heads
    assert dump_without_storage(hg_dump(ours)) == dump_without_storage(hg_dump(ref))
    session_hg("verify", "-q", cwd=ours)
    # hg's undo information predates our pushes: `hg rollback` must not use it
    res = session_hg("rollback", "--dry-run", cwd=ours, check=False)
    assert res.returncode != 0 and b"no rollback information" in res.stderr
    for cmd in (["branches"], ["heads", "-T", "{node}\\n"], ["tags"], ["log", "-l", "5"]):
        assert session_hg(*cmd, cwd=ours).stdout == session_hg(*cmd, cwd=ref).stdout, cmd
    # applying the same changegroup again adds nothing
    res = apply(ours, cg, "03")
    assert res.added == [] and res.return_code == 1


def test_return_codes_match_hg(session_hg, tmp_path):
    """New heads, a closing head and a merge: our return code is the one hg's unbundle reports."""
    import re

    src, ours, ref = tmp_path / "src", tmp_path / "ours", tmp_path / "ref"
    session_hg("init", str(src))
    session_hg("init", str(ref))
    Repository.init(ours)
    (src / "f").write_text("1\n")
    session_hg("commit", "-A", "-m", "root", cwd=src)

    def push_and_compare():
        common = Repository.open(ours).heads() if len(Repository.open(ours).changelog) else []
        cg = hg_changegroup(src, "02", tmp_path / "cg", common=common)
        res = apply(ours, cg, "02")
        bundle = tmp_path / "b.hg"
        bundle.write_bytes(hg20([cg.read_bytes()], "02"))
        out = session_hg("unbundle", str(bundle), cwd=ref).stdout.decode()
        m = re.search(r"\(([+-]\d+) heads\)", out)
        delta = int(m.group(1)) if m else 0
        assert res.return_code == (delta + 1 if delta >= 0 else delta - 1), out
        return res

    push_and_compare()
    (src / "f").write_text("2\n")
    session_hg("commit", "-m", "child", cwd=src)
    session_hg("update", "0", cwd=src)
    (src / "g").write_text("x\n")
    session_hg("commit", "-A", "-m", "second head", cwd=src)
    assert push_and_compare().return_code == 2  # a second head
    session_hg("commit", "--close-branch", "-m", "close it", cwd=src)
    assert push_and_compare().return_code == -2  # closing replaces a head and does not count
    session_hg("update", "1", cwd=src)
    session_hg("merge", "-r", "3", cwd=src)
    session_hg("commit", "-m", "merge", cwd=src)
    push_and_compare()
    session_hg("verify", "-q", cwd=ours)


def test_phases_bookmarks_pushkey(built, session_hg, tmp_path):
    src = built["varied"]
    target = tmp_path / "t"
    Repository.init(target)
    cg = hg_changegroup(src, "03", tmp_path / "cg")
    res = apply(target, cg, "03", publish=False)
    repo = Repository.open(target)
    assert {repo.phase(r) for r in range(len(repo.changelog))} == {1}  # new changesets are draft
    cl = repo.changelog
    n5, n9, tip = cl.node(5), cl.node(9), res.added[-1]
    with repo.lock(), repo.transaction() as tr:
        assert repo.pushkey(tr, "phases", n5.hex(), "1", "0")  # draft -> public
        assert not repo.pushkey(tr, "phases", n9.hex(), "2", "0")  # wrong old phase
        assert repo.pushkey(tr, "bookmarks", "feature", "", n9.hex())
        assert not repo.pushkey(tr, "bookmarks", "feature", "", tip.hex())  # exists already
        assert repo.pushkey(tr, "bookmarks", "feature", n9.hex(), tip.hex())
        assert repo.pushkey(tr, "bookmarks", "gone", "", n5.hex())
        assert repo.pushkey(tr, "bookmarks", "gone", n5.hex(), "")
        assert not repo.pushkey(tr, "bookmarks", "bad", "", "00" * 20)
    public = session_hg("log", "-r", "public()", "-T", "{node}\\n", cwd=target).stdout.decode().split()
    anc = session_hg("log", "-r", f"::{n5.hex()}", "-T", "{node}\\n", cwd=target).stdout.decode().split()
    assert sorted(public) == sorted(anc)
    marks = session_hg("bookmarks", "-T", "{bookmark} {node}\\n", cwd=target).stdout.decode().split("\n")
    assert marks[:-1] == [f"feature {tip.hex()}"]
    repo = Repository.open(target)
    assert repo.listkeys("bookmarks") == {b"feature": tip.hex().encode()}
    # check_heads as unbundle uses it
    import hashlib

    heads = repo.heads()
    repo.check_heads(list(reversed(heads)))
    repo.check_heads([b"hashed", hashlib.sha1(b"".join(sorted(heads))).digest()])
    repo.check_heads([b"force"])
    with pytest.raises(PushRaced):
        repo.check_heads([heads[0]] if len(heads) > 1 else [b"\1" * 20])
    session_hg("verify", "-q", cwd=target)


def _corrupt_variants(cg: bytes) -> list[tuple[str, bytes]]:
    hdr = 4  # first chunk: length, then node p1 p2 base link flags
    flipped = bytearray(cg)
    flipped[hdr + 3] ^= 1  # inside the first changeset's node
    late = bytearray(cg)
    late[len(cg) * 2 // 3] ^= 0x40  # somewhere in the file data
    return [("node mismatch", bytes(flipped)), ("late corruption", bytes(late)),
            ("truncated", cg[: len(cg) // 2]), ("garbage", b"\0\0\0\x20" + b"x" * 28)]


def test_bad_changegroups_are_refused_and_leave_no_trace(built, session_hg, tmp_path):
    target = tmp_path / "t"
    session_hg("clone", "-q", "-r", "3", str(built["varied"]), str(target))
    cg = hg_changegroup(built["varied"], "03", tmp_path / "cg",
                       common=[Repository.open(target).heads()[0]]).read_bytes()
    before = store_snapshot(target)
    for what, data in _corrupt_variants(cg):
        (tmp_path / "bad").write_bytes(data)
        with pytest.raises(BadChangegroup):
            apply(target, tmp_path / "bad", "03")
        assert store_snapshot(target) == before, what
    # an lfs flag on a revision whose text is not a pointer
    src = tmp_path / "src"
    session_hg("init", str(src))
    (src / "f").write_text("not a pointer\n")
    session_hg("commit", "-A", "-m", "x", cwd=src)
    raw = bytearray(hg_changegroup(src, "03", tmp_path / "cg2").read_bytes())
    fpos = raw.index(b"\0\0\0\x05f") + 5 + 4  # file "f": its first revision chunk header
    raw[fpos + 100:fpos + 102] = b"\x20\x00"
    (tmp_path / "bad").write_bytes(bytes(raw))
    empty = tmp_path / "empty"
    Repository.init(empty)
    with pytest.raises(BadChangegroup, match="pointer"):
        apply(empty, tmp_path / "bad", "03")
    assert not (empty / ".hg" / "store" / "journal").exists()
    assert sorted(p.name for p in (empty / ".hg" / "store").iterdir()) == ["requires"]
    session_hg("verify", "-q", cwd=target)


def _driver(repo: Path, cg: Path, version: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "cgdriver.py"), str(repo), str(cg), version, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _wait_for(proc: subprocess.Popen, prefix: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line
    proc.kill()
    raise AssertionError(f"driver never printed {prefix!r}: {proc.stderr.read()[-2000:]}")


@pytest.mark.slow
def test_sigkill_at_any_point_rolls_back(built, session_hg, tmp_path):
    """Kill the writing process at several points; recovery restores the repository exactly."""
    src = tmp_path / "src"
    session_hg("clone", "-q", str(built["synthetic"]), str(src))
    # the push makes an inline filelog grow past the threshold: it gets split mid-transaction
    grown = b"src/mod001/file0001.txt"
    with open(src / os.fsdecode(grown), "ab") as f:
        f.write(random.Random(3).randbytes(150_000).hex().encode())
    session_hg("commit", "-m", "grow a file", cwd=src)
    base = tmp_path / "base"
    session_hg("clone", "-q", "-r", "60", str(src), str(base))
    # a bookmark and phases the rollback must restore
    session_hg("bookmark", "-r", "30", "keep", cwd=base)
    session_hg("phase", "--draft", "--force", "-r", "50:", cwd=base)
    assert Repository.open(base).file(grown).index.inline
    cg = hg_changegroup(src, "03", tmp_path / "cg", common=[Repository.open(base).heads()[0]])
    before = store_snapshot(base)
    rnd = random.Random(11)
    points = ["reading", "files", "state", "published"] + [None] * 3
    for i, point in enumerate(points):
        work = tmp_path / f"w{i}"
        shutil.copytree(base, work, symlinks=True)
        args = ["--publish"] + (["--pause-at", point] if point else ["--slow", "0.0005"])
        proc = _driver(work, cg, "03", *args)
        _wait_for(proc, "READY")
        if point:
            _wait_for(proc, "AT " + point)
        else:
            time.sleep(rnd.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if i % 2:
            # hg's own recover understands our journal
            session_hg("recover", cwd=work, check=False)
        else:
            with Repository.open(work).lock(timeout=5):
                pass  # taking the lock recovers an abandoned journal
        assert not (work / ".hg" / "store" / "journal").exists()
        assert store_snapshot(work) == before, f"kill point {point or 'random'}"
        session_hg("verify", "-q", cwd=work)
        # and the push then goes through
        res = apply(work, cg, "03")
        assert res.added
        session_hg("verify", "-q", cwd=work)
        assert not Repository.open(work).file(grown).index.inline


def test_lock_is_shared_with_hg(built, session_hg, tmp_path):
    target = tmp_path / "t"
    session_hg("clone", "-q", str(built["varied"]), str(target))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from mercurial import hg, ui\n"
         "r = hg.repository(ui.ui.load(), sys.argv[1].encode())\n"
         "with r.lock():\n"
         "    print('LOCKED', flush=True)\n"
         "    sys.stdin.readline()\n", str(target)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        repo = Repository.open(target)
        start = time.monotonic()
        with pytest.raises(LockTimeout) as exc:
            with repo.lock(timeout=0.5):
                pass
        assert time.monotonic() - start >= 0.5
        assert f":{holder.pid}" in str(exc.value)
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(10)
        with repo.lock(timeout=5):
            # while we hold it, hg waits and then gives up
            res = session_hg("--config", "ui.timeout=1", "tag", "-m", "t", "shouldfail", cwd=target, check=False)
            assert res.returncode != 0 and b"lock" in res.stderr
        session_hg("--config", "ui.timeout=5", "tag", "worksnow", cwd=target)
    finally:
        holder.kill()
    # a lock left by a dead process of this host is broken, as hg does
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from lfsserve.hg.lock import lock_prefix

    os.symlink(f"{lock_prefix()}:{dead.pid}", target / ".hg" / "store" / "lock")
    with Repository.open(target).lock(timeout=1):
        pass
    assert not (target / ".hg" / "store" / "lock").exists()


def test_push_into_persistent_nodemap_repo(built, session_hg, tmp_path):
    """hg's on-disk nodemap stays valid: we only append, which hg's docket check handles."""
    pn = ("--config", "format.use-persistent-nodemap=yes",
          "--config", "storage.revlog.persistent-nodemap.slow-path=allow")
    target = tmp_path / "pn"
    session_hg(*pn, "clone", "-q", "-r", "3", str(built["varied"]), str(target))
    assert "persistent-nodemap" in Repository.open(target).requirements
    assert (target / ".hg" / "store" / "00changelog.n").exists()
    cg = hg_changegroup(built["varied"], "03", tmp_path / "cg", common=Repository.open(target).heads())
    res = apply(target, cg, "03")
    assert res.added
    session_hg(*pn, "verify", "-q", cwd=target)
    want = session_hg("log", "-r", "not secret()", "-T", "{node}\\n", cwd=built["varied"]).stdout.split()
    got = session_hg(*pn, "log", "-T", "{node}\\n", cwd=target).stdout.split()
    assert sorted(got) == sorted(want)
    for node in want:
        session_hg(*pn, "log", "-r", node.decode(), "-T", "{rev}", cwd=target)  # nodemap lookups
    session_hg(*pn, "update", "-q", "default", cwd=target)
    session_hg(*pn, "tag", "after-push", cwd=target)  # hg writes on top of our push
    session_hg(*pn, "verify", "-q", cwd=target)


def test_readers_never_see_a_half_written_push(built, session_hg, tmp_path):
    """Reader threads (one Repository each, shared index cache) run while pushes are applied and
    one is rolled back: every changeset they see is complete (manifest and file revisions there)."""
    import threading

    src = built["synthetic"]
    target = tmp_path / "t"
    session_hg("clone", "-q", "-U", "-r", "100", str(src), str(target))
    cl = Repository.open(src).changelog
    stops = [160, 220, 280, len(cl) - 1]
    cgs, common = [], [cl.node(100)]
    for i, rev in enumerate(stops):
        cgs.append(hg_changegroup(src, "03", tmp_path / f"cg{i}", common=common, heads=[cl.node(rev)]))
        common = [cl.node(rev)]
    errors: list[str] = []
    done = threading.Event()
    seen = []

    def reader():
        try:
            while not done.is_set():
                repo = Repository.open(target)
                n = len(repo.changelog)
                seen.append(n)
                for rev in (n - 1, n // 2):
                    entry = repo.changelog.read(rev)
                    mf = repo.manifestlog.read(entry.manifest)
                    for path in entry.files:
                        if path in mf:
                            repo.file(path).revision(repo.file(path).rev(mf[path][0]), verify=True)
                repo.heads()
                repo.close()
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i, cg in enumerate(cgs):
            if i == 2:
                # a push that fails at the very end is rolled back under the readers' feet
                (tmp_path / "bad").write_bytes(cg.read_bytes()[:-3])
                with pytest.raises(BadChangegroup):
                    apply(target, tmp_path / "bad", "03")
            apply(target, cg, "03")
            time.sleep(0.05)
    finally:
        done.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    assert max(seen) == len(cl) and min(seen) == 101
    session_hg("verify", "-q", cwd=target)
