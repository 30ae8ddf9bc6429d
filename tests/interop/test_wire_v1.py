"""Mercurial wire protocol v1: the real hg 7.2.4 client (and 5.9.3) against a real `lfsserve serve`.

Every clone is verified with `hg verify` and compared with its source (history with phases,
branches, bookmarks and tags, and every manifest); every push is verified on the server side too.
"""

from __future__ import annotations

import http.client
import threading
from pathlib import Path

import pytest

from ..support import Hg
from .hgrepos import NON_ASCII, assert_same, build_rich_repo, history, install, verify

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def rich(tmp_path_factory) -> Path:
    """The source repository, built once per module with the real hg."""
    base = tmp_path_factory.mktemp("rich")
    build_rich_repo(Hg(base / "home"), base / "src")
    return base / "src"


def raw(server, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.reason, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


# -- capabilities and transport ---------------------------------------------------------------------

def test_capabilities_match_hg_serve(lfsserve, hg, rich):
    server = lfsserve()
    served = install(server, rich, "team/app")
    # with a secret changeset there is no stream clone, as with hg serve
    caps = raw(server, "GET", "/team/app?cmd=capabilities")[3].decode().split(" ")
    assert not [c for c in caps if c.startswith("stream")] and "stream%3Dv2" not in caps[2]
    hg("phase", "--draft", "--force", "-r", "secret()", cwd=served)
    status, reason, headers, body = raw(server, "GET", "/team/app?cmd=capabilities")
    assert (status, reason, headers["Content-Type"]) == (200, "Script output follows", "application/mercurial-0.1")
    caps = body.decode().split(" ")
    assert caps == sorted(caps)
    bundle2 = ("bundle2=HG20%0Abookmarks%0Achangegroup%3D01%2C02%2C03%0Acheckheads%3Drelated%0Aerror%3Dabort"
               "%2Cunsupportedcontent%2Cpushraced%2Cpushkey%0Ahgtagsfnodes%0Alistkeys%0Aphases%3Dheads"
               "%0Apushkey%0Astream%3Dv2")
    assert caps == ["batch", "branchmap", bundle2, "changegroupsubset", "compression=zstd,zlib", "getbundle",
                    "httpheader=1024", "httpmediatype=0.1rx,0.1tx,0.2tx", "httppostargs", "known", "lfs",
                    "lookup", "pushkey",
                    "streamreqs=generaldelta,revlog-compression-zstd,revlogv1,sparserevlog",
                    "unbundle=HG10GZ,HG10BZ,HG10UN", "unbundlehash"]


def test_commands_by_hand(lfsserve, hg, rich):
    """Query-string arguments, lookup failure, batch escaping, 405/404/400 and hg-error formats."""
    server = lfsserve()
    install(server, rich, "r")
    tip = hg.out("log", "-R", str(rich), "-r", "max(not secret())", "-T", "{node}")
    feature = hg.out("log", "-R", str(rich), "-r", "feature", "-T", "{node}")
    assert raw(server, "GET", "/r?cmd=lookup&key=feature")[3] == f"1 {feature}\n".encode()
    assert raw(server, "GET", "/r?cmd=lookup", {"X-HgArg-1": "key=doesnotexist"})[3] == \
        b"0 unknown revision 'doesnotexist'\n"
    # the secret changeset is invisible to clients
    secret = hg.out("log", "-R", str(rich), "-r", "secret()", "-T", "{node}")
    assert raw(server, "GET", f"/r?cmd=lookup&key={secret}")[3].startswith(b"0 ")
    assert raw(server, "GET", f"/r?cmd=known&nodes={tip}+{secret}")[3] == b"10"
    # X-HgArgs-Post, honoured even with other args in the query
    assert raw(server, "POST", "/r?cmd=lookup", {"X-HgArgs-Post": "7"}, b"key=tip")[3] == f"1 {tip}\n".encode()
    status, _, _, body = raw(server, "GET", "/r?cmd=batch", {
        "x-hgarg-1": "cmds=heads+%3Bknown+nodes%3D" + tip + "%3Blookup+key%3Dv1.0%3Blistkeys+namespace%3Dbookmarks"})
    results = body.split(b";")
    assert len(results) == 4 and results[1] == b"1" and results[2].startswith(b"1 ")
    assert results[3] == f"feature\t{feature}".encode()  # the tab survives, nothing needed escaping
    heads = set(hg.out("log", "-R", str(rich), "-r", "heads(not secret())", "-T", "{node}\n").split())
    assert set(results[0].decode().split()) == heads
    assert raw(server, "GET", "/r?cmd=branchmap")[3].decode().splitlines()[0].startswith("default ")
    assert raw(server, "GET", "/r?cmd=listkeys&namespace=namespaces")[3] == \
        b"bookmarks\t\nnamespaces\t\nphases\t"
    # errors
    status, reason, headers, body = raw(server, "GET", "/r?cmd=unbundle", {"X-HgArg-1": "heads=666f726365"})
    assert (status, reason, body) == (405, "push requires POST request", b"0\npush requires POST request\n")
    assert "Content-Type" not in headers
    status, _, _, body = raw(server, "GET", "/nope?cmd=heads")
    assert status == 404 and b"nope" in body
    status, _, _, body = raw(server, "GET", "/r?cmd=nosuchcommand")
    assert status == 400 and b"nosuchcommand" in body
    status, _, _, body = raw(server, "GET", "/r?cmd=known&nodes=xyz")
    assert status == 400 and b"40-digit hex" in body
    status, _, _, body = raw(server, "GET", "/r?cmd=lookup")
    assert status == 400 and b"needs argument 'key'" in body
    status, _, _, body = raw(server, "GET", "/r?cmd=batch", {"X-HgArg-1": "cmds=unbundle+heads%3D666f726365"})
    assert status == 400 and b"cannot be batched" in body
    # a header longer than any client sends: refused by the HTTP layer, server keeps serving
    status, _, _, _ = raw(server, "GET", "/r?cmd=heads", {"X-HgArg-1": "x=" + "a" * 20000})
    assert status in (400, 431)
    # bundle1 getbundle (no bundlecaps), no X-HgProto: a bare zlib stream (T:16)
    status, _, headers, body = raw(server, "GET", "/r?cmd=getbundle",
                                   {"X-HgArg-1": f"common={'0' * 40}&heads={tip}"})
    assert headers["Content-Type"] == "application/mercurial-0.1"
    import zlib
    assert zlib.decompress(body)[:4] != b"HG20"
    # bundle2 getbundle the server refuses (a head it does not have): an error:abort part, not a 500
    status, _, headers, body = raw(server, "GET", "/r?cmd=getbundle", {
        "X-HgArg-1": f"bundlecaps=HG20&common={'0' * 40}&heads={'1' * 40}"})
    assert status == 200, (status, body[:300])
    reply = zlib.decompress(body)
    assert status == 200 and reply[:4] == b"HG20", (status, body[:200])
    assert b"error:abort" in reply.lower() and b"1111111111" in reply
    # a browser on the repository URL and on the index
    status, _, headers, body = raw(server, "GET", "/r", {"Accept": "text/html"})
    assert status == 200 and f"hg clone {server.url}/r".encode() in body
    assert raw(server, "GET", "/")[3] == f"{server.url}/r\n".encode()


# -- clone and pull ---------------------------------------------------------------------------------

def test_clone_identical_non_publishing(lfsserve, hg, rich, tmp_path):
    """Phases travel as they are on a non-publishing server; secret changesets do not travel."""
    server = lfsserve(config="[hg]\npublishing = false\n")
    served = install(server, rich, "team/app")
    clone = tmp_path / "clone"
    out = hg.out("clone", f"{server.url}/team/app", str(clone))
    assert "updating to branch default" in out
    verify(hg, clone)
    assert_same(hg, rich, clone)
    assert (clone / NON_ASCII).read_text() == "non-ascii path, edited\n"
    assert (clone / "link-to-readme").is_symlink() and (clone / "run.sh").stat().st_mode & 0o111
    assert "secret" not in hg.out("log", "-R", str(clone), "-T", "{phase}\n")
    verify(hg, served)
    # a stream clone from a non-publishing server keeps the draft phases (phaseroots travel)
    hg("phase", "--draft", "--force", "-r", "secret()", cwd=served)
    stream = tmp_path / "stream"
    res = hg("clone", "--stream", f"{server.url}/team/app", str(stream))
    assert b"streaming all changes" in res.stdout
    verify(hg, stream)
    assert_same(hg, served, stream, "all()")


def test_clone_rev_stream_and_old_client(lfsserve, hg, hg593, rich, tmp_path):
    server = lfsserve()
    served = install(server, rich, "r")
    # -r: only the ancestors of stable
    clone = tmp_path / "rev"
    hg("clone", "-r", "stable", f"{server.url}/r", str(clone))
    verify(hg, clone)
    assert history(hg, clone, "all()") == history(hg, served, "::stable").replace(" draft ", " public ")
    # like hg serve, no stream clone while the repository has secret changesets: a normal clone
    res = hg("clone", "--stream", f"{server.url}/r", str(tmp_path / "nostream"))
    assert b"streaming all changes" not in res.stdout and b"adding changesets" in res.stdout
    hg("phase", "--draft", "--force", "-r", "secret()", cwd=served)
    # --stream: raw store files
    stream = tmp_path / "stream"
    res = hg("clone", "--stream", f"{server.url}/r", str(stream))
    assert b"streaming all changes" in res.stdout
    verify(hg, stream)
    assert manifests_equal(hg, served, stream, "all()")
    # publishing server: no phaseroots travel, everything arrives public
    assert set(hg.out("log", "-R", str(stream), "-T", "{phase}\n").split()) == {"public"}
    # hg 5.9.3 (pure): changegroup 02 and zlib
    old = tmp_path / "old"
    res = hg593("clone", f"{server.url}/r", str(old))
    assert b"added 9 changesets" in res.stdout
    hg593("verify", "-q", "-R", str(old))
    assert manifests_equal(hg, served, old, "all()")


def manifests_equal(hg, a, b, revs):
    from .hgrepos import manifests
    return manifests(hg, a, revs) == manifests(hg, b, revs)


def test_pull_incoming_bookmarks(lfsserve, hg, rich, tmp_path):
    server = lfsserve(config="[hg]\npublishing = false\n")
    served = install(server, rich, "r")
    url = f"{server.url}/r"
    clone = tmp_path / "c"
    hg("clone", "-q", "-r", "2", url, str(clone))
    assert hg("incoming", "-q", "-R", str(clone), url).stdout.count(b"\n") == 5
    out = hg.out("pull", "-r", "stable", "-R", str(clone), url)
    assert "added 1 changesets" in out
    hg("pull", "-B", "feature", "-R", str(clone), url)
    assert "feature" in hg.out("bookmarks", "-R", str(clone))
    out = hg.out("pull", "-R", str(clone), url)
    assert "added" in out
    assert "no changes found" in hg.out("pull", "-R", str(clone), url)
    assert_same(hg, served, clone)
    verify(hg, clone)
    # the server moves on: a new changeset and a moved bookmark reach the clone
    work = tmp_path / "w"
    hg("clone", "-q", url, str(work))
    (work / "new.txt").write_text("new\n")
    hg("commit", "-q", "-A", "-m", "new", "-d", "1700009999 0", cwd=work)
    hg("bookmark", "-f", "feature", cwd=work)
    hg("push", "-B", "feature", url, cwd=work)
    out = hg.out("pull", "-R", str(clone), url)
    assert "added 1 changesets" in out and "updating bookmark feature" in out
    assert_same(hg, served, clone)
    assert hg("outgoing", "-R", str(clone), url, check=False).returncode == 1


# -- push -------------------------------------------------------------------------------------------

def commit_file(hg: Hg, repo: Path, name: str, text: str, msg: str, when: int, *extra: str) -> None:
    p = repo / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    hg("commit", "-q", "-A", "-m", msg, "-d", f"{when} 0", *extra, cwd=repo)


def test_push_heads_branches_bookmarks(lfsserve, hg, rich, tmp_path):
    server = lfsserve()
    served = install(server, rich, "r")
    url = f"{server.url}/r"
    a = tmp_path / "a"
    hg("clone", "-q", url, str(a))
    commit_file(hg, a, "pushed.txt", "one\n", "first pushed", 1700100000)
    hg("cp", "pushed.txt", "pushed-copy.txt", cwd=a)
    commit_file(hg, a, "pushed.txt", "two\n", "second pushed, with a copy", 1700100060)
    first_push = hg.out("push", url, cwd=a)
    assert "remote: added 2 changesets" in first_push
    verify(hg, served)
    assert_same(hg, a, served, "all() - secret()")  # phases: publishing server made them public
    assert hg.out("log", "-R", str(a), "-r", "tip", "-T", "{phase}") == "public"

    # a new head is refused by the client, accepted with -f
    hg("update", "-q", "-r", "tip~1", cwd=a)
    commit_file(hg, a, "head.txt", "head\n", "a second head", 1700100120)
    res = hg("push", url, cwd=a, check=False)
    assert res.returncode != 0 and b"push creates new remote head" in res.stderr
    out = hg.out("push", "-f", url, cwd=a)
    assert "(+1 heads)" in out
    # a new named branch needs --new-branch
    hg("branch", "-q", "topic", cwd=a)
    commit_file(hg, a, "topic.txt", "t\n", "on a new branch", 1700100180)
    res = hg("push", url, cwd=a, check=False)
    assert res.returncode != 0 and b"new remote branches" in res.stderr
    hg("push", "--new-branch", url, cwd=a)
    assert "topic" in hg.out("branches", "-R", str(served))

    # bookmarks: create, move, delete
    hg("bookmark", "-r", "topic", "bm", cwd=a)
    res = hg("push", "-B", "bm", url, cwd=a, check=False)  # no changesets to push: exit 1
    assert b"exporting bookmark bm" in res.stdout
    assert "bm" in hg.out("bookmarks", "-R", str(served))
    hg("bookmark", "-f", "-r", "default", "bm", cwd=a)
    res = hg("push", "-B", "bm", url, cwd=a, check=False)  # only a bookmark move: exit 1, "no changes"
    assert b"updating bookmark bm" in res.stdout
    assert hg.out("log", "-R", str(served), "-r", "bm", "-T", "{node}") == \
        hg.out("log", "-R", str(a), "-r", "bm", "-T", "{node}")
    hg("bookmark", "-d", "bm", cwd=a)
    res = hg("push", "-B", "bm", url, cwd=a, check=False)
    assert b"deleting remote bookmark bm" in res.stdout
    assert "bm" not in hg.out("bookmarks", "-R", str(served))
    verify(hg, served)
    assert_same(hg, a, served, "all() - secret()")
    # hg serve's exact summary (checked against hg serve 7.2.4 on the same repository): file
    # revisions, files, and heads counted over all changesets (the secret one too)
    assert "remote: added 2 changesets with 3 changes to 2 files (+1 heads)\n" in first_push


def test_push_creates_repo_and_bundle1(lfsserve, hg, rich, tmp_path):
    server = lfsserve(config="[hg]\ncreate_on_push = true\n")
    src = tmp_path / "src"
    hg("clone", "-q", str(rich), str(src))
    # hg clone of a local repo copies phases; publish them so the comparison below holds
    hg("phase", "-p", "-r", "all()", cwd=src)
    out = hg.out("push", "-r", "default", "-B", "feature", f"{server.url}/new/repo", cwd=src)
    assert "added" in out and "exporting bookmark feature" in out
    served = server.root / "repos" / "new" / "repo"
    verify(hg, served)
    assert_same(hg, src, served)
    # bundle1 push and pull (devel.legacy.exchange)
    b1 = tmp_path / "b1"
    hg("clone", "-q", "--config", "devel.legacy.exchange=bundle1", f"{server.url}/new/repo", str(b1))
    verify(hg, b1)
    commit_file(hg, b1, "legacy.txt", "x\n", "bundle1 push", 1700200000)
    out = hg.out("push", "--config", "devel.legacy.exchange=bundle1", f"{server.url}/new/repo", cwd=b1)
    assert "remote: added 1 changesets" in out
    verify(hg, served)
    assert_same(hg, b1, served)
    # without create_on_push a missing repository is a clear error
    server2 = lfsserve()
    res = hg("push", f"{server2.url}/missing", cwd=src, check=False)
    assert res.returncode != 0 and b"404" in res.stderr


def test_create_on_push_never_captures_existing_repositories(lfsserve, hg, rich, tmp_path):
    """hg.create_on_push: a parent of a repository is not a new repository (no deletion, no write
    through it), creation follows the rules of the created path, and a failed creation removes
    only what it made."""
    import base64

    import bcrypt
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}\n"
                                for u, p in (("alice", "wonderland"), ("bob", "builder"))))
    # bob may write `team` itself (the widest grant a parent path can get) but nothing below it;
    # outside `team`, any logged-in user may write (so creating scratch/... is up to the rules)
    server = lfsserve(anonymous="read", config=f"""
[auth]
htpasswd = "{htpasswd}"
authenticated = "write"
[[auth.rules]]
repos = "team/**"
read = ["*"]
write = ["alice"]
[[auth.rules]]
repos = "team"
write = ["bob"]
[hg]
create_on_push = true
""")
    served = install(server, rich, "team/app")
    before = history(hg, served, "all()")

    def as_bob(extra: dict | None = None) -> dict:
        return {"Authorization": "Basic " + base64.b64encode(b"bob:builder").decode(), **(extra or {})}

    empty_hg20 = b"HG20" + b"\0" * 8  # no stream parameters, end of stream
    status, reason, _, body = raw(server, "POST", "/team?cmd=unbundle",
                                  as_bob({"X-HgArg-1": "heads=666f726365"}), empty_hg20)
    assert status == 409 and b"holds repository team/app" in body, (status, reason, body)
    assert (served / ".hg").is_dir() and history(hg, served, "all()") == before
    assert not (server.root / "repos" / "team" / ".hg").exists()
    # discovery for the parent path is refused the same way, so hg stops before sending anything
    status, _, _, body = raw(server, "GET", "/team?cmd=capabilities", as_bob())
    assert status == 409 and b"team/app" in body

    # a real push of other history to the parent path, as bob
    bob = Hg(tmp_path / "bob-home", hgrc=f"[auth]\ns.prefix = {server.url}/\ns.username = bob\n"
                                         f"s.password = builder\n")
    other = tmp_path / "other"
    bob("init", str(other))
    commit_file(bob, other, "o.txt", "o\n", "other", 1700400000)
    res = bob("push", f"{server.url}/team", cwd=other, check=False)
    assert res.returncode != 0 and b"409" in res.stderr and b"team/app" in res.stderr, res.stderr
    # inside a repository, and below team/** where bob may not write: refused, nothing made
    res = bob("push", f"{server.url}/team/app/sub", cwd=other, check=False)
    assert res.returncode != 0 and b"404" in res.stderr
    res = bob("push", f"{server.url}/team/new", cwd=other, check=False)
    assert res.returncode != 0 and b"404: repository team/new not found" in res.stderr, res.stderr
    status, _, _, _ = raw(server, "POST", "/team/new?cmd=unbundle",
                          as_bob({"X-HgArg-1": "heads=666f726365"}), empty_hg20)
    assert status == 403
    assert sorted(p.name for p in (server.root / "repos" / "team").iterdir()) == ["app"]
    # team/app still serves, whole
    clone = tmp_path / "clone"
    bob("clone", "-q", f"{server.url}/team/app", str(clone))
    nodes = "{node}\n"
    assert sorted(hg.out("log", "-R", str(clone), "-T", nodes).split()) == \
        sorted(hg.out("log", "-R", str(served), "-r", "not secret()", "-T", nodes).split())
    verify(hg, served)

    # a creation that changes nothing removes only what it made: the new directories, not an
    # existing empty directory the administrator prepared (only the .hg written into it)
    status, _, _, body = raw(server, "POST", "/scratch/a/b?cmd=unbundle",
                             as_bob({"X-HgArg-1": "heads=666f726365"}), empty_hg20)
    assert status == 200, body
    assert not (server.root / "repos" / "scratch").exists()
    prepared = server.root / "repos" / "prepared"
    prepared.mkdir()
    status, _, _, body = raw(server, "POST", "/prepared?cmd=unbundle",
                             as_bob({"X-HgArg-1": "heads=666f726365"}), empty_hg20)
    assert status == 200, body
    assert prepared.is_dir() and list(prepared.iterdir()) == []
    # and a successful creation in it works
    res = bob("push", f"{server.url}/prepared", cwd=other, check=False)
    assert res.returncode == 0, res.stderr
    verify(hg, prepared)


