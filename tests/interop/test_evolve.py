"""Per-repository `.hg/hgrc` settings and changeset evolution with the real hg 7.2.4 client and
hg-evolve 12.0.0: one server for the module, one repository per scenario."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lfsserve.hg import obsolete

from ..support import Hg, LfsserveProcess, start_lfsserve

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LfsserveProcess]:
    proc = start_lfsserve(tmp_path_factory.mktemp("evolve") / "server")
    yield proc
    alive = proc.alive()
    proc.stop()
    assert alive, "lfsserve exited during the tests:\n" + proc.log()[-4000:]


@pytest.fixture(scope="module")
def hg(tmp_path_factory) -> Hg:
    return Hg(tmp_path_factory.mktemp("hg-home"))


def server_repo(server: LfsserveProcess, hg: Hg, name: str, hgrc: str) -> Path:
    """A repository made by the real `hg init` where the server serves `name`, with its own hgrc."""
    path = server.root / "repos" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    hg("init", str(path))
    (path / ".hg" / "hgrc").write_text(hgrc)
    return path


def commit(hg: Hg, repo: Path, name: str, text: str, *extra: str) -> None:
    (repo / name).write_text(text)
    hg("commit", "-A", "-m", f"{name}: {text.strip()}", *extra, cwd=repo)


def test_non_publishing_repository_keeps_pushed_drafts(server, hg, tmp_path):
    served = server_repo(server, hg, "team/drafts", "[phases]\npublish = False\n")
    url = f"{server.url}/team/drafts"
    hg("clone", url, str(tmp_path / "a"))
    commit(hg, tmp_path / "a", "f", "one\n")
    out = hg.out("push", cwd=tmp_path / "a")
    assert "added 1 changesets" in out
    # the client learns the server is not publishing: its changeset stays draft
    assert hg.out("log", "-T", "{phase}", cwd=tmp_path / "a") == "draft"
    assert hg.out("log", "-T", "{phase}", cwd=served) == "draft"
    hg("clone", url, str(tmp_path / "b"))
    assert hg.out("log", "-T", "{phase}", cwd=tmp_path / "b") == "draft"
    # the hgrc changes: the next push publishes (the cache follows the file)
    (served / ".hg" / "hgrc").write_text("[phases]\npublish = True\n# now publishing\n")
    commit(hg, tmp_path / "a", "f", "two\n")
    hg("push", cwd=tmp_path / "a")
    assert hg.out("log", "-T", "{phase} ", cwd=served) == "public public "
    hg("verify", cwd=served)


EVOLVE_RC = "[phases]\npublish = False\n[experimental]\nevolution = all\n"


def log(hg: Hg, repo: Path, *args: str) -> list[str]:
    return hg.out("log", "-T", "{desc}\n", *args, cwd=repo).splitlines()


def test_amend_prune_divergence_with_evolve_clients(server, tmp_path):
    served = server_repo(server, Hg(tmp_path / "admin"), "team/evo", EVOLVE_RC)
    url = f"{server.url}/team/evo"
    evo = Hg(tmp_path / "evo-home", "[extensions]\nevolve =\n")
    plain = Hg(tmp_path / "plain-home")
    a, b = tmp_path / "a", tmp_path / "b"
    evo("clone", url, str(a))
    commit(evo, a, "f", "base\n")
    commit(evo, a, "f", "one\n")
    evo("push", cwd=a)
    evo("clone", url, str(b))
    old = evo.out("log", "-r", ".", "-T", "{node}", cwd=a)

    # A amends and pushes: no --force needed, the marker reaches the server
    (a / "f").write_text("one, amended\n")
    evo("amend", "-m", "f: one amended", cwd=a)
    new = evo.out("log", "-r", ".", "-T", "{node}", cwd=a)
    out = evo.out("push", cwd=a)
    assert "remote: 1 new obsolescence markers" in out and "remote: obsoleted 1 changesets" in out, out
    markers = evo.out("debugobsolete", cwd=served)
    assert markers.startswith(f"{old} {new} 0 (") and markers.count("\n") == 1, markers
    assert evo.out("heads", "-T", "{node}\n", cwd=served).split() == [new]

    # B pulls: one head, the amended changeset; the old one is obsolete there too
    evo("pull", "-u", cwd=b)
    assert evo.out("heads", "-T", "{node}\n", cwd=b).split() == [new]
    assert evo.out("log", "-r", "obsolete()", "--hidden", "-T", "{node}", cwd=b) == old
    # a client without evolve sees only the visible changesets
    plain("clone", url, str(tmp_path / "c"))
    assert log(plain, tmp_path / "c") == ["f: one amended", "f: base"]

    # prune: a draft pushed, then pruned; the prune marker travels without any changeset
    commit(evo, a, "g", "doomed\n")
    evo("push", cwd=a)
    evo("prune", "-r", ".", cwd=a)
    res = evo("push", cwd=a, check=False)
    assert "remote: 1 new obsolescence markers" in res.stdout.decode(), res.stdout
    assert log(plain, served, "-r", "all()") == ["f: base", "f: one amended"]
    assert evo.out("heads", "-T", "{node}\n", cwd=served).split() == [new]

    # divergence: A and B rewrite the same changeset each their own way
    evo("pull", "-u", cwd=b)
    (a / "f").write_text("A's way\n")
    evo("amend", "-m", "f: A's way", cwd=a)
    evo("push", cwd=a)
    (b / "f").write_text("B's way\n")
    evo("amend", "-m", "f: B's way", cwd=b)
    out = evo.out("push", "-f", cwd=b)
    assert "remote: 2 new content-divergent changesets" in out, out
    evo("pull", cwd=a)
    assert len(evo.out("log", "-r", "contentdivergent()", "-T", "{node}\n", cwd=a).split()) == 2
    # a new plain clone: both rewrites, not what they replaced
    plain("clone", "-U", url, str(tmp_path / "d"))
    assert sorted(log(plain, tmp_path / "d")) == ["f: A's way", "f: B's way", "f: base"]
    evo("verify", cwd=served)


def both(res: subprocess.CompletedProcess) -> str:
    """stdout and stderr of a command (hg reports new instabilities after a pull on stderr)."""
    return res.stdout.decode("utf-8") + res.stderr.decode("utf-8")


def test_fold_split_orphans_and_phase_divergence(server, tmp_path):
    """fold and split pushed to the server; the orphans a fold leaves are reported on push and on
    pull, and gone once evolved; a rewrite of a changeset published meanwhile is phase-divergent."""
    served = server_repo(server, Hg(tmp_path / "admin"), "team/rewrite", EVOLVE_RC)
    url = f"{server.url}/team/rewrite"
    evo = Hg(tmp_path / "evo-home", "[extensions]\nevolve =\n[ui]\neditor = true\n")
    a, b = tmp_path / "a", tmp_path / "b"
    evo("clone", url, str(a))
    commit(evo, a, "f", "base\n")
    commit(evo, a, "f", "one\n")
    commit(evo, a, "f", "two\n")
    (a / "g").write_text("g\n")
    commit(evo, a, "f", "three\n")  # touches f and g: split below
    evo("push", cwd=a)
    evo("clone", url, str(b))

    # fold "one" and "two": "three" is left an orphan; pushed as it is (-f), the server says so
    evo("fold", "--exact", "-r", "desc('f: one')+desc('f: two')", "-m", "f: one and two", cwd=a)
    out = evo.out("push", "-f", cwd=a)
    assert "remote: 1 new orphan changesets" in out, out
    out = both(evo("pull", cwd=b))
    assert "1 new orphan changesets" in out, out
    assert log(evo, b, "-r", "orphan()") == ["f: three"]

    # evolve the orphan, then split it in two (f, then g) and push: one head everywhere
    evo("evolve", "--all", "--any", cwd=a)
    evo("update", "tip", cwd=a)
    evo("split", "-r", ".", "--config", "ui.interactive=true", cwd=a, input=b"y\ny\nn\nc\n")
    wanted = ["f: three", "f: three", "f: one and two", "f: base"]
    assert log(evo, a) == wanted
    out = evo.out("push", cwd=a)
    assert "new obsolescence markers" in out and "orphan" not in out, out
    head = evo.out("heads", "-T", "{node}\n", cwd=a).split()
    assert evo.out("heads", "-T", "{node}\n", cwd=served).split() == head
    out = both(evo("pull", "-u", cwd=b))
    assert "orphan" not in out, out
    assert evo.out("heads", "-T", "{node}\n", cwd=b).split() == head
    assert log(evo, b) == wanted
    assert evo.out("log", "-r", "tip", "-T", "{files}", cwd=b) == "g"
    assert log(evo, b, "-r", "orphan() + obsolete()") == []
    # the fold's and split's markers are on the server as the client wrote them
    assert sorted(evo.out("debugobsolete", cwd=served).splitlines()) == sorted(
        evo.out("debugobsolete", cwd=a).splitlines())
    plain = Hg(tmp_path / "plain-home")
    plain("clone", "-U", url, str(tmp_path / "c"))
    assert log(plain, tmp_path / "c") == wanted

    # A publishes the tip while B rewrites it: B's push makes a phase-divergent changeset
    evo("phase", "--public", "-r", "tip", cwd=a)
    evo("push", cwd=a, check=False)  # no changesets to push: hg's exit status is 1
    assert evo.out("log", "-r", "tip", "-T", "{phase}", cwd=served) == "public"
    (b / "g").write_text("g, amended\n")
    evo("amend", "-m", "g: amended", cwd=b)
    out = evo.out("push", "-f", cwd=b)
    assert "remote: 1 new phase-divergent changesets" in out, out
    out = both(evo("pull", cwd=a))
    assert "1 new phase-divergent changesets" in out, out
    assert log(evo, a, "-r", "phasedivergent()") == ["g: amended"]
    evo("verify", cwd=served)


@pytest.mark.parametrize("version", [0, 1])
def test_obsstore_read_and_written_as_hg_does(hg, tmp_path, version):
    """Markers hg wrote decode and encode back to the same bytes; the v0/v1 choice is the file's."""
    repo = tmp_path / "r"
    hg("init", str(repo))
    commit(hg, repo, "f", "one\n")
    commit(hg, repo, "f", "two\n")
    nodes = hg.out("log", "-r", "0:", "-T", "{node}\n", cwd=repo).split()
    cfg = ["--config", "experimental.evolution.createmarkers=1", "--config", f"format.obsstore-version={version}"]
    hg("debugobsolete", *cfg, "--record-parents", "-d", "1700000000 -3600", "-u", "Ünïcode <u@example.com>",
       nodes[0], "ab" * 20, "cd" * 20, cwd=repo)
    hg("debugobsolete", *cfg, "--record-parents", nodes[1], cwd=repo)  # a prune
    hg("debugobsolete", *cfg, "12" * 20, "34" * 20, cwd=repo)  # parents unknown, not recorded
    obsstore = repo / ".hg" / "store" / "obsstore"
    data = obsstore.read_bytes()
    listed = hg.out("debugobsolete", *cfg, "-T", "json", cwd=repo)
    got_version, markers = obsolete.decode_markers(data)
    assert got_version == version and len(markers) == 3
    ours = obsolete.encode_markers(markers, version)
    if version == 1:
        assert ours == data
    else:  # hg writes a date given as an integer without ".0"; the marker is the same
        assert obsolete.decode_markers(ours) == (0, markers)
    obsstore.write_bytes(ours)
    assert hg.out("debugobsolete", *cfg, "-T", "json", cwd=repo) == listed
    assert markers[0][1] == (bytes.fromhex("ab" * 20), bytes.fromhex("cd" * 20))
    assert markers[0][4] == (1700000000.0, -3600)
    assert markers[0][5] == (bytes(20),)  # the root's parent, recorded
    assert markers[1][1] == () and markers[1][5] == (bytes.fromhex(nodes[0]),)
    assert markers[2][5] is None


