"""Wire protocol v2 end to end: the real Mercurial 5.9.3 client (the last that speaks v2) against lfsserve.

Source repositories are made by hg 7.2.4 (tests/interop/hgrepos.py: merges, copies, renames,
binary, exec, symlink and non-ASCII files, a named branch, a tag, a bookmark, draft and secret
changesets) with zlib revlogs, since 5.9.3 pure has no zstd. Every clone is checked with 5.9.3's
`hg verify` and compared with the source by hg 7.2.4: changeset nodes, phases, branches,
bookmarks, tags and every manifest (file nodes, flags, paths), plus the working copy.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import cbor2
import pytest

from lfsserve.wire.v2.framing import encode_frame

from ..support import Hg
from ..wire_v2_client import HEADERS, decode_response, request_body
from .hgrepos import NON_ASCII, assert_same, build_rich_repo

pytestmark = pytest.mark.interop

V2_CLIENT = "[experimental]\nhttppeer.advertise-v2 = true\n"
ZLIB = "[format]\nrevlog-compression = zlib\n"
API = "/api/exp-http-v2-0003"


@pytest.fixture
def v2(tmp_path: Path, hg593_path: str) -> Hg:
    """The real Mercurial 5.9.3 client, configured to ask servers for wire protocol v2."""
    return Hg(tmp_path / "v2-home", hgrc=V2_CLIENT, exe=hg593_path)


@pytest.fixture
def zhg(tmp_path: Path) -> Hg:
    """hg 7.2.4 making zlib-compressed repositories (readable by 5.9.3 pure, raw files included)."""
    return Hg(tmp_path / "zhg-home", hgrc=ZLIB)


def commit(hg: Hg, repo: Path, message: str, *args: str) -> None:
    hg("commit", "-q", "-m", message, "-d", "1700100000 0", *args, cwd=repo)


def add_changes(hg: Hg, repo: Path) -> None:
    """New changesets for a pull: a rename into a new directory, a removal, a second head merged
    with a removal inside the merge, a file spanning several frames, the bookmark moved."""
    hg("update", "-q", "feature", cwd=repo)
    (repo / "README").write_text("hello\nand more\n")
    hg("mv", "-q", "README.copy", "docs/README.copy", cwd=repo)
    hg("rm", "-q", "bin.dat", cwd=repo)
    commit(hg, repo, "edit, rename into a directory, remove a binary")
    hg("update", "-q", "-r", "stable", cwd=repo)
    (repo / "stable.txt").write_text("stable 2\n")
    commit(hg, repo, "stable fix")
    hg("update", "-q", "feature", cwd=repo)
    hg("merge", "-q", "stable", cwd=repo)
    hg("rm", "-q", "-f", "stable.txt", cwd=repo)
    commit(hg, repo, "merge stable again, removing stable.txt in the merge")
    (repo / "new.bin").write_bytes(os.urandom(70_000))
    hg("add", "-q", "new.bin", cwd=repo)
    commit(hg, repo, "big binary")


def check_clone(v2: Hg, hg: Hg, source: Path, clone: Path) -> None:
    res = v2("verify", "-q", cwd=clone, check=False)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    assert_same(hg, source, clone)


def check_working_copy(source: Path, clone: Path) -> None:
    assert os.readlink(clone / "link-to-readme") == "README"
    assert os.access(clone / "run.sh", os.X_OK)
    assert (clone / NON_ASCII).read_bytes() == (source / NON_ASCII).read_bytes()
    for name in ("bin.dat", "new.bin"):
        assert (clone / name).exists() == (source / name).exists()
        if (source / name).exists():
            assert (clone / name).read_bytes() == (source / name).read_bytes()


def used_v2(debug_output: str, *commands: str) -> None:
    """The client's --debug output shows framed v2 commands and frames, not v1 ?cmd= requests."""
    for name in commands:
        assert f"sending command {name}:" in debug_output, f"no v2 {name} in:\n{debug_output[-3000:]}"
    assert re.search(r"received frame\(size=\d+; request=\d+; stream=2; streamflags=[^;]*; "
                     r"type=command-response", debug_output)
    assert "sending getbundle command" not in debug_output


