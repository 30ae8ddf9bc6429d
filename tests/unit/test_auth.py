import base64
import time

import bcrypt
import pytest

from lfsserve.auth import ANONYMOUS, Authenticator, Forbidden, Permission, Principal, Unauthorized, hash_token
from lfsserve.config import ConfigError, load_config


def basic(user, pw):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


@pytest.fixture
def authn(tmp_path):
    (tmp_path / "htpasswd").write_text(
        "alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode() + "\n"
        "bob:" + bcrypt.hashpw(b"builder", bcrypt.gensalt(4)).decode() + "\n"
        "md5user:$apr1$abc$def\n")
    (tmp_path / "tokens").write_text(f"carol:{hash_token('carol-token')}\n")
    (tmp_path / "c.toml").write_text(f"""
[server]
root = "{tmp_path / 'data'}"
[auth]
htpasswd = "{tmp_path / 'htpasswd'}"
tokens = "{tmp_path / 'tokens'}"
[[auth.rules]]
repos = "private/**"
read = ["alice", "carol"]
write = ["alice"]
[[auth.rules]]
repos = "open/*"
write = ["anonymous"]
""")
    return Authenticator(load_config(tmp_path / "c.toml", env={}))


async def test_basic_and_tokens(authn):
    assert (await authn.authenticate(basic("alice", "wonderland"))).name == "alice"
    assert (await authn.authenticate(basic("alice", "wonderland"))).name == "alice"  # cached path
    assert (await authn.authenticate({"Authorization": "Bearer carol-token"})).name == "carol"
    assert (await authn.authenticate(basic("carol", "carol-token"))).name == "carol"
    assert await authn.authenticate({}) is ANONYMOUS
    for headers in (basic("alice", "nope"), basic("md5user", "x"), basic("carol", "wrong"),
                    basic("bob", "carol-token"), {"Authorization": "Bearer nope"},
                    {"Authorization": "Basic !!!"}, {"Authorization": "Digest x"}):
        with pytest.raises(Unauthorized):
            await authn.authenticate(headers)


async def test_basic_checks_are_cached_bounded_and_keyed_on_the_password(authn, monkeypatch):
    """bcrypt runs once per (user, password, hash), not per request; the cache never outgrows
    CACHE_ENTRIES; a wrong password is never served from it."""
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, hashed: calls.append(pw) or real(pw, hashed))
    for _ in range(3):
        assert (await authn.authenticate(basic("alice", "wonderland"))).name == "alice"
    assert calls == [b"wonderland"]
    with pytest.raises(Unauthorized):
        await authn.authenticate(basic("alice", "wonderland!"))
    monkeypatch.setattr(authn, "CACHE_ENTRIES", 1)
    assert (await authn.authenticate(basic("bob", "builder"))).name == "bob"
    assert len(authn._basic_cache) <= 1
    assert (await authn.authenticate(basic("alice", "wonderland"))).name == "alice"
    assert len(authn._basic_cache) <= 1 and len(calls) == 4


async def test_rules(authn):
    alice, bob, carol = Principal("alice", "basic"), Principal("bob", "basic"), Principal("carol", "bearer")
    assert authn.permission(alice, "private/x/y") is Permission.WRITE
    assert authn.permission(carol, "private/x") is Permission.READ
    assert authn.permission(bob, "private/x") is Permission.NONE
    assert authn.permission(ANONYMOUS, "private/x") is Permission.NONE
    assert authn.permission(ANONYMOUS, "open/x") is Permission.WRITE
    assert authn.permission(ANONYMOUS, "open/x/y") is Permission.READ  # "*" stays in one segment
    # Least privilege: without a rule, an authenticated user gets auth.authenticated (read).
    assert authn.permission(bob, "elsewhere") is Permission.READ
    with pytest.raises(Forbidden):
        authn.authorize(bob, "elsewhere", Permission.WRITE)
    with pytest.raises(Unauthorized):
        authn.authorize(ANONYMOUS, "private/x", Permission.READ)
    with pytest.raises(Forbidden):
        authn.authorize(carol, "private/x", Permission.WRITE)
    with pytest.raises(Unauthorized):
        authn.authorize(ANONYMOUS, "elsewhere", Permission.WRITE)
    authn.authorize(ANONYMOUS, "elsewhere", Permission.READ)


