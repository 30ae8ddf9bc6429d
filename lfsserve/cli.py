"""Command line: `lfsserve serve` and the admin commands.

Each subcommand is a function taking the parsed arguments and returning the exit status.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    from .config import Config

__all__ = ["main"]


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", default=os.environ.get("LFSSERVE_CONFIG") or None,
                   help="TOML configuration file (see config.example.toml; default $LFSSERVE_CONFIG)")
    p.add_argument("--root", metavar="DIR", help="data directory (default ./data)")


def _config_from(args: argparse.Namespace, **server_overrides) -> Config:
    from .config import load_config

    overrides = {"server": {"root": args.root, **server_overrides}}
    overrides["auth"] = {key: getattr(args, key, None) for key in ("anonymous", "authenticated", "htpasswd")}
    return load_config(args.config, overrides=overrides)


def _data_config(args: argparse.Namespace) -> Config | None:
    """The configuration of an admin command that reads existing data, or None (after saying why)
    when its data directory does not exist: run from the wrong place, it must not report an
    empty server, nor create one."""
    config = _config_from(args)
    if not config.root.is_dir():
        print(f"lfsserve: no data directory at {config.root} (give the server's --root, or "
              "server.root in --config / LFSSERVE_ROOT)", file=sys.stderr)
        return None
    print(f"data directory: {config.root}", file=sys.stderr)
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import run

    config = _config_from(args, host=args.host, port=args.port, base_url=args.base_url)
    return run(config)


_USER = re.compile(r"[A-Za-z0-9._@+-]{1,64}\Z")
_NO_TERMINAL = ("lfsserve: no terminal to ask for the password; give it on standard input with "
                "--password-stdin, e.g.\n  printf '%s\\n' \"$PASSWORD\" | lfsserve adduser --htpasswd {file} "
                "--password-stdin {user}")


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise SystemExit(_NO_TERMINAL.format(user=args.user, file=args.htpasswd))
        try:
            password = getpass.getpass(f"password for {args.user}: ")
            if password != getpass.getpass("again: "):
                raise SystemExit("lfsserve: passwords do not match")
        except EOFError:
            raise SystemExit(_NO_TERMINAL.format(user=args.user, file=args.htpasswd)) from None
    if not password:
        raise SystemExit("lfsserve: empty password")
    return password


def _rewrite_entries(path: Path, user: str, new_line: str | None, *, keep_user: bool = False) -> None:
    """Replace (or add, or with None remove) `user`'s line in a `user:...` file, atomically (mode
    0600). With keep_user, `new_line` is added and the user's other lines stay (tokens)."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    kept = lines if keep_user else [ln for ln in lines if ln.partition(":")[0] != user]
    if new_line is not None:
        kept.append(new_line)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("".join(ln + "\n" for ln in kept))
    os.replace(tmp, path)