def test_topics_push_pull_and_bare_branch_publishing(server, tmp_path):
    served = server_repo(server, Hg(tmp_path / "admin"), "team/topics",
                         EVOLVE_RC + "topic.publish-bare-branch = yes\n[extensions]\ntopic =\n")
    url = f"{server.url}/team/topics"
    top = Hg(tmp_path / "top-home", "[extensions]\nevolve =\ntopic =\n")
    a, b = tmp_path / "a", tmp_path / "b"
    top("clone", url, str(a))
    caps = top.out("debugcapabilities", url)
    for cap in ("topics", "topics-namespaces", "_exttopics_heads", "ext-topics-publish=auto",
                "ext-topics-tns-heads", "obsmarkers", "V0", "V1"):
        assert f"  {cap}\n" in caps or f"    {cap}\n" in caps, (cap, caps)
    commit(top, a, "f", "base\n")
    top("push", cwd=a)
    # without a topic: published by the push (ext-topics-publish=auto)
    assert top.out("log", "-T", "{phase}", cwd=served) == "public"
    top("topics", "feature", cwd=a)
    commit(top, a, "f", "feature work\n")
    top("push", cwd=a)
    assert top.out("log", "-r", "tip", "-T", "{phase} {topic}", cwd=served) == "draft feature"
    top("clone", url, str(b))
    assert "feature" in top.out("topics", cwd=b)
    top("update", "feature", cwd=b)
    assert "feature work" in top.out("stack", cwd=b)
    # the topic's changeset amended in A: B pulls one head on the topic
    (a / "f").write_text("feature work, amended\n")
    top("amend", "-m", "f: feature work amended", cwd=a)
    top("push", cwd=a)
    top("pull", cwd=b)
    # (B's working directory keeps the old one visible there, as obsolete)
    assert log(top, b, "-r", "obsolete()") == ["f: feature work"]
    assert log(top, b, "-r", "heads(all()) - obsolete()") == ["f: feature work amended"]
    assert log(top, served, "-r", "topic(feature)") == ["f: feature work amended"]