def test_permissions(lfsserve, hg, rich, tmp_path):
    server = lfsserve(anonymous="read")
    install(server, rich, "r")
    clone = tmp_path / "c"
    hg("clone", "-q", f"{server.url}/r", str(clone))
    commit_file(hg, clone, "x.txt", "x\n", "x", 1700300000)
    res = hg("push", f"{server.url}/r", cwd=clone, check=False)
    assert res.returncode != 0 and b"authorization" in res.stderr
    status, _reason, headers, body = raw(server, "POST", "/r?cmd=unbundle", {"X-HgArg-1": "heads=666f726365"}, b"")
    assert status == 401 and body.startswith(b"0\n") and "WWW-Authenticate" in headers
    private = lfsserve(anonymous="none")
    install(private, rich, "r")
    res = hg("clone", f"{private.url}/r", str(tmp_path / "p"), check=False)
    assert res.returncode != 0 and b"authorization" in res.stderr


def test_concurrent_pushes(lfsserve, hg, rich, tmp_path):
    server = lfsserve()
    served = install(server, rich, "r")
    url = f"{server.url}/r"
    clones = []
    for i in range(2):
        c = tmp_path / f"c{i}"
        hg("clone", "-q", url, str(c))
        hg("branch", "-q", f"b{i}", cwd=c)
        for j in range(3):
            commit_file(hg, c, f"f{i}/{j}.txt", f"{i}-{j}\n" * 100, f"change {i}.{j}", 1700400000 + 10 * j + i)
        clones.append(c)
    results = [None, None]

    def push(i):
        results[i] = hg("push", "--new-branch", url, cwd=clones[i], check=False)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r.returncode == 0 for r in results]
    assert any(ok), [r.stderr for r in results]
    verify(hg, served)
    for i, c in enumerate(clones):
        if ok[i]:
            assert hg.out("log", "-R", str(served), "-r", f"branch(b{i})", "-T", "x").count("x") == 3
        else:  # the loser saw a race and changed nothing: retrying works
            hg("push", "--new-branch", url, cwd=c)
    verify(hg, served)