def publish(hg: Hg, repo: Path) -> None:
    """What a push to a publishing server leaves: every non-secret changeset public."""
    hg("phase", "-q", "--public", "-r", "not secret()", cwd=repo)


def serve_repo(lfsserve, zhg: Hg, tmp_path: Path, config: str | None = None, public: bool = True):
    server = lfsserve(config=config, root=tmp_path / "srv")
    source = server.root / "repos" / "team" / "app"
    source.parent.mkdir(parents=True)
    build_rich_repo(zhg, source)
    if public:
        publish(zhg, source)
    return server, source


@pytest.mark.slow
def test_clone_and_pull(lfsserve, hg, zhg, v2, tmp_path):
    server, source = serve_repo(lfsserve, zhg, tmp_path)
    url = server.url + "/team/app"
    clone = tmp_path / "clone"
    out = v2("clone", "--debug", url, str(clone)).stdout.decode()
    used_v2(out, "heads", "known", "changesetdata", "manifestdata", "filesdata")
    check_clone(v2, hg, source, clone)
    v2("update", "-q", "feature", cwd=clone)
    check_working_copy(source, clone)

    add_changes(zhg, source)
    publish(zhg, source)
    out = v2("pull", "--debug", "-u", cwd=clone).stdout.decode()
    used_v2(out, "changesetdata", "manifestdata", "filesdata")
    check_clone(v2, hg, source, clone)
    check_working_copy(source, clone)
    assert (clone / "docs" / "README.copy").exists() and not (clone / "stable.txt").exists()

    out = v2("pull", "--debug", cwd=clone).stdout.decode()   # nothing new: still a v2 exchange
    used_v2(out, "changesetdata")
    assert "all remote heads known locally" in out and "add changeset" not in out
    check_clone(v2, hg, source, clone)


@pytest.mark.slow
def test_stream_clone(lfsserve, hg, zhg, v2, tmp_path):
    server, source = serve_repo(lfsserve, zhg, tmp_path)
    add_changes(zhg, source)
    publish(zhg, source)
    url = server.url + "/team/app"
    # The raw changelog would carry the secret changeset: not offered, a normal clone happens.
    clone = tmp_path / "clone-with-secret"
    out = v2("clone", "--stream", "--debug", url, str(clone)).stdout.decode()
    assert "sending command rawstorefiledata" not in out
    used_v2(out, "changesetdata", "manifestdata", "filesdata")
    check_clone(v2, hg, source, clone)

    zhg("phase", "-q", "--public", "-r", "all()", cwd=source)
    clone = tmp_path / "clone"
    out = v2("clone", "--stream", "--debug", url, str(clone)).stdout.decode()
    used_v2(out, "rawstorefiledata", "changesetdata", "filesdata")
    assert "sending command manifestdata" not in out     # the manifests came raw
    check_clone(v2, hg, source, clone)
    check_working_copy(source, clone)


@pytest.mark.slow
def test_stream_clone_of_zstd_repo_falls_back_to_a_normal_clone(lfsserve, hg, v2, tmp_path):
    """5.9.3 pure cannot read zstd revlogs: the raw files are not offered, the data still is."""
    server = lfsserve(root=tmp_path / "srv")
    source = server.root / "repos" / "z"
    source.parent.mkdir(parents=True)
    hg("init", "--config", "format.revlog-compression=zstd", str(source))
    (source / "f").write_text("x\n" * 1000)
    hg("add", "-q", "f", cwd=source)
    commit(hg, source, "one")
    publish(hg, source)
    clone = tmp_path / "clone"
    out = v2("clone", "--stream", "--debug", server.url + "/z", str(clone)).stdout.decode()
    assert "sending command rawstorefiledata" not in out
    used_v2(out, "changesetdata", "manifestdata", "filesdata")
    check_clone(v2, hg, source, clone)


