"""git-lfs over a real OpenSSH server whose keys run `lfsserve ssh`: the pure-SSH transfer
(git-lfs-transfer), the git-lfs-authenticate fallback to HTTP, locks, and what is refused.

sshd's keys are written by `lfsserve authorized-keys add` (or looked up through it as an
AuthorizedKeysCommand); the git remote is a local bare repository, `.lfsconfig` points git-lfs at
`ssh://root@127.0.0.1:<port>/team/game`. GIT_TRACE shows which path git-lfs took.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..support import HG, REPO_ROOT, Hg, LfsserveProcess, hg_env, oid_of, run
from .lfs_http import LFS, batch, request
from .lfs_util import stored_oids, temp_files
from .sshd import Sshd, make_key, make_wrapper, remove_wrapper, start_sshd
from .test_lfs_git import Git

pytestmark = pytest.mark.interop

RULES = """
[[auth.rules]]
repos = "team/**"
read = ["bob"]
write = ["alice"]
"""
PURE_SSH = "attempting pure SSH protocol connection"
PURE_SSH_FAILED = "pure SSH protocol connection failed"


def lfsserve_cli(*args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "lfsserve", *map(str, args)], cwd=REPO_ROOT, check=False)


@dataclass
class Site:
    server: LfsserveProcess
    sshd: Sshd
    config: Path
    keys: dict[str, Path]
    git: Git

    @property
    def lfs_url(self) -> str:
        return f"ssh://root@127.0.0.1:{self.sshd.port}/team/game"

    def env(self, user: str) -> dict[str, str]:
        return {"GIT_SSH_COMMAND": self.sshd.ssh_command(self.keys[user]), "GIT_TRACE": "1"}

    def git_as(self, user: str, *args: str, cwd: Path | None = None, check: bool = True):
        return self.git(*args, cwd=cwd, env=self.env(user), check=check)


@pytest.fixture
def site(lfsserve, tmp_path):
    """Factory: site(lfs_transfer=True, keys_command=False, http_auth="") -> Site (http_auth: more of
    the HTTP server's [auth] section); sshd stopped by pid at the end."""
    started: list[Sshd] = []
    wrappers: list[Path] = []

    def make(lfs_transfer: bool = True, keys_command: bool = False, http_auth: str = "",
             handoff: bool = False) -> Site:
        wrapper = make_wrapper()
        wrappers.append(wrapper)
        def text(root: Path, server_extra: str, auth_extra: str) -> str:
            return (f'[server]\nroot = "{root}"\n{server_extra}\n[ssh]\ncommand = "{wrapper}"\n'
                    f'lfs_transfer = {str(lfs_transfer).lower()}\n[auth]\nanonymous = "none"\n{auth_extra}\n{RULES}')

        if handoff:
            # The forced commands name the server's own configuration file: the running server
            # takes their hg sessions (ssh.handoff). git-lfs-authenticate has no base_url here.
            root = tmp_path / "handoff"
            server = lfsserve(root=root, anonymous="none", config=text(root, "", http_auth))
            config = root.parent / f"{root.name}-config.toml"
        else:
            # Another configuration file than the server's: the server declines the sessions
            # (`fallback`) and each forced command serves its own.
            server = lfsserve(anonymous="none", config="[auth]\n" + http_auth + "\n" + RULES)
            config = tmp_path / "ssh-config.toml"
            config.write_text(text(server.root, f'base_url = "{server.url}"', ""))
        keys = {name: make_key(tmp_path / "keys", name) for name in ("alice", "bob", "eve")}
        for name in ("alice", "bob"):
            res = lfsserve_cli("authorized-keys", "add", "--config", config, name, keys[name].with_suffix(".pub"))
            assert res.returncode == 0, res.stderr.decode()
        # `list` shows the fingerprints ssh-keygen (and sshd's log) shows.
        listed = lfsserve_cli("authorized-keys", "list", "--config", config).stdout.decode().splitlines()
        fingerprints = [run(["ssh-keygen", "-l", "-f", str(keys[n].with_suffix(".pub"))]).stdout.decode().split()[1]
                        for n in ("alice", "bob")]
        assert [line.split("\t")[:3] for line in listed] == [["alice", "ssh-ed25519", fingerprints[0]],
                                                              ["bob", "ssh-ed25519", fingerprints[1]]]
        authorized = server.root / "ssh" / "authorized_keys"
        assert authorized.stat().st_mode & 0o777 == 0o600
        if keys_command:
            sshd = start_sshd(tmp_path / "sshd", keys_command=f"{wrapper} authorized-keys lookup --config {config} "
                                                               "%u %t %k")
        else:
            sshd = start_sshd(tmp_path / "sshd", authorized_keys=authorized)
        started.append(sshd)
        git = Git(tmp_path / "home")
        git("config", "--global", "lfs.ssh.automultiplex", "false")
        return Site(server, sshd, config, keys, git)

    yield make
    for sshd in started:
        sshd.stop()
    for wrapper in wrappers:
        remove_wrapper(wrapper)


def _data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _new_repo(site: Site, tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, Path]:
    remote, work = tmp_path / "remote.git", tmp_path / "work"
    git = site.git
    git("init", "-q", "--bare", str(remote))
    git("init", "-q", str(work))
    git("remote", "add", "origin", str(remote), cwd=work)
    git("lfs", "track", "*.bin", cwd=work)
    (work / ".lfsconfig").write_text(f'[lfs]\n\turl = {site.lfs_url}\n')
    for name, data in files.items():
        (work / name).write_bytes(data)
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "assets", cwd=work)
    return remote, work