def cmd_adduser(args: argparse.Namespace) -> int:
    import bcrypt

    if not _USER.match(args.user):
        print(f"lfsserve: invalid user name {args.user!r}", file=sys.stderr)
        return 2
    path = Path(args.htpasswd)
    if args.delete:
        _rewrite_entries(path, args.user, None)
        print(f"removed {args.user} from {path}")
        return 0
    hashed = bcrypt.hashpw(_read_password(args).encode("utf-8"), bcrypt.gensalt(rounds=args.rounds))
    _rewrite_entries(path, args.user, f"{args.user}:{hashed.decode('ascii')}")
    print(f"set password of {args.user} in {path}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from .auth import hash_token

    if not _USER.match(args.user):
        print(f"lfsserve: invalid user name {args.user!r}", file=sys.stderr)
        return 2
    path = Path(args.tokens)
    if args.revoke:
        _rewrite_entries(path, args.user, None)
        print(f"revoked every token of {args.user} in {path}")
        return 0
    token = secrets.token_urlsafe(32)
    _rewrite_entries(path, args.user, f"{args.user}:{hash_token(token)}", keep_user=True)
    # Only the hash is stored: this is the one time the token can be seen.
    print(token)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from .hg.error import HgError
    from .hg.repository import Repository
    from .repos import RepoPathError, RepoRegistry

    config = _config_from(args)
    registry = RepoRegistry(config.repos_dir)
    try:
        path = registry.path_of(args.name)
        repo = Repository.init(path, lfs=args.lfs)
    except (RepoPathError, HgError) as exc:
        print(f"lfsserve: {exc}", file=sys.stderr)
        return 1
    print(f"created repository {args.name} in {repo.root}" + (" (lfs)" if args.lfs else ""))
    return 0


class _ProgressLine:
    """A one-line progress display on stderr, only when it is a terminal."""

    def __init__(self, label: str):
        self.label = label
        self.active = sys.stderr.isatty()
        self.last = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.active:
            return
        width = 30
        filled = width * done // total if total else width
        line = f"\r{self.label}: {stage:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        if line != self.last:
            sys.stderr.write(line)
            sys.stderr.flush()
            self.last = line

    def clear(self) -> None:
        if self.active and self.last:
            sys.stderr.write("\r" + " " * len(self.last) + "\r")
            sys.stderr.flush()


def cmd_verify(args: argparse.Namespace) -> int:
    from .hg.error import HgError
    from .hg.verify import verify_with_stats
    from .repos import RepoRegistry, engine_repo

    config = _data_config(args)
    if config is None:
        return 1
    registry = RepoRegistry(config.repos_dir)
    names = [] if args.blobs_only else args.repos or list(registry.names())
    check_blobs = not args.repos_only and not args.repos
    if not names and not check_blobs:
        print(f"lfsserve: no repositories under {config.repos_dir}", file=sys.stderr)
        return 1
    first_bad = None
    for name in names:
        progress = _ProgressLine(name)
        try:
            with registry.open(name) as repo:
                problems, stats = verify_with_stats(engine_repo(repo), progress)
        except HgError as exc:
            progress.clear()
            print(f"{name}: {exc}")
            first_bad = first_bad or f"{name}: {exc}"
            continue
        progress.clear()
        if problems:
            for problem in problems:
                print(f"{name}: {problem}")
            first_bad = first_bad or f"{name}: {problems[0]}"
        else:
            print(f"{name}: ok ({stats.changesets} changesets, {stats.manifests} manifests, "
                  f"{stats.files} files, {stats.revisions} revisions checked)")
    if check_blobs:
        # Then the LFS blob store: re-hash everything, move what does not match aside.
        import asyncio

        from .admin import verify_blobs

        res = asyncio.run(verify_blobs(config, quarantine=not args.no_quarantine, progress=_Bar()))
        print(f"checked {res.checked} LFS objects ({_size(res.bytes)})")
        for oid in res.corrupt:
            where = res.quarantined.get(oid)
            print(f"  corrupt: {oid}" + (f" (moved to {where})" if where else ""))
            first_bad = first_bad or f"LFS object {oid} is corrupt"
        if res.quarantined:
            print("clients that still have these files can upload them again (git lfs push --all, or hg push)")
    if first_bad:
        print(f"lfsserve: verify failed, first problem: {first_bad}", file=sys.stderr)
        return 1
    return 0


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class _Bar:
    """A tqdm progress bar on stderr when it is a terminal; silent otherwise (logs, cron)."""

    def __init__(self) -> None:
        self._bar = None

    def start(self, what: str, total: int | None, unit: str) -> None:
        if not sys.stderr.isatty():
            return
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=what, unit=unit, unit_scale=unit == "B",
                         unit_divisor=1024 if unit == "B" else 1000, leave=False, file=sys.stderr)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def done(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def cmd_repos(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from .admin import usage

    config = _data_config(args)
    if config is None:
        return 1
    rows = asyncio.run(usage(config, progress=_Bar()))
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], indent=2))
        return 0
    if not rows:
        print(f"no repositories in {config.repos_dir} (create one with `lfsserve init NAME`)")
        return 0
    names = [r.name if r.hg_bytes is not None else r.name + " (lfs only)" for r in rows]
    width = max(len("REPOSITORY"), *(len(n) for n in names))
    print(f"{'REPOSITORY':<{width}}  {'HG':>10}  {'LFS OBJECTS':>11}  {'LFS':>10}")
    for name, r in zip(names, rows, strict=True):
        print(f"{name:<{width}}  {_size(r.hg_bytes):>10}  {r.lfs_objects:>11}  {_size(r.lfs_bytes):>10}")
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    """The webhook delivery log (list, show one) and redelivery."""
    import datetime

    from .webhooks.store import WebhookQueue, queue_path

    config = _data_config(args)
    if config is None:
        return 1
    if not queue_path(config.root).exists():
        print("no webhook events yet (configure [[webhooks.targets]])")
        return 0 if args.action == "list" else 1
    queue = WebhookQueue(config.root)
    queue.start()
    try:
        if args.action == "redeliver":
            if not queue.redeliver_sync(args.id):
                print(f"lfsserve: no webhook delivery {args.id}", file=sys.stderr)
                return 1
            print(f"delivery {args.id} queued again; a running server sends it within seconds")
            return 0
        if args.action == "show":
            d = queue.get_sync(args.id)
            if d is None:
                print(f"lfsserve: no webhook delivery {args.id}", file=sys.stderr)
                return 1
            print(f"id {d.id}  event {d.event} ({d.event_id})  repo {d.repo}\nurl {d.url}\nstatus {d.status}, "
                  f"{d.attempts} attempt(s), last answer {d.last_status or '-'} {d.last_error}")
            print(d.payload.decode("utf-8", "replace"))
            return 0
        rows = queue.list_sync(args.limit, args.status)
        if not rows:
            print("no webhook deliveries")
            return 0
        print(f"{'ID':>6}  {'CREATED (UTC)':<19}  {'EVENT':<8}  {'STATUS':<9}  {'TRIES':>5}  {'LAST':<14}  REPO -> URL")
        for d in rows:
            when = datetime.datetime.fromtimestamp(d.created, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
            last = str(d.last_status) if d.last_status else (d.last_error[:14] or "-")
            print(f"{d.id:>6}  {when:<19}  {d.event:<8}  {d.status:<9}  {d.attempts:>5}  {last:<14}  "
                  f"{d.repo} -> {d.url}")
        return 0
    finally:
        queue.stop()


def cmd_gc(args: argparse.Namespace) -> int:
    import asyncio

    from .admin import collect_garbage, parse_duration

    try:
        grace = parse_duration(args.grace)
    except ValueError as exc:
        print(f"lfsserve: --grace: {exc}", file=sys.stderr)
        return 2
    config = _data_config(args)
    if config is None:
        return 1
    res = asyncio.run(collect_garbage(config, grace, args.apply, args.forget, progress=_Bar()))
    for name, n in res.forgotten.items():
        print(f"{'forgot' if args.apply else 'would forget'} namespace {name} ({n} references)")
    if args.verbose:
        for oid in res.deleted:
            print(f"{'deleted' if args.apply else 'would delete'} {oid}")
    verb = "deleted" if args.apply else "would delete"
    print(f"{verb} {len(res.deleted)} unreferenced LFS objects older than {args.grace} "
          f"({_size(res.freed_bytes)}); kept {res.kept}")
    if not args.apply and res.deleted:
        print("dry run: nothing was deleted; run again with --apply to delete")
    return 0


def cmd_clonebundles(args: argparse.Namespace) -> int:
    import datetime

    from .hg.error import RepoNotFound
    from .repos import RepoRegistry, RepoSettings, engine_repo
    from .routing import BadPath, validate_repo_path
    from .wire import clonebundles as cb

    config = _data_config(args)
    if config is None:
        return 1
    try:
        name = validate_repo_path(args.repo.strip("/"))
    except BadPath as exc:
        print(f"lfsserve: {exc}", file=sys.stderr)
        return 2
    store = cb.open_bundle_store(config)
    registry = RepoRegistry(config.repos_dir, RepoSettings.from_config(config))
    try:
        with registry.open(name) as repo:
            if args.action == "build":
                try:
                    report = cb.build(config, store, name, engine_repo(repo), force=args.force)
                except cb.BundleStoreBusy as exc:
                    print(f"lfsserve: {exc}", file=sys.stderr)
                    return 1
                for e in report.built:
                    print(f"built {e.name} ({e.bundlespec}, {e.revs} changesets, {_size(e.size)})")
                for fmt, why in report.skipped:
                    print(f"skipped {fmt}: {why}")
                for n in report.removed:
                    print(f"removed {n}")
                return 0
            current = {e.name for e in cb.current_entries(config, store, name, repo)}
            entries = cb.read_index(store, name)
    except RepoNotFound:
        print(f"lfsserve: no repository {name} in {config.repos_dir}", file=sys.stderr)
        return 1
    if not entries:
        print(f"no clone bundles for {name} (build them with `lfsserve clonebundles build {name}`)")
        return 0
    for e in entries:
        when = datetime.datetime.fromtimestamp(e.created, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        state = "advertised" if e.name in current else "kept"
        print(f"{e.name}  {e.bundlespec}  {e.revs} changesets  {_size(e.size)}  {when}  {state}")
    return 0


def cmd_storage_copy(args: argparse.Namespace) -> int:
    import asyncio

    from .admin import copy_store

    config = _data_config(args)
    if config is None:
        return 1
    if not config.storage.bucket:
        print("lfsserve: storage copy --to s3 needs the bucket's [storage] options (bucket, endpoint_url, ...) "
              "in --config", file=sys.stderr)
        return 2
    res = asyncio.run(copy_store(config, args.to, progress=_Bar()))
    print(f"copied {res.copied} LFS objects ({_size(res.copied_bytes)}) to s3://{config.storage.bucket}/"
          f"{config.storage.prefix}; {res.skipped} were already there")
    for oid, why in sorted(res.failed.items()):
        print(f"  not copied: {oid}: {why}")
    if res.failed:
        print(f"lfsserve: {len(res.failed)} objects not copied; run again to retry them", file=sys.stderr)
        return 1
    return 0


def cmd_ssh(args: argparse.Namespace) -> int:
    from .ssh.session import run_forced_command

    if not _USER.match(args.user):
        print(f"lfsserve: invalid user name {args.user!r}", file=sys.stderr)
        return 2
    return run_forced_command(_config_from(args), args.user, os.environ.get("SSH_ORIGINAL_COMMAND"))


def cmd_authorized_keys(args: argparse.Namespace) -> int:
    from .ssh import keys

    config = _config_from(args)
    path = config.authorized_keys
    try:
        if args.action == "add":
            text = sys.stdin.read() if args.key_file == "-" else Path(args.key_file).read_text(encoding="utf-8")
            # The forced command must find the same configuration and data directory as this
            # command did, without the environment (sshd starts it with a minimal one).
            root = args.root or os.environ.get("LFSSERVE_ROOT")
            command = keys.forced_command(config.ssh.command, args.user, args.config, root)
            entry = keys.add_key(path, args.user, text, command)
            print(f"added {entry.type} key {entry.fingerprint} for {args.user} to {path}")
        elif args.action == "list":
            for e in keys.list_keys(path):
                if args.user is None or e.user == args.user:
                    print(f"{e.user}\t{e.type}\t{e.fingerprint}\t{e.comment}")
        elif args.action == "remove":
            removed = keys.remove_keys(path, args.user, args.fingerprint)
            if not removed:
                what = f"key {args.fingerprint}" if args.fingerprint else "keys"
                print(f"lfsserve: no {what} of {args.user} in {path}", file=sys.stderr)
                return 1
            for e in removed:
                print(f"removed {e.type} key {e.fingerprint} of {e.user} from {path}")
        else:  # lookup: sshd's AuthorizedKeysCommand; the system user (%u) does not matter
            if len(args.words) > 2:
                print("lfsserve: lookup takes USER [TYPE] KEY", file=sys.stderr)
                return 2
            key_type, key = (args.words[0], args.words[1]) if len(args.words) == 2 else (None, args.words[0])
            for line in keys.lookup(path, key, key_type):
                print(line)
    except (keys.BadKey, OSError) as exc:
        print(f"lfsserve: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lfsserve", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lfsserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="run the server")
    _add_config_args(p)
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8080; 0 picks a free one)")
    p.add_argument("--anonymous", choices=["none", "read", "write"],
                   help="what unauthenticated clients may do (default read)")
    p.add_argument("--authenticated", choices=["none", "read", "write"],
                   help="what logged-in users may do where no access rule matches (default read)")
    p.add_argument("--htpasswd", metavar="FILE", help="users and bcrypt passwords, from `lfsserve adduser`")
    p.add_argument("--base-url", help="external URL of the server, e.g. https://hg.example.com/hg")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("adduser", help="set (or delete) a user's password in an htpasswd file (bcrypt)")
    p.add_argument("--htpasswd", required=True, metavar="FILE")
    p.add_argument("user")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument("--delete", action="store_true", help="remove the user")
    p.add_argument("--rounds", type=int, default=12, help="bcrypt cost (default 12)")
    p.set_defaults(func=cmd_adduser)

    p = sub.add_parser("token", help="create a bearer token for a user (printed once) or revoke them")
    p.add_argument("--tokens", required=True, metavar="FILE")
    p.add_argument("user")
    p.add_argument("--revoke", action="store_true", help="remove every token of the user")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("init", help="create an empty repository (as `hg init` of Mercurial 7.2.4)")
    _add_config_args(p)
    p.add_argument("name", help="repository path under the repositories directory, e.g. team/app")
    p.add_argument("--lfs", action="store_true", help="require the lfs extension (large files as lfs pointers)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("clonebundles", help="build a repository's clone bundles now, or list them "
                                            "(see [clonebundles] in config.example.toml)")
    _add_config_args(p)
    p.add_argument("action", choices=["build", "list"])
    p.add_argument("repo", metavar="REPO", help="repository path, e.g. team/app")
    p.add_argument("--force", action="store_true", help="build every format even when current")
    p.set_defaults(func=cmd_clonebundles)

    p = sub.add_parser("repos", help="list repositories and LFS namespaces with their sizes")
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_repos)

    p = sub.add_parser("verify", help="check every revision of served repositories, then re-hash every "
                                      "LFS object (corrupt ones are moved to <root>/lfs/quarantine)")
    _add_config_args(p)
    p.add_argument("repos", nargs="*", metavar="REPO",
                   help="repositories to check (default: all, then the LFS objects)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--repos-only", action="store_true", help="skip the LFS blob store")
    which.add_argument("--blobs-only", action="store_true", help="skip the repositories")
    p.add_argument("--no-quarantine", action="store_true", help="only report corrupt LFS objects")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("gc", help="delete LFS objects no repository references (dry run unless --apply)")
    _add_config_args(p)
    p.add_argument("--apply", action="store_true", help="really delete (default: only report)")
    p.add_argument("--grace", default="24h", metavar="DURATION",
                   help="keep objects younger than this, e.g. 3600, 90m, 24h, 7d (default 24h)")
    p.add_argument("--forget", action="append", default=[], metavar="REPO",
                   help="a deleted repository whose LFS references to drop first (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="list every object deleted")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("storage", help="LFS storage backends")
    storage_sub = p.add_subparsers(dest="storage_command", metavar="ACTION", required=True)
    c = storage_sub.add_parser("copy", help="copy the local LFS store into the [storage] S3 bucket, each "
                                            "object verified (resumable: what is there intact is skipped)")
    _add_config_args(c)
    c.add_argument("--to", choices=["s3"], required=True, help="the target backend")
    c.set_defaults(func=cmd_storage_copy)

    p = sub.add_parser("webhooks", help="the webhook delivery log, and redelivery")
    hooks_sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    k = hooks_sub.add_parser("list", help="recent deliveries, newest first: event, status, attempts, last answer")
    _add_config_args(k)
    k.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    k.add_argument("--status", choices=("pending", "delivered", "failed"), help="only these")
    k = hooks_sub.add_parser("show", help="one delivery with its JSON payload")
    _add_config_args(k)
    k.add_argument("id", type=int)
    k = hooks_sub.add_parser("redeliver", help="send a delivery again (a failed one too), as soon as possible")
    _add_config_args(k)
    k.add_argument("id", type=int)
    p.set_defaults(func=cmd_webhooks)

    p = sub.add_parser("ssh", help="the forced command of authorized_keys lines: serve hg and git-lfs "
                                   "over SSH (reads SSH_ORIGINAL_COMMAND)")
    _add_config_args(p)
    p.add_argument("--user", required=True, help="the lfsserve user the SSH key belongs to")
    p.set_defaults(func=cmd_ssh)

    p = sub.add_parser("authorized-keys", help="manage the SSH keys of lfsserve users "
                                               "(ssh.authorized_keys, default <root>/ssh/authorized_keys)")
    keys_sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    k = keys_sub.add_parser("add", help="add a user's OpenSSH public key with its forced command")
    _add_config_args(k)
    k.add_argument("user")
    k.add_argument("key_file", metavar="PUBKEY_FILE", help="the public key (e.g. id_ed25519.pub), - for stdin")
    k = keys_sub.add_parser("list", help="list the keys: user, type, fingerprint, comment")
    _add_config_args(k)
    k.add_argument("user", nargs="?", help="only this user's keys")
    k = keys_sub.add_parser("remove", help="remove a user's keys (or the one with --fingerprint)")
    _add_config_args(k)
    k.add_argument("user")
    k.add_argument("--fingerprint", metavar="SHA256:...", help="only this key (as `list` shows it)")
    k = keys_sub.add_parser("lookup", help="print the line of a key, for sshd's AuthorizedKeysCommand "
                                           "(AuthorizedKeysCommand /path/to/lfsserve authorized-keys lookup "
                                           "--config FILE %%u %%t %%k)")
    _add_config_args(k)
    k.add_argument("system_user", metavar="USER", help="sshd's %%u (not used: every key maps to its lfsserve user)")
    k.add_argument("words", nargs="+", metavar="[TYPE] KEY", help="sshd's %%t (optional) and %%k")
    p.set_defaults(func=cmd_authorized_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError
    from .pgdb import DatabaseUnavailable, SchemaTooNew

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"lfsserve: configuration error: {exc}", file=sys.stderr)
        return 2
    except (DatabaseUnavailable, SchemaTooNew) as exc:  # `serve` says it itself; the admin commands here
        print(f"lfsserve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