# -- bad input --------------------------------------------------------------------------------------

def _unbundle(server, name: str, body: bytes, heads: str = "666f726365"):
    return raw(server, "POST", f"/{name}?cmd=unbundle",
               {"X-HgArg-1": f"heads={heads}", "Content-Type": "application/mercurial-0.1"}, body)


def _reply_parts(body: bytes):
    import io

    from lfsserve.hg.bundle2 import BundleReader
    fp = io.BytesIO(body)
    assert fp.read(4) == b"HG20"
    return [(p.type, p.params, p.read()) for p in BundleReader(fp).parts()]


def test_bad_pushes_leave_repo_unchanged(lfsserve, hg, rich, tmp_path):
    server = lfsserve()
    served = install(server, rich, "r")
    before = history(hg, served, "all()")
    # a real bundle2 push body, made by the client itself
    work = tmp_path / "w"
    hg("clone", "-q", f"{server.url}/r", str(work))
    commit_file(hg, work, "n.txt", "n\n" * 100, "new", 1700500000)
    bundle = tmp_path / "b.hg"
    hg("bundle", "-q", "-t", "none-v2", "-r", "tip", "--base", "tip~1", str(bundle), cwd=work)
    good = bundle.read_bytes()
    assert good[:4] == b"HG20"

    # garbage
    status, _, _, body = _unbundle(server, "r", b"this is not a bundle")
    assert status == 400 and b"not a Mercurial bundle" in body
    # truncated in the middle of the changegroup
    status, _, _, body = _unbundle(server, "r", good[: len(good) // 2])
    parts = _reply_parts(body)
    assert parts[-1][0] == b"ERROR:ABORT", parts
    # a changeset whose node does not match its content: flip one byte of the description
    idx = good.rfind(b"\n\nnew")
    assert idx > 0
    bad = good[:idx + 2] + b"N" + good[idx + 3:]
    status, _, _, body = _unbundle(server, "r", bad)
    parts = _reply_parts(body)
    assert parts[-1][0] == b"ERROR:ABORT" and parts[-1][1][b"message"], parts
    # an unknown mandatory part
    from lfsserve.hg.bundle2 import OutPart, encode_parts
    status, _, _, body = _unbundle(server, "r", encode_parts([OutPart(b"REPLYCAPS", data=b"HG20"),
                                                              OutPart(b"NOSUCH:PART", data=b"x")]))
    parts = _reply_parts(body)
    assert parts[-1][:2] == (b"ERROR:UNSUPPORTEDCONTENT", {b"parttype": b"nosuch:part"})
    # a check:heads that does not match: push raced
    status, _, _, body = _unbundle(server, "r", encode_parts([OutPart(b"CHECK:HEADS", data=b"\x11" * 20)]))
    assert _reply_parts(body)[-1][:2] == (b"ERROR:PUSHRACED", {
        b"message": b"remote repository changed while pushing - please try again"})
    # stale bundle1-style heads argument
    status, _, _, body = _unbundle(server, "r", good, heads="686173686564+" + "ab" * 20)
    assert body == b"0\nrepository changed while preparing changes - please try again\n"
    # nothing changed, and the server still serves
    assert history(hg, served, "all()") == before
    verify(hg, served)
    status, _, _, body = _unbundle(server, "r", good)
    assert _reply_parts(body)[0][0] == b"reply:changegroup"
    verify(hg, served)
    assert len(history(hg, served, "all()").splitlines()) == len(before.splitlines()) + 1


def test_malformed_changegroups_get_hg_errors_and_write_nothing(lfsserve, hg, tmp_path):
    """Issue 10 parts 3-5 over HTTP, in a `store` repository without fncache: a file name leaving
    the store, dates hg cannot read, bad extras and flags are answered as bundle2 error parts
    (hg prints "abort: ..."), never a 500, and nothing is written anywhere."""
    from .engine.bundles import hg20
    from .engine.cgbuild import Changeset, build
    server = lfsserve()
    served = server.root / "repos" / "plain"
    hg("--config", "format.usefncache=false", "init", str(served))
    cases = [
        ("path contains illegal component", Changeset({b"../../../../../../../ESCAPED": b"x\n"})),
        ("malformed date", Changeset({b"a": b"x\n"}, date=b"1e999 0")),
        ("malformed date", Changeset({b"a": b"x\n"}, date=b"inf 0")),
        ("date exceeds 32 bits", Changeset({b"a": b"x\n"}, date=b"99999999999 0")),
        ("has no ':'", Changeset({b"a": b"x\n"}, date=b"1700000000 0 noextra")),
        ("bad escape", Changeset({b"a": b"x\n"}, date=b"1700000000 0 a:\\x")),
        ("malformed manifest line", Changeset({b"a": b"x\n"}, flags={b"a": b"xl"})),
    ]
    before = {str(p) for p in server.root.rglob("*") if "tmp" not in p.parts and "logs" not in p.parts}
    for message, cs in cases:
        status, _, _, body = _unbundle(server, "plain", hg20([build([cs])], "03"))
        assert status == 200, (message, body)
        kind, params, _ = _reply_parts(body)[-1]
        assert kind == b"ERROR:ABORT" and message.encode() in params[b"message"], (message, params)
    after = {str(p) for p in server.root.rglob("*") if "tmp" not in p.parts and "logs" not in p.parts}
    assert after == before and not list(tmp_path.parent.rglob("*ESCAPED*"))
    verify(hg, served)
    assert hg.out("log", "-R", str(served), "-T", "{node}") == ""


def test_push_size_limit(lfsserve, hg, rich, tmp_path):
    """hg.max_push_size: a larger push is refused with a 413 hg shows, and nothing is applied."""
    import os
    server = lfsserve(config="[hg]\nmax_push_size = 65536\n")
    served = install(server, rich, "r")
    before = history(hg, served, "all()")
    big = tmp_path / "big"
    hg("clone", "-q", f"{server.url}/r", str(big))
    (big / "noise.bin").write_bytes(os.urandom(200 * 1024))  # incompressible: the bundle is > 64 KiB
    hg("add", "noise.bin", cwd=big)
    hg("commit", "-m", "too big", "-d", "1700600000 0", cwd=big)
    res = hg("push", cwd=big, check=False)
    assert res.returncode != 0
    assert b"HTTP Error 413: push larger than this server's limit of 64 KiB" in res.stderr, res.stderr
    assert history(hg, served, "all()") == before
    # A body without Content-Length (chunked) is cut off at the limit too.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/r?cmd=unbundle", body=iter([b"HG20" + b"\0" * 65536] * 4),
                     headers={"X-HgArg-1": "heads=666f726365", "Content-Type": "application/mercurial-0.1"},
                     encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413 and b"hg.max_push_size" in resp.read()
    finally:
        conn.close()
    # A push under the limit still goes through, and the refused ones left nothing behind.
    small = tmp_path / "small"
    hg("clone", "-q", f"{server.url}/r", str(small))
    commit_file(hg, small, "small.txt", "small\n", "small", 1700600001)
    hg("push", cwd=small)
    verify(hg, served)
    assert len(history(hg, served, "all()").splitlines()) == len(before.splitlines()) + 1


# -- lfs --------------------------------------------------------------------------------------------

def test_lfs_push_clone_and_missing_blobs(lfsserve, hg, tmp_path):
    """Blobs go to lfsserve's own LFS endpoint (lfs.url unset), the first lfs push adds the
    requirement (`lfs-serve` appears), a plain client clones and gets the files, and a push whose
    blobs are not on the server is refused."""
    import os
    server = lfsserve(config="[hg]\ncreate_on_push = true\n")
    url = f"{server.url}/media"
    lfs = Hg(tmp_path / "lfs-home", hgrc="[extensions]\nlfs =\n[lfs]\ntrack = size('>1KB')\n")
    src = tmp_path / "src"
    lfs("init", str(src))
    big = os.urandom(300 * 1024)
    (src / "big.bin").write_bytes(big)
    (src / "small.txt").write_text("small\n")
    lfs("commit", "-q", "-A", "-m", "lfs files", "-d", "1700600000 0", cwd=src)
    out = lfs.out("push", url, cwd=src)
    assert "remote: added 1 changesets" in out
    caps = raw(server, "GET", "/media?cmd=capabilities")[3].decode().split(" ")
    assert "lfs" in caps and "lfs-serve" in caps
    # share-safe: store requirements live in .hg/store/requires
    assert "lfs" in (server.root / "repos" / "media" / ".hg" / "store" / "requires").read_text().split()

    clone = tmp_path / "clone"
    res = hg("clone", url, str(clone))
    assert b"remote is using large file support (lfs)" in res.stdout
    assert (clone / "big.bin").read_bytes() == big
    verify(hg, clone)
    assert history(hg, src, "all()") == history(hg, clone, "all()")

    # a client that put its blobs somewhere else: the server does not have them
    (src / "big2.bin").write_bytes(os.urandom(200 * 1024))
    lfs("commit", "-q", "-A", "-m", "blob elsewhere", "-d", "1700600060 0", cwd=src)
    elsewhere = (tmp_path / "elsewhere").as_uri()
    res = lfs("push", "--config", f"lfs.url={elsewhere}", url, cwd=src, check=False)
    assert res.returncode != 0 and b"not on this server" in res.stderr
    assert len(history(hg, server.root / "repos" / "media", "all()").splitlines()) == 1
    # pushing normally uploads the blob and succeeds
    lfs("push", url, cwd=src)
    assert len(history(hg, server.root / "repos" / "media", "all()").splitlines()) == 2