def _text(res) -> str:
    return (res.stdout + res.stderr).decode(errors="replace")


HANDED_OVER = "SSH session handed over"


def _check_handoff(site: Site, handoff: bool, user: str = "alice", what: str = "hg -R") -> None:
    """The sessions were served by the running server (handoff) or by the forced commands."""
    log = site.server.log()
    if handoff:
        assert f"{HANDED_OVER}: {user}, {what}" in log, log[-3000:]
    else:
        assert HANDED_OVER not in log, log[-3000:]


HANDOFF = pytest.mark.parametrize("handoff", [False, True], ids=["forced-command", "handoff"])


@HANDOFF
def test_pure_ssh_push_pull_and_locks(site, tmp_path, handoff):
    s = site(handoff=handoff)
    big, small = _data(3 * 1024 * 1024 + 17, 1), b"small lfs object\n"
    remote, work = _new_repo(s, tmp_path, {"big.bin": big, "small.bin": small})

    push = s.git_as("alice", "push", "-q", "origin", "main", cwd=work)
    trace = _text(push)
    assert PURE_SSH in trace and PURE_SSH_FAILED not in trace, trace[-3000:]
    assert "git-lfs-authenticate" not in trace
    assert {oid_of(big), oid_of(small)} <= stored_oids(s.server.root)
    assert "/info/lfs/objects/batch" not in s.server.log()  # nothing went over HTTP

    clone = tmp_path / "clone"
    res = s.git_as("bob", "clone", "-q", str(remote), str(clone))
    assert PURE_SSH in _text(res) and PURE_SSH_FAILED not in _text(res)
    assert (clone / "big.bin").read_bytes() == big
    assert (clone / "small.bin").read_bytes() == small

    out = _text(s.git_as("alice", "lfs", "lock", "big.bin", cwd=work))
    assert "Locked big.bin" in out
    listed = _text(s.git_as("bob", "lfs", "locks", cwd=clone))
    assert "big.bin" in listed and "alice" in listed
    refused = s.git_as("bob", "lfs", "lock", "small.bin", cwd=clone, check=False)
    assert refused.returncode != 0 and "may not write" in _text(refused)
    assert "Unlocked big.bin" in _text(s.git_as("alice", "lfs", "unlock", "big.bin", cwd=work))
    assert "big.bin" not in _text(s.git_as("bob", "lfs", "locks", cwd=clone)).replace("GIT_TRACE", "")
    _check_handoff(s, handoff, "alice", "git-lfs-transfer team/game upload")
    _check_handoff(s, handoff, "bob", "git-lfs-transfer team/game download")


def test_git_lfs_authenticate_fallback_over_http(site, tmp_path):
    s = site(lfs_transfer=False)
    data = _data(200_000, 2)
    remote, work = _new_repo(s, tmp_path, {"a.bin": data})

    trace = _text(s.git_as("alice", "push", "-q", "origin", "main", cwd=work))
    assert PURE_SSH_FAILED in trace and "git-lfs-authenticate" in trace, trace[-3000:]
    assert oid_of(data) in stored_oids(s.server.root)
    assert "POST /team/game.git/info/lfs/objects/batch" in s.server.log()

    clone = tmp_path / "clone"
    res = s.git_as("bob", "clone", "-q", str(remote), str(clone))
    assert "git-lfs-authenticate" in _text(res)
    assert (clone / "a.bin").read_bytes() == data

    assert "Locked a.bin" in _text(s.git_as("alice", "lfs", "lock", "a.bin", cwd=work))
    assert "Unlocked a.bin" in _text(s.git_as("alice", "lfs", "unlock", "a.bin", cwd=work))