def test_topic_server_checks_gate_and_branchmap(server, tmp_path):
    """hg-evolve's server-side topic settings from the repository's hgrc, as a Heptapod-style
    deployment sets them: drafts without a topic refused (topic-mode.server = enforce), topic
    namespaces refused (tns-reject-push), topic changesets hidden from clients without the topic
    extension (server-gate-topic-changesets), `branch:topic` in the branch map, and no publishing
    at all (topic.allow-publish = no)."""
    rc = (EVOLVE_RC + "topic-mode.server = enforce\ntopic.server-gate-topic-changesets = yes\n"
          "tns-reject-push = yes\n[extensions]\ntopic =\n")
    served = server_repo(server, Hg(tmp_path / "admin"), "team/heptapod", rc)
    url = f"{server.url}/team/heptapod"
    top = Hg(tmp_path / "top-home", "[extensions]\nevolve =\ntopic =\n")
    a = tmp_path / "a"
    top("clone", url, str(a))
    commit(top, a, "f", "base\n")
    top("push", "--publish", cwd=a)  # public: no topic needed
    base = top.out("log", "-r", ".", "-T", "{node}", cwd=a)

    # a draft without a topic: refused, nothing applied
    commit(top, a, "f", "no topic\n")
    res = top("push", cwd=a, check=False)
    short = top.out("log", "-r", ".", "-T", "{node|short}", cwd=a)
    refused = f"remote: rejecting draft changesets: {short}\nabort: push failed on remote"
    assert res.returncode != 0 and refused in res.stderr.decode(), res
    assert log(top, served, "-r", "all()") == ["f: base"]
    # given a topic (a rewrite), it goes through
    top("topics", "-r", ".", "feature", cwd=a)
    top("push", cwd=a)
    feature = top.out("log", "-r", ".", "-T", "{node}", cwd=a)
    assert top.out("log", "-r", "tip", "-T", "{phase} {topic}", cwd=served) == "draft feature"

    # a topic namespace: refused
    top("debug-topic-namespace", "alice", cwd=a)
    top("topics", "other", cwd=a)
    commit(top, a, "g", "namespaced\n")
    res = top("push", "-r", ".", cwd=a, check=False)
    assert "remote: rejecting draft changesets with topic namespace:" in res.stderr.decode(), res
    assert log(top, served, "-r", "all()") == ["f: base", "f: no topic"]

    # gate: a client without topic sees only what has no topic; a topic client sees everything
    plain = Hg(tmp_path / "plain-home")
    plain("clone", "-U", url, str(tmp_path / "p"))
    assert log(plain, tmp_path / "p") == ["f: base"]
    top("clone", "-U", url, str(tmp_path / "t"))
    assert log(top, tmp_path / "t") == ["f: no topic", "f: base"]
    wire_heads = urllib.request.urlopen(f"{url}?cmd=heads", timeout=60).read().decode().split()
    assert wire_heads == [base]
    # the non-publishing topic repository's branch map: the topic's head under `default:feature`
    bm = urllib.request.urlopen(f"{url}?cmd=branchmap", timeout=60).read().decode().splitlines()
    assert sorted(bm) == sorted([f"default {base}", f"default%3Afeature {feature}"]), bm

    # no publishing at all: a push that would publish is refused
    (served / ".hg" / "hgrc").write_text(rc + "[experimental]\ntopic.allow-publish = no\n")
    res = top("push", "--publish", "-r", feature, cwd=a, check=False)
    assert f"remote: rejecting publishing of changeset {feature[:12]}" in res.stderr.decode(), res
    assert top.out("log", "-r", "tip", "-T", "{phase}", cwd=served) == "draft"
    top("verify", cwd=served)
