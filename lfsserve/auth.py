"""Authentication and authorization: who is calling, and may they read or write this repository.

Credentials:
- `Authorization: Basic` with a user from the htpasswd file (bcrypt), or with a user's token as the
  password (handy for credential helpers and `[auth]` sections in hgrc);
- `Authorization: Bearer <token>` with a token from the token file;
- `Authorization: Bearer lfs1.…`: a short-lived signed action token that the LFS batch API put in
  an action's header; it grants one operation on one object of one namespace and nothing else;
- `Authorization: Bearer lfsr1.…`: a short-lived signed repository token that `git-lfs-authenticate`
  (over SSH) hands to git-lfs; it grants the Git LFS API (batch, transfers, locks) of one namespace
  for one operation ("download": read; "upload": read and write) and nothing else, as long as the
  user it names still has that permission.

Authorization: the first access rule whose glob matches the repository decides; without a
matching rule anonymous clients get `auth.anonymous` and authenticated users `auth.authenticated`
(read by default: like hg serve's empty `web.allow-push`, nobody writes until configured; never
less than anonymous clients). Write implies read. Front ends turn Unauthorized into 401 (with a
Basic challenge: hg understands nothing else) and Forbidden into 403, each in its own body format.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from .config import AccessRule, Config

__all__ = [
    "ANONYMOUS",
    "AuthError",
    "Authenticator",
    "Forbidden",
    "Permission",
    "Principal",
    "PushRights",
    "Unauthorized",
    "glob_to_regex",
    "hash_token",
]

log = logging.getLogger(__name__)


class Permission(enum.IntEnum):
    NONE = 0
    READ = 1
    WRITE = 2

    @classmethod
    def parse(cls, word: str) -> Permission:
        return {"none": cls.NONE, "read": cls.READ, "write": cls.WRITE}[word]


@dataclass(frozen=True)
class Principal:
    """Who made a request. `name` is None for anonymous clients."""

    name: str | None
    via: str  # "anonymous" | "basic" | "bearer" | "signed" | "repo-token" | "ssh"
    # For via == "signed": what the action token grants, (namespace, oid, operation); for
    # via == "repo-token": (namespace, "", operation).
    scope: tuple[str, str, str] | None = None

    @property
    def authenticated(self) -> bool:
        return self.name is not None

    def __str__(self) -> str:
        return self.name or "-"


ANONYMOUS = Principal(None, "anonymous")


@dataclass(frozen=True)
class PushRights:
    """Publishing rights and branch / bookmark protection of one user on one repository."""

    user: str | None
    may_publish: bool
    # (kind "branch" | "bookmark", name glob, this user may) in rule order: the first match decides
    protect: tuple[tuple[str, re.Pattern[str], bool], ...]

    def _may(self, kind: str, name: str) -> bool:
        for k, regex, allowed in self.protect:
            if k == kind and regex.match(name):
                return allowed
        return True

    def may_push_branch(self, branch: str) -> bool:
        return self._may("branch", branch)

    def may_move_bookmark(self, name: str) -> bool:
        return self._may("bookmark", name)


class AuthError(Exception):
    """Base of the errors a front end turns into 401 / 403."""

    status = 403

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Unauthorized(AuthError):
    """No (valid) credentials and the operation needs some: answer 401 with a challenge."""

    status = 401


class Forbidden(AuthError):
    """Authenticated, but not allowed to do this: answer 403."""

    status = 403


# expires_at of a signed action token: a Unix time in ASCII digits
_EXPIRY = re.compile(r"[0-9]{1,12}")


def hash_token(token: str) -> str:
    """How tokens are kept in the token file: hex SHA-256 (tokens are long random strings)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def glob_to_regex(glob: str) -> re.Pattern[str]:
    """A repository-path glob of the config (`*` within a segment, `**` across, `?` one
    character) as an anchored regex."""
    out = []
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


class _ReloadingFile:
    """A small credentials file parsed into a dict, re-read when its mtime or size changes."""

    def __init__(self, path: str, parse: Callable[[str, str], dict[str, str]]):
        self.path = Path(path).expanduser() if path else None
        self._parse = parse
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self.entries: dict[str, str] = {}
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return
        self._checked = now
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self.entries:
                log.warning("credentials file %s disappeared; no users from it", self.path)
            self.entries, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self.entries = self._parse(self.path.read_text(encoding="utf-8"), str(self.path))
            self._stamp = stamp