def test_read_only_user_refused_on_upload(site, tmp_path):
    s = site()
    remote, work = _new_repo(s, tmp_path, {"a.bin": _data(1000, 3)})
    s.git_as("alice", "push", "-q", "origin", "main", cwd=work)
    clone = tmp_path / "clone"
    s.git_as("bob", "clone", "-q", str(remote), str(clone))
    new = _data(5000, 4)
    (clone / "b.bin").write_bytes(new)
    s.git("add", "b.bin", cwd=clone)
    s.git("commit", "-q", "-m", "more", cwd=clone)
    res = s.git_as("bob", "push", "origin", "main", cwd=clone, check=False)
    assert res.returncode != 0
    assert "user bob may not write to team/game" in _text(res)
    assert oid_of(new) not in stored_oids(s.server.root)


def test_unknown_key_and_disallowed_commands_are_refused(site, tmp_path):
    s = site()
    res = s.sshd.ssh(s.keys["eve"], "git-lfs-authenticate team/game download")
    assert res.returncode == 255 and b"Permission denied (publickey)" in res.stderr

    alice = s.keys["alice"]
    for command, message in [
        ("git-lfs-authenticate ../x upload", "invalid repository path"),
        ("git-lfs-transfer team/../../etc download", "invalid repository path"),
        ("hg -R x serve --stdio; rm -rf /", "not allowed"),
        ("hg -R 'x; rm -rf /' serve --stdio", "invalid repository path"),
        ("git-lfs-authenticate team/game upload && id", "not allowed"),
        ("ls -la", "not allowed"),
        ("", "interactive logins are not available"),
    ]:
        res = s.sshd.ssh(alice, command)
        assert res.returncode not in (0, 255), (command, res)
        err = res.stderr.decode()
        assert message in err and err.count("\n") == 1, (command, err)
        assert res.stdout == b""
    # team/game is no hg repository: hg serve's abort, before the handshake
    res = s.sshd.ssh(alice, "hg -R team/game serve --stdio", input=b"hello\n")
    assert res.returncode == 255 and res.stdout == b"", res
    assert res.stderr.decode() == "abort: repository team/game not found\n"
    # The real hg client's command line (ssh://host//path form) gets through the parser and the
    # read check to the hg transport, for a reader and a writer alike.
    for user in ("bob", "alice"):
        res = run([HG, "clone", "-e", s.sshd.ssh_command(s.keys[user]),
                   f"ssh://root@127.0.0.1:{s.sshd.port}//team/game", str(tmp_path / f"hg-{user}")],
                  env=hg_env(tmp_path / "hg-home"), check=False)
        assert res.returncode != 0 and "remote: abort: repository team/game not found" in _text(res), _text(res)
    res = s.sshd.ssh(s.keys["bob"], "git-lfs-transfer team/game upload")
    assert res.returncode == 1 and "user bob may not write to team/game" in res.stderr.decode()


