"""Wire v1 commands run without any transport: the command layer imports no aiohttp, and a
session from the repository registry's opener is all a command needs (what an SSH transport will
build on). Also: the opener applies the server's settings and closes what it opened."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lfsserve.hg.error import RepoNotFound
from lfsserve.hg.repository import Repository
from lfsserve.repos import AbsentRepo, RepoRegistry, RepoSettings, ServedRepo, engine_repo

ROOT = Path(__file__).resolve().parents[2]

# Builds one changeset with the engine's revlog writers (no hg needed), then runs commands on it
# through the registry's opener in a process that must never import aiohttp.
SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    from lfsserve.config import Config
    from lfsserve.hg.node import NULLID, hash_revision
    from lfsserve.hg.repository import Repository
    from lfsserve.hg.revlog import Revlog, RevlogWriter
    from lfsserve.hg.store import Store
    from lfsserve.repos import RepoRegistry, RepoSettings
    from lfsserve.wire.v1.commands import COMMANDS, Session, Stream, bind_args

    root = Path(sys.argv[1])
    repo = Repository.init(root / "r")
    with repo.lock(), repo.transaction() as tr:
        def writer(name):
            return RevlogWriter(repo.open_revlog(Revlog, name), tr, index_name=name,
                                data_name=name[:-2] + b".d", compression=repo.compression,
                                sparse=repo.sparse, create_header=repo.revlog_header())
        previous = NULLID
        for name, text in ((Store.filelog_name(b"a"), b"hello\\n"), (b"00manifest.i", None),
                           (b"00changelog.i", None)):
            if name == b"00manifest.i":
                text = b"a\\0" + previous.hex().encode() + b"\\n"
            elif name == b"00changelog.i":
                text = previous.hex().encode() + b"\\nalice\\n0 0\\na\\n\\nfirst"
            w = writer(name)
            previous = hash_revision(text, NULLID, NULLID)
            w.add(previous, NULLID, NULLID, 0, 0, text=text)
            w.finalize()
    repo.close()

    config = Config()
    registry = RepoRegistry(root, RepoSettings(publishing=False, lock_timeout=7.0))

    def run(name, repo_name="r", session=Session, **args):
        cmd = COMMANDS[name]
        with registry.open(repo_name, may_create=True) as served:
            out = cmd.func(session(config, served), **bind_args(cmd, args))
            if isinstance(out, Stream):
                out = b"".join(out.chunks())
        return out.decode("latin-1")

    answers = {
        "heads": run("heads"),
        "lookup": run("lookup", key=b"tip"),
        "listkeys": run("listkeys", namespace=b"phases"),
        "capabilities": run("capabilities"),
        # a transport that adds nothing of HTTP's (as SSH will)
        "bare_capabilities": run("capabilities", session=lambda c, r: Session(c, r, transport="ssh")),
        "getbundle": run("getbundle", heads=previous.hex().encode(), common=b"0" * 40,
                         bundlecaps=b"HG20,bundle2=HG20%0Achangegroup%3D01%2C02%2C03"),
        "absent_heads": run("heads", repo_name="not/yet"),
        "tip": previous.hex(),
        "aiohttp": "aiohttp" in sys.modules,
    }
    print(json.dumps(answers))
''')


def test_v1_commands_run_without_aiohttp(tmp_path):
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert res.returncode == 0, res.stderr.decode()
    answers = json.loads(res.stdout)
    assert answers["aiohttp"] is False
    tip = answers["tip"]
    assert answers["heads"] == tip + "\n"
    assert answers["lookup"] == f"1 {tip}\n"
    # not publishing (the registry's settings reached the repository): no `publishing True`
    assert answers["listkeys"] == ""
    caps = answers["capabilities"].split(" ")
    assert "unbundlehash" in caps and "httpheader=1024" in caps
    bare = answers["bare_capabilities"].split(" ")
    assert "unbundlehash" in bare and not [c for c in bare if c.startswith(("http", "compression="))]
    bundle = answers["getbundle"]
    assert bundle.startswith("HG20") and "CHANGEGROUP" in bundle
    assert answers["absent_heads"] == "0" * 40 + "\n"


def test_opener_applies_settings_and_closes(tmp_path, monkeypatch):
    Repository.init(tmp_path / "team" / "r").close()
    registry = RepoRegistry(tmp_path, RepoSettings(publishing=False, lock_timeout=3.5))
    closed: list[Repository] = []
    close = Repository.close
    monkeypatch.setattr(Repository, "close", lambda self: (closed.append(self), close(self)))
    with registry.open("team/r") as served:
        repo = engine_repo(served)
        assert (repo.publishing, repo.lock_timeout) == (False, 3.5)
        assert repo.heads() == [b"\0" * 20] and not closed
    assert closed == [repo]
    with pytest.raises(RepoNotFound):
        with registry.open("team/other"):
            pass
    with pytest.raises(RepoNotFound):
        with registry.open("team/r/inside", may_create=True):
            pass
    with registry.open("team/new", may_create=True) as absent:
        assert isinstance(absent, AbsentRepo) and absent.lock_timeout == 3.5 and not absent.publishing
        with pytest.raises(RepoNotFound):
            engine_repo(absent)
        created = absent.create()
    assert (created.publishing, created.lock_timeout) == (False, 3.5)
    created.close()
    assert registry.exists("team/new")


def test_both_repositories_are_served_repositories(tmp_path):
    # Structural typing, checked here at run time on the attributes the protocol names.
    repo = Repository.init(tmp_path / "r")
    members = [n for n in ServedRepo.__annotations__] + [
        n for n, v in vars(ServedRepo).items() if callable(v) and not n.startswith("_")]
    for served in (repo, AbsentRepo(tmp_path / "absent")):
        missing = [n for n in members if not hasattr(served, n)]
        assert not missing, f"{type(served).__name__} lacks {missing}"
    repo.close()


def test_hg_over_ssh_path_imports_no_aiohttp():
    """`lfsserve ssh` starts once per hg command: what its hg session imports is start-up CPU on
    every clone and pull (bench/ssh_bench.py). The HTTP stack must stay out of it."""
    probe = "import sys, lfsserve.ssh.session, lfsserve.ssh.hg; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