def _parse_htpasswd(text: str, where: str) -> dict[str, str]:
    users = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            log.warning("%s:%d: not a 'user:hash' line; ignored", where, lineno)
            continue
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            log.warning("%s:%d: user %r has a non-bcrypt hash; only bcrypt is accepted (htpasswd -B)",
                        where, lineno, user)
            continue
        users[user] = hashed
    return users


def _parse_tokens(text: str, where: str) -> dict[str, str]:
    """token file lines are `user:sha256hex`; the result maps the hash to the user."""
    tokens = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, digest = line.partition(":")
        if not sep or not user or not re.fullmatch(r"[0-9a-f]{64}", digest):
            log.warning("%s:%d: not a 'user:sha256hex' line; ignored", where, lineno)
            continue
        tokens[digest] = user
    return tokens


SIGNED_PREFIX = "lfs1."
REPO_TOKEN_PREFIX = "lfsr1."
# First MAC field of repository tokens: never a valid namespace, so no action token's MAC (whose
# first field is the namespace) can be replayed as a repository token, nor the other way round.
_REPO_TOKEN_DOMAIN = "\x01repo-token"
# Domain of the signatures in clone bundle URLs: never valid as any other token.
_BUNDLE_URL_DOMAIN = "\x01clonebundle"
_REPO_TOKEN_OPERATIONS = ("upload", "download")