def test_authorized_keys_command_and_authenticate_token_scope(site, tmp_path):
    s = site(keys_command=True)
    res = s.sshd.ssh(s.keys["alice"], "git-lfs-authenticate /team/game.git download")
    assert res.returncode == 0, _text(res) + s.sshd.log()[-2000:]
    answer = json.loads(res.stdout)
    assert answer["href"] == f"{s.server.url}/team/game.git/info/lfs"
    assert 0 < answer["expires_in"] <= 3600
    download = answer["header"]
    obj = [{"oid": oid_of(b"x"), "size": 1}]
    assert batch(answer["href"], "download", obj, download)[0] == 200
    # A download token neither writes nor opens another repository, nor the hg front door.
    assert batch(answer["href"], "upload", obj, download)[0] == 403
    assert batch(f"{s.server.url}/team/other.git/info/lfs", "download", obj, download)[0] == 401
    assert request(f"{s.server.url}/team/game?cmd=capabilities", headers=download)[0] == 401
    status, _, body = request(f"{answer['href']}/locks", headers={"Accept": LFS, **download})
    assert status == 200, body

    res = s.sshd.ssh(s.keys["alice"], "git-lfs-authenticate team/game upload")
    upload = json.loads(res.stdout)["header"]
    status, _, body = batch(answer["href"], "upload", obj, upload)
    assert status == 200 and "upload" in body["objects"][0]["actions"]
    # The token is bound to its user's current rights: bob's download token cannot upload.
    res = s.sshd.ssh(s.keys["bob"], "git-lfs-authenticate team/game download")
    bob = json.loads(res.stdout)["header"]
    assert batch(answer["href"], "upload", obj, bob)[0] == 403
    res = s.sshd.ssh(s.keys["bob"], "git-lfs-authenticate team/game upload")
    assert res.returncode == 1 and "may not write" in res.stderr.decode()
    assert s.sshd.ssh(s.keys["eve"], "git-lfs-authenticate team/game download").returncode == 255
    assert not temp_files(s.server.root)


# -- hg over SSH ------------------------------------------------------------------------------------

PASSWORD = "s3cret-alice"


def _hg_as(site: Site, user: str, home: Path, exe: str = HG) -> Hg:
    """A real hg client whose ssh logs in with `user`'s key (ui.ssh, as users configure it)."""
    return Hg(home / user, f"[ui]\nssh = {site.sshd.ssh_command(site.keys[user])}\n", exe=exe)


def _hg_url(site: Site, repo: str) -> str:
    return f"ssh://root@127.0.0.1:{site.sshd.port}/{repo}"


def _hg_repo(site: Site, name: str) -> Path:
    res = lfsserve_cli("init", "--root", site.server.root, name)
    assert res.returncode == 0, res.stderr.decode()
    return site.server.root / "repos" / name


def _commit(hg: Hg, repo: Path, name: str, data: bytes) -> None:
    (repo / name).write_bytes(data)
    hg("commit", "-A", "-m", f"add {name}", cwd=repo)




@HANDOFF
def test_hg_clone_pull_push_over_ssh(site, tmp_path, handoff):
    s = site(handoff=handoff)
    served = _hg_repo(s, "team/hg")
    url = _hg_url(s, "team/hg")
    alice, bob = _hg_as(s, "alice", tmp_path), _hg_as(s, "bob", tmp_path)

    work = tmp_path / "alice-work"
    alice("clone", url, str(work))
    _commit(alice, work, "a.txt", b"one\n" * 1000)
    _commit(alice, work, "b.bin", _data(50_000, 1))
    alice("bookmark", "feature", cwd=work)
    out = _text(alice("push", "-B", "feature", cwd=work))
    assert "remote: added 2 changesets with 2 changes to 2 files" in out and "exporting bookmark feature" in out, out

    clone, stream = tmp_path / "bob-clone", tmp_path / "bob-stream"
    bob("clone", url, str(clone))
    out = _text(bob("clone", "--stream", url, str(stream)))
    assert "streaming all changes" in out, out
    for repo in (clone, stream):
        assert (repo / "b.bin").read_bytes() == _data(50_000, 1)
        assert bob.out("log", "-T", "{phase} {bookmarks}\n", cwd=repo) == "public feature\npublic \n"

    _commit(alice, work, "c.txt", b"three\n")
    alice("push", cwd=work)
    out = _text(bob("pull", "-u", cwd=clone))
    assert "added 1 changesets with 1 changes to 1 files" in out, out
    assert (clone / "c.txt").read_bytes() == b"three\n"
    assert bob.out("log", "-r", "feature", "-T", "{desc}", cwd=clone) == "add c.txt"  # the bookmark moved

    # a read-only user's push: hg's remote error, nothing written
    _commit(bob, clone, "bob.txt", b"bob\n")
    res = bob("push", cwd=clone, check=False)
    assert res.returncode != 0, _text(res)
    assert "remote: user bob may not write to team/hg" in _text(res) and "abort: remote error" in _text(res)
    assert len(alice.out("log", "-R", str(served), "-T", "{node}\n").split()) == 3

    # a new head is refused, then pushed with -f; the server publishes (hg's default), so the
    # pushed head becomes public, and a pull brings that phase back to a clone that lost it
    other = tmp_path / "alice-other"
    alice("clone", "-r", "0", url, str(other))
    _commit(alice, other, "head.txt", b"head\n")
    res = alice("push", cwd=other, check=False)
    assert res.returncode != 0 and "push creates new remote head" in _text(res), _text(res)
    alice("push", "-f", cwd=other)
    assert alice.out("log", "-R", str(served), "-r", "head()", "-T", "{phase}\n") == "public\npublic\n"
    # phases and bookmarks move over pushkey/bookmarks parts
    alice("phase", "--draft", "--force", "-r", ".", cwd=other)
    alice("pull", cwd=other)
    assert alice.out("log", "-r", ".", "-T", "{phase}", cwd=other) == "public"
    alice("bookmark", "-d", "feature", cwd=work)
    res = alice("push", "-B", "feature", cwd=work, check=False)
    out = _text(res)
    assert res.returncode == 1 and "deleting remote bookmark feature" in out, out  # 1: no changesets
    assert bob.out("bookmarks", "-R", str(served)).strip() == "no bookmarks set"
    assert "Traceback" not in out
    alice("verify", "-R", str(served))
    _check_handoff(s, handoff)
    _check_handoff(s, handoff, "bob")