def _authn(tmp_path, auth: str, rules: str = "") -> Authenticator:
    (tmp_path / "c.toml").write_text(f"""
[server]
root = "{tmp_path / 'data'}"
[auth]
{auth}
{rules}
""")
    return Authenticator(load_config(tmp_path / "c.toml", env={}))


BOB = Principal("bob", "basic")


def test_authenticated_level_without_rules(tmp_path):
    assert load_config(None, env={}).auth.authenticated == "read"
    for level, expected in (("none", Permission.NONE), ("read", Permission.READ), ("write", Permission.WRITE)):
        authn = _authn(tmp_path, f'anonymous = "none"\nauthenticated = "{level}"')
        assert authn.permission(BOB, "team/app") is expected
        assert authn.permission(ANONYMOUS, "team/app") is Permission.NONE
    # Logging in never lowers what a client may do.
    authn = _authn(tmp_path, 'anonymous = "read"\nauthenticated = "none"')
    assert authn.permission(BOB, "x") is Permission.READ
    # The environment and the TOML file set it like any option; a bad value names the key.
    assert load_config(None, env={"LFSSERVE_AUTH_AUTHENTICATED": "write"}).auth.authenticated == "write"
    with pytest.raises(ConfigError, match=r"auth.authenticated"):
        load_config(None, env={"LFSSERVE_AUTH_AUTHENTICATED": "admin"})


def test_authenticated_level_yields_to_rules(tmp_path):
    authn = _authn(tmp_path, 'authenticated = "write"', """
[[auth.rules]]
repos = "team/**"
read = ["*"]
write = ["alice"]
""")
    assert authn.permission(BOB, "team/app") is Permission.READ
    assert authn.permission(Principal("alice", "basic"), "team/app") is Permission.WRITE
    assert authn.permission(BOB, "other") is Permission.WRITE


def test_describe_says_who_may_write(tmp_path):
    text = "\n".join(_authn(tmp_path, "").describe())
    assert 'anonymous clients may read (auth.anonymous = "read")' in text
    assert 'authenticated users may read (auth.authenticated = "read")' in text
    assert 'who may write: nobody (set auth.authenticated = "write"' in text
    assert "no users" in text
    text = "\n".join(_authn(tmp_path, 'authenticated = "write"').describe())
    assert "who may write: every authenticated user" in text
    text = "\n".join(_authn(tmp_path, 'anonymous = "write"').describe())
    assert "who may write: everyone, without credentials" in text
    text = "\n".join(_authn(tmp_path, 'anonymous = "none"', """
[[auth.rules]]
repos = "team/**"
read = ["*"]
write = ["alice", "bob"]
""").describe())
    assert "rule 'team/**': write alice, bob; read any authenticated user" in text
    assert "who may write: alice, bob on team/**" in text


async def test_signed_action_tokens(authn):
    alice = Principal("alice", "basic")
    scope = ("private/r", "a" * 64, "upload")
    tok = authn.sign_action(alice, *scope, expires_at=int(time.time()) + 60)
    p = await authn.authenticate({"Authorization": f"Bearer {tok}"}, scope)
    assert p.name == "alice" and authn.signed_grants(p, *scope)
    assert not authn.signed_grants(p, "private/r", "a" * 64, "download")
    for other in [("private/other", "a" * 64, "upload"), ("private/r", "b" * 64, "upload"),
                  ("private/r", "a" * 64, "download"), None]:
        with pytest.raises(Unauthorized):
            await authn.authenticate({"Authorization": f"Bearer {tok}"}, other)
    expired = authn.sign_action(alice, *scope, expires_at=int(time.time()) - 1)
    with pytest.raises(Unauthorized, match="expired"):
        await authn.authenticate({"Authorization": f"Bearer {expired}"}, scope)
    with pytest.raises(Unauthorized):
        await authn.authenticate({"Authorization": f"Bearer {tok[:-2]}xx"}, scope)
    with pytest.raises(Forbidden):  # a signed token carries no repository-wide rights
        authn.authorize(p, "private/r", Permission.READ)