class Authenticator:
    """Checks credentials and access rules for every front end."""

    # Successful bcrypt checks are remembered for this long, so that the dozens of requests of one
    # `hg clone` cost one bcrypt computation, not dozens.
    CACHE_SECONDS = 300.0
    CACHE_ENTRIES = 10000

    def __init__(self, config: Config):
        self.config = config
        self.realm = config.auth.realm
        self.anonymous = Permission.parse(config.auth.anonymous)
        # A user who logs in never gets less than one who does not.
        self.authenticated = max(self.anonymous, Permission.parse(config.auth.authenticated))
        self._htpasswd = _ReloadingFile(config.auth.htpasswd, _parse_htpasswd)
        self._tokens = _ReloadingFile(config.auth.tokens, _parse_tokens)
        self._rules = [(glob_to_regex(r.repos), r) for r in config.auth.rules]
        self._basic_cache: dict[bytes, tuple[str, float]] = {}
        self._key = self._load_key()
        self._hmac = hmac.new(self._key, digestmod=hashlib.sha256)
        block = self._key if len(self._key) <= 64 else hashlib.sha256(self._key).digest()
        block = block.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    # -- keys and signed action tokens ---------------------------------------------------------
    def _load_key(self) -> bytes:
        path = Path(self.config.auth.secret_file).expanduser() if self.config.auth.secret_file else (
            self.config.root / "secret.key")
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            key = secrets.token_bytes(32)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key)
            try:
                os.link(tmp, path)  # first writer wins if two servers start at once
            except FileExistsError:
                pass
            os.unlink(tmp)
            key = path.read_bytes()
        if len(key) < 16:
            raise ValueError(f"{path}: secret key is shorter than 16 bytes")
        return key

    def _mac(self, *fields: str) -> str:
        # Copying a keyed HMAC skips the key schedule: batch answers sign one token per object.
        h = self._hmac.copy()
        h.update("\0".join(fields).encode("utf-8"))
        return base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode("ascii")

    def sign_action(self, principal: Principal, namespace: str, oid: str, operation: str,
                    expires_at: int) -> str:
        """A token granting `operation` ("upload"|"download"|"verify") on one object until `expires_at`."""
        user = base64.urlsafe_b64encode((principal.name or "").encode("utf-8")).rstrip(b"=").decode("ascii")
        mac = self._mac(namespace, oid, operation, str(expires_at), user)
        return f"{SIGNED_PREFIX}{expires_at}.{user}.{mac}"

    def action_signer(self, principal: Principal, namespace: str, operation: str, expires_at: int
                      ) -> Callable[[str], str]:
        """sign_action() for many oids at once (a batch answer): `signer(oid) -> token`.

        The parts shared by every token are encoded and hashed once; the tokens are identical to
        sign_action()'s.
        """
        user = base64.urlsafe_b64encode((principal.name or "").encode("utf-8")).rstrip(b"=").decode("ascii")
        # HMAC spelled out (RFC 2104) on hashlib objects: all C calls per token, no hmac-module
        # wrapper objects. The keyed inner and outer states are copied, never re-keyed.
        inner = self._inner.copy()
        inner.update(f"{namespace}\0".encode())
        tail = f"\0{operation}\0{expires_at}\0{user}".encode()
        prefix = f"{SIGNED_PREFIX}{expires_at}.{user}."
        outer_base = self._outer
        b64 = base64.urlsafe_b64encode

        def sign(oid: str) -> str:
            h = inner.copy()
            h.update(oid.encode("ascii") + tail)
            o = outer_base.copy()
            o.update(h.digest())
            return prefix + b64(o.digest()).rstrip(b"=").decode("ascii")

        return sign

    def sign_repo_token(self, user: str, namespace: str, operation: str, expires_at: int) -> str:
        """A token for the Git LFS API of `namespace`, `operation` ("download": read, "upload":
        read and write) for `user`, until `expires_at` (what `git-lfs-authenticate` hands out)."""
        if operation not in _REPO_TOKEN_OPERATIONS:
            raise ValueError(f"operation must be upload or download, not {operation!r}")
        user_b64 = base64.urlsafe_b64encode(user.encode("utf-8")).rstrip(b"=").decode("ascii")
        mac = self._mac(_REPO_TOKEN_DOMAIN, namespace, operation, str(expires_at), user_b64)
        return f"{REPO_TOKEN_PREFIX}{operation}.{expires_at}.{user_b64}.{mac}"

    def sign_bundle_url(self, key: str, expires_at: int) -> str:
        """The signature of a clone bundle URL: lets whoever was handed the manifest (a reader of
        the repository) GET bundle `key` until `expires_at`, without credentials."""
        return self._mac(_BUNDLE_URL_DOMAIN, key, str(expires_at))

    def bundle_url_valid(self, key: str, expires_at: str, signature: str) -> bool:
        if not _EXPIRY.fullmatch(expires_at) or int(expires_at) < time.time():
            return False
        return hmac.compare_digest(signature, self.sign_bundle_url(key, int(expires_at)))

    def _repo_token(self, token: str, lfs_repo: str | None) -> Principal:
        if lfs_repo is None:
            raise Unauthorized("a git-lfs-authenticate token is only valid for the Git LFS API")
        parts = token[len(REPO_TOKEN_PREFIX):].split(".")
        if len(parts) != 4 or parts[0] not in _REPO_TOKEN_OPERATIONS or not _EXPIRY.fullmatch(parts[1]):
            raise Unauthorized("invalid repository token")
        operation, expires_at, user_b64, mac = parts
        if not hmac.compare_digest(mac, self._mac(_REPO_TOKEN_DOMAIN, lfs_repo, operation, expires_at, user_b64)):
            raise Unauthorized(f"this token is not valid for {lfs_repo}")
        if int(expires_at) < time.time():
            raise Unauthorized("token expired; git-lfs asks for a new one (git-lfs-authenticate)")
        try:
            user = base64.urlsafe_b64decode(user_b64 + "=" * (-len(user_b64) % 4)).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("invalid repository token")
        if not user:
            raise Unauthorized("invalid repository token")
        return Principal(user, "repo-token", (lfs_repo, "", operation))

    def _check_signed(self, token: str) -> tuple[int, str, str] | None:
        """Split a signed token into (expires_at, user, mac); None when it is not well formed."""
        parts = token[len(SIGNED_PREFIX):].split(".")
        # ASCII digits only, and few of them: str.isdigit() also takes "²", which int() refuses
        if len(parts) != 3 or not _EXPIRY.fullmatch(parts[0]):
            return None
        return int(parts[0]), parts[1], parts[2]

    def signed_grants(self, principal: Principal, namespace: str, oid: str, operation: str) -> bool:
        """Whether a principal authenticated by a signed token may do this exact operation."""
        return principal.via == "signed" and principal.scope == (namespace, oid, operation)

    # -- authentication -------------------------------------------------------------------------
    async def authenticate(self, headers: Mapping[str, str], scope_hint: tuple[str, str, str] | None = None,
                           *, lfs_repo: str | None = None) -> Principal:
        """Who sent these headers. Raises Unauthorized for bad credentials (never falls back to anonymous).

        `scope_hint` is the (namespace, oid, operation) the request is for; a signed token is only
        accepted when it was issued for exactly that. `lfs_repo` is the namespace of a Git LFS
        API request (None elsewhere): repository tokens are only accepted there, for that one.
        """
        value = headers.get("Authorization")
        if not value:
            return ANONYMOUS
        if not value.isascii():
            # Credentials are base64 or tokens; other bytes arrive surrogate-escaped and would
            # not even encode for hashing.
            raise Unauthorized("malformed Authorization header (credentials are ASCII)")
        scheme, _, cred = value.strip().partition(" ")
        scheme = scheme.lower()
        cred = cred.strip()
        if scheme == "basic":
            return await self._basic(cred)
        if scheme == "bearer":
            if cred.startswith(SIGNED_PREFIX):
                return self._signed(cred, scope_hint)
            if cred.startswith(REPO_TOKEN_PREFIX):
                return self._repo_token(cred, lfs_repo)
            user = self._token_user(cred)
            if user is None:
                raise Unauthorized("invalid token")
            return Principal(user, "bearer")
        raise Unauthorized(f"unsupported authorization scheme {scheme!r} (use Basic or Bearer)")

    def _signed(self, token: str, scope: tuple[str, str, str] | None) -> Principal:
        parsed = self._check_signed(token)
        if parsed is None or scope is None:
            raise Unauthorized("invalid action token")
        expires_at, user_b64, mac = parsed
        if not hmac.compare_digest(mac, self._mac(*scope, str(expires_at), user_b64)):
            raise Unauthorized("action token is not valid for this object")
        if expires_at < time.time():
            raise Unauthorized("action token expired; request a new one from the batch API")
        try:
            user = base64.urlsafe_b64decode(user_b64 + "=" * (-len(user_b64) % 4)).decode("utf-8") or None
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("invalid action token")
        return Principal(user, "signed", scope)

    def _token_user(self, token: str) -> str | None:
        self._tokens.refresh()
        return self._tokens.entries.get(hash_token(token))

    async def _basic(self, cred: str) -> Principal:
        try:
            decoded = base64.b64decode(cred, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("malformed Basic credentials")
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            raise Unauthorized("malformed Basic credentials")
        # A user's token also works as their password.
        token_user = self._token_user(password)
        if token_user is not None and token_user == user:
            return Principal(user, "basic")
        self._htpasswd.refresh()
        hashed = self._htpasswd.entries.get(user)
        if hashed is None:
            raise Unauthorized("unknown user or wrong password")
        cache_key = hashlib.sha256(f"{user}\0{password}\0{hashed}".encode()).digest()
        now = time.monotonic()
        hit = self._basic_cache.get(cache_key)
        if hit is not None and hit[1] > now:
            return Principal(user, "basic")
        from .aio import run_blocking  # lazily: hg over SSH runs without asyncio

        ok = await run_blocking(bcrypt.checkpw, password.encode("utf-8"), hashed.encode("ascii"))
        if not ok:
            raise Unauthorized("unknown user or wrong password")
        if len(self._basic_cache) >= self.CACHE_ENTRIES:
            self._basic_cache = {k: v for k, v in self._basic_cache.items() if v[1] > now}
            if len(self._basic_cache) >= self.CACHE_ENTRIES:
                # Still full of live entries (many users, or someone cycling passwords that
                # work): start over rather than grow, or rebuild the dict on every miss.
                self._basic_cache.clear()
        self._basic_cache[cache_key] = (user, now + self.CACHE_SECONDS)
        return Principal(user, "basic")

    # -- authorization --------------------------------------------------------------------------
    def _rule_for(self, repo: str) -> AccessRule | None:
        for regex, rule in self._rules:
            if regex.match(repo):
                return rule
        return None

    def permission(self, principal: Principal, repo: str) -> Permission:
        """The most this principal may do on this repository (or LFS namespace)."""
        rule = self._rule_for(repo)
        if rule is None:
            return self.authenticated if principal.authenticated else self.anonymous

        def listed(names: list[str]) -> bool:
            if "anonymous" in names:
                return True
            if not principal.authenticated:
                return False
            return "*" in names or principal.name in names

        if listed(rule.write):
            return Permission.WRITE
        if listed(rule.read):
            return Permission.READ
        return Permission.NONE

    def push_rights(self, principal: Principal, repo: str) -> PushRights:
        """What this principal may do beyond writing: publish, push to protected branches, move
        protected bookmarks (the matching rule's `publish` and `protect`)."""
        rule = self._rule_for(repo)
        if rule is None:
            return PushRights(principal.name, True, ())

        def listed(names: list[str]) -> bool:
            return "anonymous" in names or (principal.authenticated and ("*" in names or principal.name in names))

        protect = tuple(("branch" if p.branches else "bookmark", glob_to_regex(p.branches or p.bookmarks),
                         listed(p.push)) for p in rule.protect)
        return PushRights(principal.name, not rule.publish or listed(rule.publish), protect)

    def authorize(self, principal: Principal, repo: str, needed: Permission) -> None:
        """Raise Unauthorized (anonymous: ask for credentials) or Forbidden unless allowed."""
        if principal.via == "signed":
            # Signed action tokens were checked against their scope in authenticate(); they carry
            # no repository-wide rights.
            raise Forbidden("an action token only grants the object transfer it was issued for")
        if principal.via == "repo-token":
            assert principal.scope is not None
            namespace, _, operation = principal.scope
            granted = Permission.WRITE if operation == "upload" else Permission.READ
            if repo != namespace:
                raise Forbidden(f"this token is for {namespace}, not {repo}")
            if granted < needed:
                raise Forbidden(f"this token was issued for downloads from {repo}; "
                                "writing needs one issued for upload")
        if self.permission(principal, repo) >= needed:
            return
        what = "write to" if needed is Permission.WRITE else "read"
        if not principal.authenticated:
            raise Unauthorized(f"authentication required to {what} {repo}")
        raise Forbidden(f"user {principal.name} may not {what} {repo}")

    async def require(self, headers: Mapping[str, str], repo: str, needed: Permission, *, lfs: bool = False
                      ) -> Principal:
        """authenticate() then authorize(); the usual call of a front end (`lfs`: a Git LFS API
        request, where repository tokens are accepted)."""
        principal = await self.authenticate(headers, lfs_repo=repo if lfs else None)
        self.authorize(principal, repo, needed)
        return principal

    def describe(self) -> list[str]:
        """Who may write (and read), for the start-up banner: the two default levels and each rule."""
        words = {Permission.NONE: "do nothing", Permission.READ: "read", Permission.WRITE: "read and write"}

        def who(names: list[str]) -> str:
            if "anonymous" in names:
                return "everyone"
            if "*" in names:
                return "any authenticated user"
            return ", ".join(dict.fromkeys(names)) or "nobody"

        lines = [f"access: anonymous clients may {words[self.anonymous]} "
                 f"(auth.anonymous = \"{self.config.auth.anonymous}\"), "
                 f"authenticated users may {words[self.authenticated]} (auth.authenticated = "
                 f"\"{self.config.auth.authenticated}\")"
                 + (", where no rule matches" if self._rules else "")]
        for _, rule in self._rules:
            lines.append(f"access: rule {rule.repos!r}: write {who(rule.write)}; read {who(rule.read + rule.write)}")
        if self.anonymous is Permission.WRITE:
            writers = "everyone, without credentials"
        elif self.authenticated is Permission.WRITE:
            writers = "every authenticated user" + (" (except where a rule says otherwise)" if self._rules else "")
        else:
            ruled = [f"{who(r.write)} on {r.repos}" for _, r in self._rules if r.write]
            writers = "; ".join(ruled) if ruled else (
                "nobody (set auth.authenticated = \"write\" to let users push)")
        lines.append(f"access: who may write: {writers}")
        if not (self.config.auth.htpasswd or self.config.auth.tokens) and self.anonymous is not Permission.WRITE:
            lines.append("access: no users (set auth.htpasswd or auth.tokens to let people log in)")
        return lines

    def challenge(self) -> dict[str, str]:
        """Headers for a 401: Basic for hg and browsers, LFS-Authenticate for git-lfs."""
        value = f'Basic realm="{self.realm}", charset="UTF-8"'
        return {"WWW-Authenticate": value, "LFS-Authenticate": value}