@pytest.mark.slow
def test_non_publishing_server_keeps_phases_and_hides_secret(lfsserve, hg, zhg, v2, tmp_path):
    server, source = serve_repo(lfsserve, zhg, tmp_path, config="[hg]\npublishing = false\n", public=False)
    clone = tmp_path / "clone"
    v2("clone", "-U", server.url + "/team/app", str(clone))
    check_clone(v2, hg, source, clone)   # public and draft as on the server
    assert "secret" not in hg.out("log", "-T", "{desc}\n", cwd=clone)

    # Publishing more on the server reaches the client on its next pull (phase-only records).
    hg("phase", "-q", "--public", "-r", "5", cwd=source)
    out = v2("pull", "--debug", cwd=clone).stdout.decode()
    used_v2(out, "changesetdata")
    check_clone(v2, hg, source, clone)
    assert hg.out("log", "-r", "5", "-T", "{phase}", cwd=clone) == "public"


# -- raw requests ------------------------------------------------------------------------------------

def http(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def post(base: str, command: str, body: bytes, access: str = "ro"):
    return http(f"{base}{API}/{access}/{command}", body, HEADERS)


def handshake(base: str, **headers: str):
    return http(base + "?cmd=capabilities", headers={
        "X-HgUpgrade-1": "exp-http-v2-0003", "X-HgProto-1": "cbor", "Accept": "application/mercurial-0.1",
        **headers})


def test_handshake_and_capabilities(lfsserve, zhg, tmp_path):
    server, source = serve_repo(lfsserve, zhg, tmp_path)
    base = server.url + "/team/app"
    status, headers, body = handshake(base)
    assert status == 200 and headers["Content-Type"] == "application/mercurial-cbor"
    caps = cbor2.loads(body)
    assert caps[b"apibase"] == b"api/"
    assert b"batch" in caps[b"v1capabilities"].split()
    api = caps[b"apis"][b"exp-http-v2-0003"]
    everything = {b"branchmap", b"capabilities", b"changesetdata", b"filedata", b"filesdata", b"heads",
                  b"known", b"listkeys", b"lookup", b"manifestdata", b"pushkey", b"rawstorefiledata"}
    # A secret changeset is in the raw changelog: no raw store files (stream clone) then.
    assert set(api[b"commands"]) == everything - {b"rawstorefiledata"}
    assert api[b"commands"][b"pushkey"][b"permissions"] == [b"push"]
    assert api[b"commands"][b"manifestdata"][b"recommendedbatchsize"] == 100000
    assert api[b"commands"][b"filesdata"][b"recommendedbatchsize"] == 50000
    assert api[b"commands"][b"changesetdata"][b"args"][b"fields"] == {
        b"type": b"set", b"required": False, b"default": set(),
        b"validvalues": {b"bookmarks", b"parents", b"phase", b"revision"}}
    assert api[b"framingmediatypes"] == [b"application/mercurial-exp-framing-0006"]
    assert api[b"pathfilterprefixes"] == {b"path:", b"rootfilesin:"}
    assert set(api[b"rawrepoformats"]) == {b"generaldelta", b"revlogv1", b"sparserevlog"}
    zhg("phase", "-q", "--public", "-r", "all()", cwd=source)
    api = cbor2.loads(handshake(base)[2])[b"apis"][b"exp-http-v2-0003"]
    assert set(api[b"commands"]) == everything
    # Without the cbor protocol (or the upgrade header) the answer is plain v1.
    status, headers, body = handshake(base, **{"X-HgProto-1": "0.1 0.2"})
    assert status == 200 and headers["Content-Type"].startswith("application/mercurial-0.1")
    status, headers, body = http(base + "?cmd=capabilities", headers={"X-HgUpgrade-1": "exp-http-v2-0003"})
    assert status == 200 and headers["Content-Type"].startswith("application/mercurial-0.1")
    # The v2 capabilities command answers the same descriptor.
    status, _, body = post(base, "capabilities", request_body(("capabilities", None)))
    assert decode_response(body).answers[1].objects == [api]
    # An lfs repository stays on v1: v2 cannot carry the lfs revision flag.
    from lfsserve.hg.repository import Repository
    Repository.init(server.root / "repos" / "withlfs", lfs=True).close()
    status, headers, _ = handshake(server.url + "/withlfs")
    assert status == 200 and headers["Content-Type"].startswith("application/mercurial-0.1")


def test_commands_answer_and_errors_are_readable(lfsserve, hg, zhg, tmp_path):
    server, source = serve_repo(lfsserve, zhg, tmp_path)
    base = server.url + "/team/app"
    tip = bytes.fromhex(hg.out("log", "-r", "feature", "-T", "{node}", cwd=source))
    heads = {bytes.fromhex(n) for n in hg.out("log", "-r", "heads(not secret())", "-T", "{node}\n",
                                               cwd=source).split()}
    secret = bytes.fromhex(hg.out("log", "-r", "secret()", "-T", "{node}", cwd=source))

    body = request_body(("heads", None), ("known", {b"nodes": [tip, b"\1" * 20, secret]}),
                        ("lookup", {b"key": b"feature"}), ("listkeys", {b"namespace": b"bookmarks"}),
                        ("branchmap", None), ("nosuch", None), ("known", {b"nodes": [b"short"]}),
                        ("heads", {b"publiconly": b"yes"}), ("lookup", {b"key": b"nonexistent"}),
                        ("manifestdata", {b"nodes": [b"\2" * 20], b"tree": b""}),
                        ("changesetdata", {b"revisions": [{b"type": b"changesetexplicit",
                                                           b"nodes": [b"\3" * 20]}]}),
                        ("heads", {b"bogus": True}), ("heads", None),
                        encodings=[b"zstd-8mb", b"zlib", b"identity"])
    status, headers, raw = post(base, "multirequest", body)
    assert status == 200 and headers["Content-Type"] == "application/mercurial-exp-framing-0006"
    resp = decode_response(raw)
    assert resp.encoding == b"zstd-8mb"
    a = resp.answers
    assert set(a[1].objects[0]) == heads
    assert a[3].objects == [b"100"]
    assert a[5].objects == [tip]
    assert a[7].objects == [{b"feature": tip.hex().encode()}]
    assert set(a[9].objects[0]) == {b"default", b"stable"}

    def error(rid):
        assert a[rid].status == b"error", a[rid]
        err = a[rid].values[0][b"error"]
        return err[b"message"] % tuple(err.get(b"args", ()))

    assert error(11) == b"unknown wire protocol command: nosuch"
    assert b"20-byte binary nodes" in error(13)
    assert b"must be of type bool" in error(15)
    assert b"unknown revision 'nonexistent'" in error(17)
    assert error(19) == b"unknown manifest: " + (b"02" * 20)
    assert error(21) == b"unknown changeset: " + (b"03" * 20)
    assert b"unsupported argument" in error(23) and b"bogus" in error(23)
    assert set(a[25].objects[0]) == heads     # the server kept going


BAD_REQUESTS = [
    # (method, path under the API, headers, body, status, text in the answer)
    ("GET", "/ro/heads", {}, None, 405, "POST"),
    ("POST", "/ro/heads", {**HEADERS, "Accept": "application/octet-stream"}, b"", 406, "Accept"),
    ("POST", "/ro/heads", {**HEADERS, "Content-Type": "application/octet-stream"}, b"", 415, "Content-Type"),
    ("POST", "/ro/nosuchcommand", HEADERS, b"", 404, "unknown wire protocol command"),
    ("POST", "/xx/heads", HEADERS, b"", 404, "unknown permission"),
    ("POST", "/ro/pushkey", HEADERS, b"", 403, "push permission"),
    ("POST", "/ro/multirequest", HEADERS, request_body(("pushkey", {})), 403, "push permission"),
    ("POST", "/ro/heads", HEADERS, request_body(("branchmap", None)), 400, "must match"),
    ("POST", "/ro/heads", HEADERS, request_body(("heads", None), ("heads", None)), 400, "multirequest"),
    ("POST", "/ro/heads", HEADERS, b"", 400, "no command"),
    ("POST", "/ro/heads", HEADERS, b"\x0c\x00\x00\x01\x00\x02\x01\x11" + cbor2.dumps({b"name": b"heads"}),
     400, "odd stream ids"),
    ("POST", "/ro/heads", HEADERS, b"\x0c\x00\x00\x01\x00\x01\x01", 400, "truncated frame header"),
    ("POST", "/ro/heads", HEADERS, b"\xff\xff\x00\x01\x00\x01\x01\x11", 400, "truncated frame"),
    ("POST", "/ro/multirequest", HEADERS, b"\x03\x00\x00\x01\x00\x01\x01\x82\xa1\x40\xf9", 400,
     "sender protocol settings"),
    ("GET", "", {}, None, 200, "exp-http-v2-0003"),
    ("GET", "-0099/ro/heads", {}, None, 404, "unknown API"),
]


def test_bad_requests_get_4xx_or_error_answers_and_the_server_keeps_serving(lfsserve, zhg, tmp_path):
    server, _ = serve_repo(lfsserve, zhg, tmp_path)
    base = server.url + "/team/app"
    for method, path, headers, body, status, text in BAD_REQUESTS:
        got, _, answer = http(base + API + path, body, headers, method)
        assert (got, text in answer.decode()) == (status, True), (method, path, got, answer)

    # A command map in text strings (Mercurial's CBOR has none) is answered under its request id.
    text_map = encode_frame(1, 1, 0x1, 0x1, 0x1, cbor2.dumps({"name": "heads"}))
    status, _, raw = post(base, "multirequest", text_map)
    err = decode_response(raw).answers[1].values[0]
    assert status == 200 and err[b"status"] == b"error" and b"text strings" in err[b"error"][b"message"]

    got, _, raw = post(base, "heads", request_body(("heads", None)))
    assert got == 200 and decode_response(raw).answers[1].status == b"ok"
    assert server.alive()


@pytest.mark.slow
def test_switched_off(lfsserve, hg, zhg, v2, tmp_path):
    server, source = serve_repo(lfsserve, zhg, tmp_path, config="[hg]\nwire_v2 = false\n")
    base = server.url + "/team/app"
    status, headers, _ = handshake(base)
    assert status == 200 and headers["Content-Type"].startswith("application/mercurial-0.1")
    assert post(base, "heads", request_body(("heads", None)))[0] == 404
    clone = tmp_path / "clone"
    out = v2("clone", "--debug", base, str(clone)).stdout.decode()
    assert "sending command " not in out and "sending getbundle command" in out   # v1 did the job
    check_clone(v2, hg, source, clone)


def test_data_commands_by_hand(lfsserve, hg, zhg, tmp_path):
    """filedata, filesdata with a path filter and without haveparents, changesetexplicitdepth,
    rawstorefiledata: answers checked against what hg 7.2.4 says about the same repository."""
    from lfsserve.hg.mdiff import patch

    server, source = serve_repo(lfsserve, zhg, tmp_path)
    base = server.url + "/team/app"

    def node(rev: str) -> bytes:
        return bytes.fromhex(hg.out("log", "-r", rev, "-T", "{node}", cwd=source))

    def fnode(rev: str, path: str) -> bytes:
        for line in hg.out("manifest", "--debug", "-r", rev, cwd=source).splitlines():
            if line.endswith(" " + path):   # "<node> <mode> [*|@] <path>"
                return bytes.fromhex(line[:40])
        raise AssertionError(path)

    readme = [fnode("0", "README"), fnode("feature", "README")]
    body = request_body(
        ("filedata", {b"path": b"README", b"nodes": readme, b"fields": {b"parents", b"revision", b"linknode"}}),
        ("changesetdata", {b"revisions": [{b"type": b"changesetexplicitdepth", b"nodes": [node("feature")],
                                           b"depth": 2}], b"fields": {b"parents"}}),
        ("filesdata", {b"revisions": [{b"type": b"changesetexplicit", b"nodes": [node("feature")]}],
                       b"fields": {b"revision", b"linknode"}, b"haveparents": False,
                       b"pathfilter": {b"include": [b"rootfilesin:dir"]}}),
        ("filedata", {b"path": b"no/such", b"nodes": []}),
        encodings=[b"zlib"])
    a = decode_response(post(base, "multirequest", body)[2]).answers

    header, first, text0, second, data1 = a[1].objects
    assert header == {b"totalitems": 2}
    assert first[b"node"] == readme[0] and first[b"parents"] == [b"\0" * 20] * 2
    assert first[b"linknode"] == node("0") and first[b"fieldsfollowing"] == [[b"revision", len(text0)]]
    assert text0 == hg("cat", "-r", "0", "README", cwd=source).stdout
    text1 = patch(text0, data1) if b"deltabasenode" in second else data1
    assert text1 == hg("cat", "-r", "feature", "README", cwd=source).stdout

    assert a[3].objects[0] == {b"totalitems": 2}
    assert [o[b"node"] for o in a[3].objects[1:]] == [node("feature~1"), node("feature")]
    assert a[3].objects[2][b"parents"] == [node("feature~1"), b"\0" * 20]

    objs = a[5].objects
    paths = sorted(h[b"path"] for h in objs if isinstance(h, dict) and b"path" in h)
    assert paths == sorted(p.encode() for p in hg.out("files", "-r", "feature", "rootfilesin:dir",
                                                      cwd=source).split("\n") if p)
    assert objs[0] == {b"totalpaths": len(paths), b"totalitems": len(paths)}
    entries = [o for o in objs if isinstance(o, dict) and b"node" in o]
    assert all(e[b"fieldsfollowing"][0][0] == b"revision" and b"linknode" in e for e in entries)

    assert a[7].status == b"error" and a[7].values[0][b"error"][b"message"] % tuple(
        a[7].values[0][b"error"][b"args"]) == b"unknown file: no/such"

    # The raw store files, byte for byte (once no secret changeset forbids them).
    zhg("phase", "-q", "--public", "-r", "all()", cwd=source)
    raw = decode_response(post(base, "rawstorefiledata", request_body(
        ("rawstorefiledata", {b"files": [b"changelog", b"manifestlog"]})))[2]).answers[1].objects
    store = source / ".hg" / "store"
    files = {m[b"path"].decode(): data for m, data in zip(raw[1::2], raw[2::2], strict=True)}
    assert raw[0] == {b"filecount": len(files), b"totalsize": sum(len(d) for d in files.values())}
    assert files and all((store / name).read_bytes() == data for name, data in files.items())
    assert {"00changelog.i", "00manifest.i"} <= set(files)


def test_pushkey_needs_push_permission_and_moves_bookmarks_and_phases(lfsserve, hg, zhg, tmp_path):
    server, source = serve_repo(lfsserve, zhg, tmp_path, config="[hg]\npublishing = false\n", public=False)
    base = server.url + "/team/app"
    draft = hg.out("log", "-r", "min(draft())", "-T", "{node}", cwd=source).encode()
    tip = hg.out("log", "-r", "max(not secret())", "-T", "{node}", cwd=source).encode()

    def pushkey(namespace: bytes, key: bytes, old: bytes, new: bytes, url: str = base):
        status, _, raw = post(url, "pushkey", request_body(
            ("pushkey", {b"namespace": namespace, b"key": key, b"old": old, b"new": new})), access="rw")
        assert status == 200, raw
        return decode_response(raw).answers[1].objects

    assert pushkey(b"bookmarks", b"new-mark", b"", tip) == [True]
    assert pushkey(b"bookmarks", b"new-mark", b"0" * 40, draft) == [False]   # stale old value
    assert pushkey(b"phases", draft, b"1", b"0") == [True]
    assert hg.out("log", "-r", "new-mark", "-T", "{node}", cwd=source).encode() == tip
    assert hg.out("log", "-r", draft.decode(), "-T", "{phase}", cwd=source) == "public"
    assert hg("verify", "-q", cwd=source).returncode == 0

    # Without write permission: 401 with a challenge for anonymous clients.
    ro = lfsserve(root=tmp_path / "ro", anonymous="read")
    status, headers, _ = http(ro.url + "/team/app" + API + "/rw/pushkey", request_body(("pushkey", {})), HEADERS)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