@HANDOFF
def test_hg_http_and_ssh_pushes_race_on_one_repository(site, tmp_path, handoff):
    s = site(http_auth=f'htpasswd = "{_htpasswd(tmp_path, "alice")}"', handoff=handoff)
    served = _hg_repo(s, "team/race")
    alice = _hg_as(s, "alice", tmp_path)
    base = tmp_path / "base"
    alice("clone", _hg_url(s, "team/race"), str(base))
    _commit(alice, base, "base.txt", b"base\n")
    alice("push", cwd=base)

    http_url = f"{s.server.url}/team/race"
    clones = {}
    for via in ("http", "ssh"):
        clone = tmp_path / via
        alice("clone", str(base), str(clone))
        for i in range(20):
            _commit(alice, clone, f"{via}-{i}.bin", _data(20_000, i + (100 if via == "ssh" else 0)))
        clones[via] = clone
    with open(clones["http"] / ".hg" / "hgrc", "a") as fh:
        fh.write(f"[auth]\nx.prefix = {http_url}\nx.username = alice\nx.password = {PASSWORD}-alice\n")
    procs = {
        via: subprocess.Popen([HG, "push", "-f", url], cwd=clones[via], env=alice.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for via, url in (("http", http_url), ("ssh", _hg_url(s, "team/race")))
    }
    outs = {via: p.communicate(timeout=300)[0].decode(errors="replace") for via, p in procs.items()}
    for via, p in procs.items():
        assert p.returncode == 0, (via, outs[via])
        assert "added 20 changesets with 20 changes to 20 files" in outs[via], outs[via]
    res = alice("verify", "-R", str(served))
    assert "checked 41 changesets" in _text(res), _text(res)
    assert len(alice.out("log", "-R", str(served), "-r", "head()", "-T", "{node}\n").split()) == 2
    _check_handoff(s, handoff)


def _htpasswd(tmp_path: Path, *users: str) -> Path:
    htpasswd = tmp_path / "htpasswd"
    for user in users:
        res = subprocess.run([sys.executable, "-m", "lfsserve", "adduser", "--htpasswd", str(htpasswd),
                              "--password-stdin", user], cwd=REPO_ROOT, input=f"{PASSWORD}-{user}\n".encode(),
                             capture_output=True, check=False)
        assert res.returncode == 0, res.stderr.decode()
    return htpasswd


@HANDOFF
def test_hg_lfs_over_ssh_with_blobs_over_http(site, tmp_path, handoff):
    s = site(http_auth=f'htpasswd = "{_htpasswd(tmp_path, "alice", "bob")}"', handoff=handoff)
    served = _hg_repo(s, "team/media")
    lfs_url = f"{s.server.url}/team/media/.git/info/lfs"

    def lfs_hg(user: str) -> Hg:
        return Hg(tmp_path / f"lfs-{user}", f"[ui]\nssh = {s.sshd.ssh_command(s.keys[user])}\n"
                  f"[extensions]\nlfs =\n[lfs]\nurl = {lfs_url}\ntrack = size('>10KB')\n"
                  f"[auth]\nx.prefix = {s.server.url}/team/\nx.username = {user}\nx.password = {PASSWORD}-{user}\n")
    alice, bob = lfs_hg("alice"), lfs_hg("bob")
    work = tmp_path / "lfs-work"
    alice("clone", _hg_url(s, "team/media"), str(work))
    big = _data(300_000, 7)
    _commit(alice, work, "big.bin", big)
    _commit(alice, work, "small.txt", b"small\n")
    out = _text(alice("push", cwd=work))
    assert "lfs: uploaded 1 files" in out and "remote: added 2 changesets" in out, out
    assert "lfs" in (served / ".hg" / "store" / "requires").read_text().split()  # share-safe
    assert oid_of(big) in stored_oids(s.server.root)
    # blobs sent elsewhere: the SSH push is checked against the blob store as an HTTP push is
    _commit(alice, work, "elsewhere.bin", _data(200_000, 8))
    res = alice("push", "--config", f"lfs.url=file://{tmp_path / 'elsewhere'}", cwd=work, check=False)
    assert res.returncode != 0 and "remote: push refused: 1 LFS object(s) referenced by the pushed changesets are " \
        "not on this server" in _text(res), _text(res)
    assert len(alice.out("log", "-R", str(served), "-T", "{node}\n").split()) == 2
    clone = tmp_path / "lfs-clone"
    out = _text(bob("clone", _hg_url(s, "team/media"), str(clone)))
    assert (clone / "big.bin").read_bytes() == big, out
    alice("verify", "-R", str(served))
    _check_handoff(s, handoff)


@HANDOFF
def test_hg593_clones_over_ssh(site, tmp_path, hg593_path, handoff):
    s = site(handoff=handoff)
    _hg_repo(s, "team/old")
    alice = _hg_as(s, "alice", tmp_path)
    work = tmp_path / "work"
    alice("clone", _hg_url(s, "team/old"), str(work))
    _commit(alice, work, "a.txt", b"a\n" * 500)
    alice("push", cwd=work)
    old = _hg_as(s, "bob", tmp_path / "old", exe=hg593_path)
    out = _text(old("clone", _hg_url(s, "team/old"), str(tmp_path / "old-clone")))
    assert "added 1 changesets with 1 changes to 1 files" in out, out
    assert (tmp_path / "old-clone" / "a.txt").read_bytes() == b"a\n" * 500
    old("verify", cwd=tmp_path / "old-clone")
    _check_handoff(s, handoff, "bob")


# -- the hg channel driven directly (no sshd): `lfsserve ssh` with SSH_ORIGINAL_COMMAND ----------------

NULL_PAIR = b"-".join([b"0" * 40] * 2)
HANDSHAKE = b"hello\nbetween\npairs %d\n%s" % (len(NULL_PAIR), NULL_PAIR)


@pytest.fixture(params=["forced-command", "handoff"])
def channel(request, tmp_path, lfsserve):
    """channel(user, input, repo="team/raw") -> CompletedProcess of `lfsserve ssh` speaking hg:
    serving the session itself, or handing it to a running server of the same configuration."""
    root = tmp_path / "root"
    text = (f'[server]\nroot = "{root}"\n[hg]\nmax_push_size = 100000\ncreate_on_push = true\n'
            f'[auth]\nanonymous = "none"\n{RULES}')
    res = lfsserve_cli("init", "--root", root, "team/raw")
    assert res.returncode == 0, res.stderr.decode()
    if request.param == "handoff":
        server = lfsserve(root=root, anonymous=None, config=text)
        config = root.parent / f"{root.name}-config.toml"
    else:
        server = None
        config = tmp_path / "raw.toml"
        config.write_text(text)

    def talk(user: str, data: bytes, repo: str = "team/raw") -> subprocess.CompletedProcess:
        env = {**hg_env(tmp_path / "home"), "SSH_ORIGINAL_COMMAND": f"hg -R {repo} serve --stdio"}
        before = server.log().count("SSH session handed over") if server is not None else 0
        res = subprocess.run([sys.executable, "-m", "lfsserve", "ssh", "--config", str(config), "--user", user],
                             cwd=REPO_ROOT, env=env, input=data, capture_output=True, timeout=120, check=False)
        if server is not None and b"may not" not in res.stderr:
            # the session was the server's (a refused user's never starts); its log line may
            # reach this test's reader of the server's output a moment later
            deadline = time.monotonic() + 30
            while server.log().count("SSH session handed over") != before + 1:
                assert time.monotonic() < deadline, server.log()[-2000:]
                time.sleep(0.05)
        return res
    talk.repo = root / "repos" / "team" / "raw"  # type: ignore[attr-defined]
    talk.spool = root / "tmp"  # type: ignore[attr-defined]
    talk.config = config  # type: ignore[attr-defined]
    return talk


def _frames(out: bytes) -> list[bytes]:
    frames = []
    while out:
        size, _, rest = out.partition(b"\n")
        frames.append(rest[:int(size)])
        out = rest[int(size):]
    return frames


def test_hg_channel_handshake_and_unknown_command(channel):
    res = channel("bob", HANDSHAKE + b"frobnicate\nheads\n")
    assert res.returncode == 0 and res.stderr == b"", res
    hello, between, unknown, heads = _frames(res.stdout)
    assert hello.startswith(b"capabilities: ") and hello.endswith(b"\n")
    caps = hello[len(b"capabilities: "):-1].split(b" ")
    assert {b"batch", b"getbundle", b"known", b"pushkey", b"protocaps", b"unbundlehash"} <= set(caps)
    assert any(c.startswith(b"unbundle=") for c in caps)
    # HTTP's own capabilities are not offered over SSH
    assert not any(c.startswith((b"httpheader", b"httpmediatype", b"compression", b"httppostargs")) for c in caps)
    assert between == b"\n" and unknown == b"" and heads == b"0" * 40 + b"\n"


@pytest.mark.parametrize("data, message", [
    (b"\x00\xff\xfegarbage\n", "expected a command name"),
    (b"known\nnodes 40\nabc", "input ended in the middle of argument 'nodes' of known"),
    (b"known\nnodes\n", "expected `<name> <length>`"),
    (b"known\nnodes 99999999999\n", "declares 99999999999 bytes"),
    (b"known\nother 3\nabc", "unexpected argument 'other' for known"),
    (b"getbundle\n* 99999999\n", "pairs in the dict argument of getbundle"),
    (b"x" * 200_000, "longer than 1024 bytes"),
], ids=["garbage", "truncated", "no-length", "huge-length", "undeclared", "huge-count", "endless-line"])
def test_hg_channel_broken_framing_is_said_and_ends_the_session(channel, data, message):
    res = channel("alice", HANDSHAKE + data)
    assert res.returncode == 1, res
    err = res.stderr.decode()
    assert message in err and err.startswith("lfsserve: hg protocol error: "), err
    assert len(_frames(res.stdout)) == 2   # the handshake's answers, nothing after them


def test_hg_channel_missing_repository(channel):
    # a reader: hg serve's abort before the handshake
    res = channel("bob", HANDSHAKE, repo="team/new")
    assert res.returncode == 255 and res.stdout == b"", res
    assert res.stderr.decode() == "abort: repository team/new not found\n"
    # a writer where hg.create_on_push allows it: an empty repository until a push creates it
    res = channel("alice", HANDSHAKE + b"heads\n", repo="team/new")
    assert res.returncode == 0, res
    assert _frames(res.stdout)[1:] == [b"\n", b"0" * 40 + b"\n"]
    assert not (channel.repo.parent / "new").exists()
    # a repository lfsserve cannot read: hg's form of the abort, no traceback
    odd = channel.repo.parent / "odd"
    (odd / ".hg").mkdir(parents=True)
    (odd / ".hg" / "requires").write_text("revlogv1\nstore\nsome-future-format\n")
    res = channel("bob", HANDSHAKE, repo="team/odd")
    err = res.stderr.decode()
    assert res.returncode == 255 and err.startswith("abort: repository ") and "some-future-format" in err, res
    assert "Traceback" not in err and err.count("\n") == 1, err


def _bundle_frames(chunks: list[bytes]) -> bytes:
    return b"".join(b"%d\n%s" % (len(c), c) for c in chunks)


def test_hg_channel_unbundle_refusals_write_nothing(channel, tmp_path):
    before = sorted(p.name for p in (channel.repo / ".hg" / "store").iterdir())
    push = b"unbundle\nheads 5\nforce"
    # EOF in the middle of the bundle: told on stderr, the spooled part dropped
    res = channel("alice", HANDSHAKE + push + b"100\nHG20" + b"\0" * 10)
    assert res.returncode == 1 and "input ended in the middle of the pushed bundle" in res.stderr.decode(), res
    assert _frames(res.stdout)[2:] == [b""]   # the go-ahead, then nothing
    # a frame length that is no number
    res = channel("alice", HANDSHAKE + push + b"12x\n")
    assert res.returncode == 1 and "expected a frame length" in res.stderr.decode(), res
    # more than hg.max_push_size: the rest is read and dropped, the refusal answered as bundle1's
    # (the bundle's first bytes are no HG20), and the session goes on
    res = channel("alice", HANDSHAKE + push + _bundle_frames([b"\0" * 60000] * 2) + b"0\nheads\n")
    assert res.returncode == 0, res
    assert res.stderr.decode() == "push larger than this server's limit of 97.66 KiB (hg.max_push_size)\n", res
    assert _frames(res.stdout)[2:] == [b"", b"", b"0", b"0" * 40 + b"\n"]
    # a reader: hg's out-of-band error before any of the bundle is read; the session goes on
    res = channel("bob", HANDSHAKE + push + b"heads\n")
    assert res.returncode == 0, res
    assert res.stdout.endswith(b"\n41\n" + b"0" * 40 + b"\n")
    assert res.stderr.decode() == "user bob may not write to team/raw\n-\n"
    # a bundle that is no bundle: refused inside a bundle2 reply, nothing applied
    res = channel("alice", HANDSHAKE + push + _bundle_frames([b"garbage"]) + b"0\n")
    assert res.returncode == 0, res
    assert sorted(p.name for p in (channel.repo / ".hg" / "store").iterdir()) == before
    assert list(channel.spool.iterdir()) == []
    res = subprocess.run([HG, "verify", "-R", str(channel.repo)], env=hg_env(tmp_path / "home"), capture_output=True,
                         check=False)
    assert res.returncode == 0, res


@pytest.fixture
def fake_ssh(channel, tmp_path):
    """A `ui.ssh` program that runs `lfsserve ssh` for alice directly (the forced command without
    sshd), with the channel fixture's configuration."""
    script = tmp_path / "fake-ssh"
    config = channel.config
    script.write_text("#!/bin/sh\n"
                      "for last; do :; done\n"   # the remote command is the last argument
                      f'SSH_ORIGINAL_COMMAND="$last" exec {sys.executable} -m lfsserve ssh '
                      f'--config {config} --user alice\n')
    script.chmod(0o755)
    return script


def test_hg_bundle1_push_and_pushes_over_the_size_limit(channel, fake_ssh, tmp_path):
    env = hg_env(tmp_path / "home")
    env["PYTHONPATH"] = str(REPO_ROOT)
    ssh = ["--config", f"ui.ssh={fake_ssh}"]
    work = tmp_path / "work"
    run([HG, "init", str(work)], env=env)
    (work / "small").write_text("small\n")
    run([HG, "-R", str(work), "commit", "-Am", "small", "-u", "t"], env=env)
    url = "ssh://x/team/raw"
    # an old client's bundle1 push is applied
    res = subprocess.run([HG, "-R", str(work), "push", *ssh, "--config", "devel.legacy.exchange=bundle1", url],
                         env=env, capture_output=True, timeout=120, check=False)
    assert res.returncode == 0 and b"added 1 changesets with 1 changes to 1 files" in res.stdout + res.stderr, res
    # over hg.max_push_size (100000 here): hg's own refusal, in the form of the bundle sent
    (work / "big").write_bytes(random.Random(1).randbytes(300_000))
    run([HG, "-R", str(work), "commit", "-Am", "big", "-u", "t"], env=env)
    message = b"remote: push larger than this server's limit of 97.66 KiB (hg.max_push_size)"
    res = subprocess.run([HG, "-R", str(work), "push", *ssh, url], env=env, capture_output=True, timeout=120,
                         check=False)
    assert res.returncode == 255 and message in res.stderr and b"abort: push failed on remote" in res.stderr, res
    res = subprocess.run([HG, "-R", str(work), "push", *ssh, "--config", "devel.legacy.exchange=bundle1", url],
                         env=env, capture_output=True, timeout=120, check=False)
    assert res.returncode == 1 and message in res.stdout + res.stderr, res
    # nothing of the refused pushes was applied or left behind
    res = subprocess.run([HG, "log", "-R", str(channel.repo), "-T", "{desc}\n"], env=env, capture_output=True,
                         check=False)
    assert res.stdout == b"small\n", res
    assert list(channel.spool.iterdir()) == []