async def test_files_reloaded(authn, tmp_path):
    with pytest.raises(Unauthorized):
        await authn.authenticate({"Authorization": "Bearer dave-token"})
    with open(tmp_path / "tokens", "a") as fh:
        fh.write(f"dave:{hash_token('dave-token')}\n")
    authn._tokens._checked = 0  # skip the 1 s re-stat throttle
    assert (await authn.authenticate({"Authorization": "Bearer dave-token"})).name == "dave"


def test_secret_key_persisted(tmp_path):
    cfg = load_config(overrides={"server": {"root": str(tmp_path)}}, env={})
    a, b = Authenticator(cfg), Authenticator(cfg)
    assert a._key == b._key and len(a._key) == 32
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600


async def test_action_signer_matches_sign_action(authn):
    """The batch fast path signs exactly what sign_action signs, and the tokens authenticate."""
    alice = Principal("alice", "basic")
    exp = int(time.time()) + 60
    for principal in (alice, ANONYMOUS):
        sign = authn.action_signer(principal, "team/app", "download", exp)
        for oid in ("0" * 64, "f" * 64):
            token = sign(oid)
            assert token == authn.sign_action(principal, "team/app", oid, "download", exp)
            got = await authn.authenticate({"Authorization": f"Bearer {token}"}, ("team/app", oid, "download"))
            assert got.via == "signed" and got.name == principal.name
    with pytest.raises(Unauthorized):
        await authn.authenticate({"Authorization": f"Bearer {sign('0' * 64)}"}, ("team/app", "0" * 64, "upload"))


async def test_repo_tokens_grant_one_repository_one_operation_on_the_lfs_api_only(authn):
    later = int(time.time()) + 60
    download = {"Authorization": "Bearer " + authn.sign_repo_token("carol", "private/x", "download", later)}
    upload = {"Authorization": "Bearer " + authn.sign_repo_token("alice", "private/x", "upload", later)}
    carol = await authn.authenticate(download, lfs_repo="private/x")
    assert (carol.name, carol.via) == ("carol", "repo-token")
    authn.authorize(carol, "private/x", Permission.READ)
    with pytest.raises(Forbidden, match="issued for downloads"):
        authn.authorize(carol, "private/x", Permission.WRITE)
    with pytest.raises(Forbidden, match="for private/x, not elsewhere"):
        authn.authorize(carol, "elsewhere", Permission.READ)
    alice = await authn.require(upload, "private/x", Permission.WRITE, lfs=True)
    assert alice.name == "alice"
    # Only for the namespace it was signed for, and never outside the LFS API (hg wire, v2).
    with pytest.raises(Unauthorized, match="not valid for private/y"):
        await authn.authenticate(upload, lfs_repo="private/y")
    with pytest.raises(Unauthorized, match="only valid for the Git LFS API"):
        await authn.require(upload, "private/x", Permission.READ)
    # Bound to the user's current rights: an upload token for a user who may only read is no use.
    bob_upload = {"Authorization": "Bearer " + authn.sign_repo_token("carol", "private/x", "upload", later)}
    with pytest.raises(Forbidden):
        await authn.require(bob_upload, "private/x", Permission.WRITE, lfs=True)
    # Tampering, expiry, and an action token's MAC replayed as a repository token all fail.
    token = upload["Authorization"].split()[1]
    _, _op, exp, user, mac = token.split(".")
    for bad in (f"lfsr1.download.{exp}.{user}.{mac}", f"lfsr1.upload.{int(exp) + 1}.{user}.{mac}",
                f"lfsr1.upload.{exp}.{user}", "lfsr1.upload.x.y.z", f"lfsr1.upload.\u00b2.{user}.{mac}",
                f"lfsr1.upload.{'9' * 40}.{user}.{mac}"):
        with pytest.raises(Unauthorized):
            await authn.authenticate({"Authorization": f"Bearer {bad}"}, lfs_repo="private/x")
    expired = authn.sign_repo_token("alice", "private/x", "upload", int(time.time()) - 1)
    with pytest.raises(Unauthorized, match="expired"):
        await authn.authenticate({"Authorization": f"Bearer {expired}"}, lfs_repo="private/x")
    action = authn.sign_action(Principal("alice", "basic"), "private/x", "0" * 64, "upload", later)
    forged = "lfsr1.upload." + action[len("lfs1."):]
    with pytest.raises(Unauthorized):
        await authn.authenticate({"Authorization": f"Bearer {forged}"}, lfs_repo="private/x")
