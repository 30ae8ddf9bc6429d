"""Typed configuration: dataclasses loaded from TOML, overridden by flags, then by LFSSERVE_* env vars.

Precedence (lowest first): built-in defaults, the TOML file, command-line flags, environment
variables. Environment variables win so that a container image's baked-in config can be adjusted
with `docker run -e`.

Every option is a field below and appears, commented, in config.example.toml. Validation happens
once, at start-up, and a bad value raises ConfigError naming the key (`server.port: ...`).

Environment variables are `LFSSERVE_<SECTION>_<KEY>` in upper case (LFSSERVE_SERVER_PORT,
LFSSERVE_AUTH_ANONYMOUS); the most common ones also have short forms: LFSSERVE_HOST,
LFSSERVE_PORT, LFSSERVE_ROOT, LFSSERVE_ANONYMOUS, LFSSERVE_BASE_URL. Lists in env vars are
comma-separated. LFSSERVE_CONFIG names the TOML file when --config is not given (cli.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AccessRule",
    "AuthConfig",
    "ClonebundlesConfig",
    "Config",
    "ConfigError",
    "HgConfig",
    "HooksConfig",
    "LfsConfig",
    "LimitsConfig",
    "LogConfig",
    "ProtectRule",
    "ServerConfig",
    "SshConfig",
    "StorageConfig",
    "WebhookTarget",
    "WebhooksConfig",
    "load_config",
]


# The Mercurial hooks lfsserve runs on push, and the webhook events it sends.
HOOK_TYPES = ("pretxnchangegroup", "pretxnclose", "changegroup", "incoming", "txnclose", "prepushkey", "pushkey")
WEBHOOK_EVENTS = ("push", "bookmark", "lfs")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names the key."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # Data directory: repositories live in <root>/repos, LFS objects in <root>/lfs.
    root: str = "./data"
    # External URL of this server, e.g. "https://hg.example.com/hg". When empty, URLs are built from
    # the request (Host, or X-Forwarded-* / Forwarded from a trusted proxy).
    base_url: str = ""
    # Peers (IP addresses or CIDR networks) whose X-Forwarded-* / Forwarded headers are believed.
    trusted_proxies: list[str] = field(default_factory=list)
    # Threads for blocking work (file I/O, hashing, revlog parsing, compression). 0 = automatic.
    executor_threads: int = 0
    # Seconds that in-flight requests get to finish after SIGTERM before the server exits.
    shutdown_grace: float = 30.0


@dataclass
class AccessRule:
    # Glob over repository / LFS namespace paths ("*" matches within one path segment, "**" across).
    repos: str = "**"
    # Who may read and write: user names, "*" for any authenticated user, "anonymous" for everyone.
    read: list[str] = field(default_factory=list)
    write: list[str] = field(default_factory=list)
    # Who may make changesets public (push to a publishing repository, or move the phase with
    # the `phases` pushkey): user names or "*". Empty: everyone who may write.
    publish: list[str] = field(default_factory=list)
    # Branch and bookmark protection: the first entry whose glob matches a named branch pushed to
    # (or a bookmark moved) says who may do it.
    protect: list[ProtectRule] = field(default_factory=list)


@dataclass
class ProtectRule:
    # Glob over named branches ("default", "release-*"), or over bookmarks; give one of the two.
    branches: str = ""
    bookmarks: str = ""
    # Who may push changesets to those branches / move those bookmarks: user names or "*".
    push: list[str] = field(default_factory=list)


@dataclass
class AuthConfig:
    # What unauthenticated clients may do everywhere no access rule says otherwise: none|read|write.
    anonymous: str = "read"
    # What authenticated users (htpasswd, tokens) may do everywhere no access rule says otherwise:
    # none|read|write. "write" is the one setting that lets every user push everywhere.
    authenticated: str = "read"
    # htpasswd file with bcrypt entries ("user:$2y$..."), e.g. made by `lfsserve adduser`.
    htpasswd: str = ""
    # Token file: one "user:sha256-hex-of-token" line each, e.g. made by `lfsserve token`.
    tokens: str = ""
    realm: str = "lfsserve"
    # Key for the short-lived signed tokens in LFS action hrefs. Empty: a random key kept in
    # <root>/secret.key (created with mode 0600 on first start).
    secret_file: str = ""
    # Per-repository rules; the first rule whose glob matches decides. No match: authenticated
    # users get `authenticated`, anonymous clients get `anonymous`.
    rules: list[AccessRule] = field(default_factory=list)


@dataclass
class LfsConfig:
    # Most objects one batch request may name (hg sends every blob of an update in one batch).
    max_batch_objects: int = 10000
    # Largest object accepted, in bytes; 0 = unlimited. Larger uploads get 413.
    max_object_size: int = 0
    # Lifetime in seconds of the signed action hrefs handed out by the batch API.
    action_expiry: int = 3600
    # Refuse an hg push whose lfs pointers name blobs this server does not have.
    require_pushed_blobs: bool = True
    # Serve the Git LFS file-locking API.
    locking: bool = True
    # Objects whose files changed on disk since they were last verified are re-hashed before a
    # batch answer names them, up to this many bytes per request; beyond it they are verified
    # while being downloaded (a corrupt one is cut off before its last byte).
    batch_rehash_bytes: int = 256 * 1024 * 1024
    # fsync each uploaded object and its directory before acknowledging the upload. Off trades
    # durability on power loss for speed on storage where fsync is slow; objects are then
    # re-verified before they are first served.
    fsync: bool = True


@dataclass
class StorageConfig:
    # Where LFS objects are kept: "local" (files under <root>/lfs) or "s3" (an S3-compatible
    # bucket; the options below). Namespace grants and locks stay in <root>/lfs either way.
    backend: str = "local"
    bucket: str = ""
    # Key prefix inside the bucket ("" or e.g. "lfsserve/"): objects go to <prefix>lfs/objects/.
    prefix: str = ""
    # "" = AWS; else the S3-compatible service's URL (MinIO, Ceph RGW, R2...).
    endpoint_url: str = ""
    region: str = ""
    addressing_style: str = "auto"  # auto | path | virtual
    # "proxy": object bytes pass through lfsserve; "direct": batch answers hand out presigned URLs.
    transfer: str = "proxy"
    # Lifetime in seconds of the presigned URLs handed out in direct mode.
    presign_expires: int = 3600
    # Seconds S3 may stay silent (per read, not per object) before a request to it is given up
    # (tried twice, then the client gets 503 with Retry-After).
    read_timeout: float = 15.0
    # Only if the standard AWS chain (environment, ~/.aws, instance role) must not be used.
    access_key_id: str = ""
    secret_access_key: str = ""


STORAGE_BACKENDS = ("local", "s3")


@dataclass
class HgConfig:
    # Where repositories live; empty = <root>/repos.
    repos_dir: str = ""
    # Let a push to a repository that does not exist create it (needs write permission there).
    create_on_push: bool = False
    # A publishing server makes pushed changesets public (a repository's `.hg/hgrc` may say
    # otherwise with `[phases] publish`).
    publishing: bool = True
    # Read each repository's own `.hg/hgrc` (`[phases]`, `[experimental] evolution`, `[web]`,
    # `[hooks]`, `[extensions] topic`), as hg serve does; false: every repository has the defaults.
    repo_hgrc: bool = True
    # Default of Mercurial's `experimental.evolution` for every repository: [] (off), ["all"], or
    # options among createmarkers, allowunstable, allowdivergence, exchange.
    evolution: list[str] = field(default_factory=list)
    # Let a repository's hgrc turn changeset evolution on or off for itself.
    repo_evolution: bool = True
    # Run the hooks a repository's own hgrc defines (`[hooks]`); off: only the server's own.
    repo_hooks: bool = False
    # Compression engines for mercurial-0.2 responses, in the server's order of preference.
    compression: list[str] = field(default_factory=lambda: ["zstd", "zlib"])
    # Serve the experimental wire protocol v2 (exp-http-v2-0003).
    wire_v2: bool = True
    # Accept bundle1 (pre-bundle2) clients.
    bundle1: bool = True
    # Allow `hg clone --stream`.
    stream_clone: bool = True
    # Advertise `httppostargs` (command arguments in POST bodies, not headers) to the clients that
    # cannot get a 401 later: hg cannot resend such a body with credentials (wire/v1.py).
    httppostargs: bool = True
    # zstd level for compressed pull answers (1 fastest .. 22 smallest; hg serve uses 3).
    zstd_level: int = 3
    # Seconds a push waits for the repository's store lock (held by another writer) before failing.
    lock_timeout: float = 30.0
    # Largest push (the bundle an `hg push` uploads), in bytes; 0 = unlimited. Larger: HTTP 413.
    max_push_size: int = 0
    # Largest push once decompressed (a bundle2 with Compression=ZS/GZ/BZ, a bundle1 GZ/BZ), in
    # bytes; 0 = unlimited. A tiny compressed bundle can unpack to gigabytes: this bounds that.
    max_unpacked_push_size: int = 0
    # Largest single revision (one changegroup chunk: a full text or a delta, decompressed) a push
    # may carry, in bytes; 0 = up to the format's 2 GiB. The server holds one such revision in
    # memory (two to three times its size, measured) while it checks and stores it.
    max_revision_size: int = 256 * 1024 * 1024
    # Largest file a pushed revision may keep in plain history, in bytes; 0 = no limit. Larger
    # files must be stored with LFS: a push adding one is refused with a message saying how.
    max_file_size: int = 0


@dataclass
class ClonebundlesConfig:
    # Build clone bundles of a repository in the background after pushes to it (debounced). Off:
    # only `lfsserve clonebundles build REPO` builds them; built bundles are advertised either way.
    auto_generate: bool = False
    # Bundle specifications to build, in the order the manifest lists them (a client without
    # ui.clonebundleprefers takes the first it can use): "none-v2;stream=v2" (the store files:
    # fastest to apply; clients lacking a store requirement skip it; not built while the
    # repository has secret changesets or stream clones are off), "zstd-v2" (a changegroup, any
    # client), "gzip-v2" and "none-v2" (changegroups).
    formats: list[str] = field(default_factory=lambda: ["none-v2;stream=v2", "zstd-v2"])
    # Seconds after the last push before a build starts (pushes in between restart the wait).
    delay: float = 30.0
    # Rebuild only when at least this many served changesets are missing from the newest bundle.
    min_new_changesets: int = 1
    # Bundles kept per format (the newest is advertised; older ones finish in-flight downloads).
    keep: int = 2
    # Lifetime in seconds of the signed bundle URLs the manifest hands out over HTTP.
    url_expiry: int = 3600
    # Advertise bundles over HTTP as inline `peer-bundle-cache://` entries (fetched through the
    # wire protocol) rather than URLs. SSH always advertises inline entries.
    inline: bool = False
    # Wire protocol v2: advertise this server as a content redirect target and answer cacheable
    # commands (changesetdata, manifestdata, filedata, filesdata, rawstorefiledata) of clients that
    # accept it with the location of the answer, kept in <root>/clonebundles, instead of the bytes.
    v2_redirects: bool = False


CLONEBUNDLE_FORMATS = ("zstd-v2", "gzip-v2", "none-v2", "none-v2;stream=v2")


@dataclass
class DatabaseConfig:
    # Where LFS metadata (which repository sees which object, file locks) lives. Empty: a SQLite
    # file under <root>/lfs (one server). "postgresql://user:password@host:5432/db": shared by
    # several lfsserve instances (schema created or migrated on start-up).
    url: str = ""


@dataclass
class LogConfig:
    # debug|info|warning|error
    level: str = "info"
    # Access log format: combined|json|off
    access_format: str = "combined"
    # Diagnostic log (stderr, with tracebacks) format: text|json
    format: str = "text"


@dataclass
class LimitsConfig:
    # Longest a request may take before the server gives up on it, in seconds; 0 = no limit.
    request_timeout: float = 0.0
    # Seconds a client may send nothing while the server waits for its request: an unfinished
    # body gets 408, unfinished headers (and idle keep-alive connections) are closed. An idle
    # timeout, not a total: an upload of any size passes while bytes keep coming. 0 = wait forever.
    idle_timeout: float = 60.0
    # Concurrent requests one client address may have in flight; 0 = unlimited. Over: 429.
    per_client_concurrency: int = 0


@dataclass
class SshConfig:
    # authorized_keys file that `lfsserve authorized-keys add|remove` writes and `lfsserve
    # authorized-keys lookup` (an sshd AuthorizedKeysCommand) reads. Empty: <root>/ssh/authorized_keys.
    authorized_keys: str = ""
    # The program the forced command of each key runs (`<command> ssh --config ... --user ...`).
    # sshd runs it with a minimal PATH: an absolute path (e.g. a virtualenv's bin/lfsserve) is safer.
    command: str = "lfsserve"
    # Offer git-lfs's pure-SSH transfer protocol (git-lfs-transfer). Off: git-lfs falls back to
    # git-lfs-authenticate and transfers objects over HTTP(S) at server.base_url.
    lfs_transfer: bool = True
    # A running `lfsserve serve` takes over the SSH sessions of forced commands that name the same
    # configuration file and data directory: they pass their stdin/stdout/stderr over a Unix socket
    # and the server serves the session, with its warm caches (no start-up per hg command).
    # false: every forced command serves its session itself.
    handoff: bool = True
    # The server's Unix socket for that (mode 0600: only the user running the server and root may
    # connect). Empty: <root>/run/ssh.sock. Give a local path when the data directory is shared
    # between hosts (a socket does not cross machines; forced commands then serve themselves).
    handoff_socket: str = ""
    # Sessions the server runs at once; the forced commands of more serve their sessions themselves.
    handoff_sessions: int = 32


@dataclass
class WebConfig:
    # Defaults for every repository's web settings; a repository's own `.hg/hgrc` `[web]` section
    # (description, contact, name, hidden, allow_archive, labels) wins, as in hgweb.
    description: str = ""
    contact: str = ""
    # Archive types offered (gz, bz2, zip); empty: none, as hgweb's default.
    allow_archive: list[str] = field(default_factory=list)
    # What a repository's SSH clone URL starts with, e.g. "ssh://hg@hg.example.com" (the summary
    # page then shows `hg clone ssh://hg@hg.example.com/<repo>`). Empty: no SSH URL shown.
    ssh_clone_base: str = ""
    # MiB of finished archives kept on disk (<root>/cache/web-archives) and sent again when the same
    # archive is asked for; least recently used first out. 0: every archive is made anew.
    archive_cache_mb: int = 256


@dataclass
class HooksConfig:
    # Mercurial-style hooks run on push (external commands, as hg runs them): `name[.suffix]` =
    # shell command, e.g. "pretxnchangegroup.check" = "/srv/hooks/check-msg", plus optional
    # "priority.<name>" = "<int>". Apply to every repository (a repository's own .hg/hgrc [hooks]
    # run too when hg.repo_hooks is on).
    commands: dict[str, str] = field(default_factory=dict)
    # Seconds a hook may run before it is killed (a pretxn* hook then aborts the push).
    timeout: float = 300.0


@dataclass
class WebhookTarget:
    url: str = ""
    # Glob over repository / LFS namespace paths whose events go to this URL ("**": all).
    repos: str = "**"
    # HMAC-SHA256 key: the body's signature is sent as `X-Lfsserve-Signature: sha256=<hex>`.
    secret: str = ""
    # Which events: push, bookmark, lfs.
    events: list[str] = field(default_factory=lambda: ["push", "bookmark", "lfs"])


@dataclass
class WebhooksConfig:
    targets: list[WebhookTarget] = field(default_factory=list)
    # Seconds one delivery attempt may take.
    timeout: float = 10.0
    # Seconds before the first retry of a failed delivery; each retry waits twice as long.
    retry_base: float = 10.0
    # Attempts before a delivery is given up (then `lfsserve webhooks redeliver` sends it again).
    max_attempts: int = 12
    # Days the delivery log keeps delivered and given-up deliveries; 0: forever.
    keep_days: int = 30


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    lfs: LfsConfig = field(default_factory=LfsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    hg: HgConfig = field(default_factory=HgConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    log: LogConfig = field(default_factory=LogConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    ssh: SshConfig = field(default_factory=SshConfig)
    web: WebConfig = field(default_factory=WebConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    # The TOML file this configuration was read from (resolved), "" for none; not an option.
    source = ""
    clonebundles: ClonebundlesConfig = field(default_factory=ClonebundlesConfig)

    # -- derived paths ---------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.server.root).expanduser().resolve()

    @property
    def repos_dir(self) -> Path:
        if self.hg.repos_dir:
            return Path(self.hg.repos_dir).expanduser().resolve()
        return self.root / "repos"

    @property
    def lfs_dir(self) -> Path:
        return self.root / "lfs"

    @property
    def clonebundles_dir(self) -> Path:
        """Where generated clone bundles live (the local bundle store), beside the LFS objects."""
        return self.root / "clonebundles"

    @property
    def handoff_socket(self) -> Path:
        if self.ssh.handoff_socket:
            return Path(self.ssh.handoff_socket).expanduser().resolve()
        return self.root / "run" / "ssh.sock"

    @property
    def authorized_keys(self) -> Path:
        if self.ssh.authorized_keys:
            return Path(self.ssh.authorized_keys).expanduser().resolve()
        return self.root / "ssh" / "authorized_keys"

    def validate(self) -> None:
        """Check values that types alone do not constrain; raise ConfigError naming the key."""
        s = self.server
        if not 0 <= s.port <= 65535:
            raise ConfigError(f"server.port: must be 0-65535, got {s.port}")
        if s.base_url and not s.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"server.base_url: must start with http:// or https://, got {s.base_url!r}")
        for i, proxy in enumerate(s.trusted_proxies):
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ConfigError(f"server.trusted_proxies[{i}]: not an IP address or network: {proxy!r}")
        if s.executor_threads < 0:
            raise ConfigError("server.executor_threads: must be >= 0")
        if s.shutdown_grace < 0:
            raise ConfigError("server.shutdown_grace: must be >= 0")
        for name in ("anonymous", "authenticated"):
            level = getattr(self.auth, name)
            if level not in ("none", "read", "write"):
                raise ConfigError(f"auth.{name}: must be none, read or write, got {level!r}")
        for name in ("htpasswd", "tokens"):
            path = getattr(self.auth, name)
            if path and not Path(path).expanduser().is_file():
                raise ConfigError(f"auth.{name}: file not found: {path}")
        for i, rule in enumerate(self.auth.rules):
            if not rule.repos:
                raise ConfigError(f"auth.rules[{i}].repos: must not be empty")
            for j, prot in enumerate(rule.protect):
                if bool(prot.branches) == bool(prot.bookmarks):
                    raise ConfigError(f"auth.rules[{i}].protect[{j}]: give one of branches or bookmarks")
        for name, cmd in self.hooks.commands.items():
            kind = name.split(".", 1)[0]
            if kind == "priority":
                try:
                    int(cmd)
                except ValueError:
                    raise ConfigError(f"hooks.commands.{name}: a priority must be an integer, got {cmd!r}")
            elif kind not in HOOK_TYPES:
                raise ConfigError(f"hooks.commands.{name}: unknown hook type {kind!r} "
                                  f"(lfsserve runs {', '.join(HOOK_TYPES)})")
            elif cmd.strip().startswith("python:"):
                raise ConfigError(f"hooks.commands.{name}: in-process python: hooks are not supported "
                                  "by lfsserve; run an external command instead")
        if self.hooks.timeout <= 0:
            raise ConfigError("hooks.timeout: must be > 0")
        for i, target in enumerate(self.webhooks.targets):
            if not target.url.startswith(("http://", "https://")):
                raise ConfigError(f"webhooks.targets[{i}].url: must start with http:// or https://, "
                                  f"got {target.url!r}")
            for ev in target.events:
                if ev not in WEBHOOK_EVENTS:
                    raise ConfigError(f"webhooks.targets[{i}].events: unknown event {ev!r} "
                                      f"({', '.join(WEBHOOK_EVENTS)})")
        if self.webhooks.timeout <= 0 or self.webhooks.retry_base <= 0:
            raise ConfigError("webhooks.timeout and webhooks.retry_base: must be > 0")
        if self.webhooks.max_attempts < 1:
            raise ConfigError("webhooks.max_attempts: must be >= 1")
        if self.webhooks.keep_days < 0:
            raise ConfigError("webhooks.keep_days: must be >= 0")
        if self.lfs.max_batch_objects < 1:
            raise ConfigError("lfs.max_batch_objects: must be >= 1")
        if self.lfs.max_object_size < 0:
            raise ConfigError("lfs.max_object_size: must be >= 0")
        if self.lfs.batch_rehash_bytes < 0:
            raise ConfigError("lfs.batch_rehash_bytes: must be >= 0")
        if self.lfs.action_expiry < 10:
            raise ConfigError("lfs.action_expiry: must be at least 10 seconds")
        if self.storage.backend not in STORAGE_BACKENDS:
            raise ConfigError(f"storage.backend: must be one of {', '.join(STORAGE_BACKENDS)}, "
                              f"got {self.storage.backend!r}")
        st = self.storage
        if st.backend == "s3" and not st.bucket:
            raise ConfigError("storage.bucket: required with backend = \"s3\"")
        if st.addressing_style not in ("auto", "path", "virtual"):
            raise ConfigError(f"storage.addressing_style: must be auto, path or virtual, got {st.addressing_style!r}")
        if st.transfer not in ("proxy", "direct"):
            raise ConfigError(f"storage.transfer: must be proxy or direct, got {st.transfer!r}")
        if not 10 <= st.presign_expires <= 7 * 86400:
            raise ConfigError("storage.presign_expires: must be 10 s to 7 days (S3's limit)")
        if not 0 < st.read_timeout <= 3600:
            raise ConfigError("storage.read_timeout: must be more than 0 and at most 3600 seconds")
        if st.prefix and not st.prefix.endswith("/"):
            raise ConfigError(f"storage.prefix: must end with \"/\", got {st.prefix!r}")
        if bool(st.access_key_id) != bool(st.secret_access_key):
            raise ConfigError("storage.access_key_id and storage.secret_access_key: give both or neither")
        for i, engine in enumerate(self.hg.compression):
            if engine not in ("zstd", "zlib", "none"):
                raise ConfigError(f"hg.compression[{i}]: unknown engine {engine!r} (zstd, zlib, none)")
        if not 1 <= self.hg.zstd_level <= 22:
            raise ConfigError(f"hg.zstd_level: must be 1-22, got {self.hg.zstd_level}")
        if self.hg.lock_timeout < 0:
            raise ConfigError("hg.lock_timeout: must be >= 0")
        for i, word in enumerate(self.hg.evolution):
            if word not in ("all", "createmarkers", "allowunstable", "allowdivergence", "exchange"):
                raise ConfigError(f"hg.evolution[{i}]: unknown option {word!r} (all, createmarkers, "
                                  "allowunstable, allowdivergence, exchange)")
        for name in ("max_push_size", "max_unpacked_push_size", "max_revision_size", "max_file_size"):
            if getattr(self.hg, name) < 0:
                raise ConfigError(f"hg.{name}: must be >= 0")
        if self.log.level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log.level: must be debug, info, warning or error, got {self.log.level!r}")
        if self.log.access_format not in ("combined", "json", "off"):
            raise ConfigError(f"log.access_format: must be combined, json or off, got {self.log.access_format!r}")
        if self.log.format not in ("text", "json"):
            raise ConfigError(f"log.format: must be text or json, got {self.log.format!r}")
        if self.limits.request_timeout < 0:
            raise ConfigError("limits.request_timeout: must be >= 0")
        if self.limits.idle_timeout < 0:
            raise ConfigError("limits.idle_timeout: must be >= 0")
        if self.limits.per_client_concurrency < 0:
            raise ConfigError("limits.per_client_concurrency: must be >= 0")
        cb = self.clonebundles
        for i, fmt in enumerate(cb.formats):
            if fmt not in CLONEBUNDLE_FORMATS:
                raise ConfigError(f"clonebundles.formats[{i}]: unsupported bundle specification {fmt!r} "
                                  f"(one of {', '.join(CLONEBUNDLE_FORMATS)})")
        if cb.delay < 0:
            raise ConfigError("clonebundles.delay: must be >= 0")
        if cb.min_new_changesets < 1:
            raise ConfigError("clonebundles.min_new_changesets: must be >= 1")
        if cb.keep < 1:
            raise ConfigError("clonebundles.keep: must be >= 1")
        if cb.url_expiry < 60:
            raise ConfigError("clonebundles.url_expiry: must be at least 60 seconds")
        if self.ssh.handoff_sessions < 1:
            raise ConfigError("ssh.handoff_sessions: must be at least 1")
        if not self.ssh.command or any(c in self.ssh.command for c in '"\\\n\r'):
            raise ConfigError("ssh.command: must be a non-empty program path without quotes, "
                              "backslashes or line breaks (it goes into authorized_keys lines)")
        if self.database.url and not self.database.url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("database.url: must be empty (SQLite) or start with postgresql://")


# Short environment variable names for the options containers set most often.
ENV_SHORTCUTS = {
    "LFSSERVE_HOST": ("server", "host"),
    "LFSSERVE_PORT": ("server", "port"),
    "LFSSERVE_ROOT": ("server", "root"),
    "LFSSERVE_BASE_URL": ("server", "base_url"),
    "LFSSERVE_ANONYMOUS": ("auth", "anonymous"),
}


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a TOML value (or an env-var string) to the annotated type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, value_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return {str(k): _convert(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return _build(tp, value, key)
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a programming error


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else k
            raise ConfigError(f"{where}: unknown option")
    kwargs = {}
    for k, v in data.items():
        where = f"{prefix}.{k}" if prefix else k
        kwargs[k] = _convert(v, hints[k], where)
    return cls(**kwargs)


def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _env_overrides(env: Mapping[str, str]) -> dict:
    sections = {f.name: f for f in dataclasses.fields(Config)}
    out: dict[str, dict[str, Any]] = {}
    for name, value in env.items():
        if not name.startswith("LFSSERVE_"):
            continue
        if name in ENV_SHORTCUTS:
            section, key = ENV_SHORTCUTS[name]
        else:
            rest = name[len("LFSSERVE_"):].lower()
            section, _, key = rest.partition("_")
            if section not in sections or not key:
                continue  # not a config variable (e.g. LFSSERVE_NO_SKIP used by the tests)
            section_cls = typing.get_type_hints(Config)[section]
            if key not in {f.name for f in dataclasses.fields(section_cls)}:
                raise ConfigError(f"{name}: no option {section}.{key}")
            if key == "rules":
                raise ConfigError(f"{name}: auth.rules can only be set in the TOML file")
            if typing.get_origin(typing.get_type_hints(section_cls)[key]) is list:
                out.setdefault(section, {})[key] = [v.strip() for v in value.split(",") if v.strip()]
                continue
        out.setdefault(section, {})[key] = value
    return out


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration: defaults < TOML file < `overrides` (flags) < environment."""
    data: dict = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}")
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}")
    if overrides:
        data = _merge(data, {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in overrides.items()})
    data = _merge(data, _env_overrides(os.environ if env is None else env))
    config = _build(Config, data, "")
    config.validate()
    config.source = os.path.realpath(path) if path is not None else ""
    return config
