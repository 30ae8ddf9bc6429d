"""The wire protocol v2 commands: one registry with each command's arguments and permission.

Each command is declared once with `@command(name, args=..., permission=...)`. The registry
validates a request's arguments against the declaration (types, required, allowed values) before
the command runs, and produces the API descriptor the handshake and the `capabilities` command
send. Commands are plain generators of result values (CBOR-encodable objects, IndefiniteBytes),
run in a worker thread against an `lfsserve.hg` repository.

Errors: a client mistake raises framing.CommandError (or an engine error that `classify` maps to
one); it reaches the client as a command error with a readable message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...hg import error as hgerror
from ...hg.manifest import find_entry
from ...hg.node import NULLID, NULLREV
from ...hg.storageutil import DeltaEmitter
from ..protocol import MAX_NODES
from ..pushenv import PushEnv
from ..unbundle import check_pushkey, pushkey_hook_args
from .framing import CommandError, CommandRequest, IndefiniteBytes

if TYPE_CHECKING:
    from ...hg.repository import Repository

__all__ = [
    "COMMANDS",
    "FRAMING_MEDIA_TYPE",
    "Command",
    "Context",
    "PathFilter",
    "api_descriptor",
    "classify",
    "emit_revisions",
    "resolve_revisions",
    "run",
    "validate_args",
]

log = logging.getLogger(__name__)

FRAMING_MEDIA_TYPE = "application/mercurial-exp-framing-0006"

# Revlog formats a v2 client of the protocol's era (Mercurial 4.6 to 5.9) reads in raw revlog
# files. A repository whose revlogs need anything else (zstd chunks, revlog v2, ...) does not
# offer rawstorefiledata: the client would write files it cannot read.
RAW_READABLE_FORMATS = frozenset({"revlogv1", "generaldelta", "sparserevlog"})
REVLOG_FORMATS = frozenset({"revlogv1", "generaldelta", "sparserevlog", "revlog-compression-zstd",
                            "exp-revlogv2.2", "exp-revlogv2.1", "revlogv2", "exp-changelog-v2",
                            "changelogv2", "treemanifest"})
PATH_FILTER_PREFIXES = (b"path:", b"rootfilesin:")

MANIFESTDATA_BATCH = 100_000
FILESDATA_BATCH = 50_000


@dataclass
class Context:
    """What a command runs against: an open repository and the server's settings for it."""

    repo: Repository
    publishing: bool = True
    stream_clone: bool = True
    request_id: str = "-"
    # The API descriptor's `redirect` entry (content redirect targets), or None: no redirects.
    redirect: dict[bytes, Any] | None = None
    # For requests that write: who pushes, with the rights around a push (publishing, protection).
    push: PushEnv | None = None


@dataclass(frozen=True)
class Arg:
    type: str                                # bytes | int | bool | list | set | dict
    required: bool = True
    default: Callable[[], Any] = lambda: None
    validvalues: frozenset[bytes] | None = None
    nodes: bool = False                      # a list whose members are 20-byte binary nodes


@dataclass(frozen=True)
class Command:
    name: bytes
    func: Callable[..., Iterator[Any]]
    args: dict[bytes, Arg]
    permission: str                          # "pull" | "push"
    extra: dict[bytes, Any] = field(default_factory=dict)
    available: Callable[[Context], bool] | None = None


COMMANDS: dict[bytes, Command] = {}


def command(name: str, *, args: dict[str, Arg] | None = None, permission: str,
            extra: dict[bytes, Any] | None = None, available: Callable[[Context], bool] | None = None):
    if permission not in ("pull", "push"):
        raise ValueError(f"bad permission {permission!r}")

    def register(func: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        key = name.encode("ascii")
        if key in COMMANDS:
            raise RuntimeError(f"v2 command {name} declared twice")
        COMMANDS[key] = Command(key, func, {k.encode("ascii"): v for k, v in (args or {}).items()},
                                permission, extra or {}, available)
        return func

    return register


def available_commands(ctx: Context) -> dict[bytes, Command]:
    return {n: c for n, c in COMMANDS.items() if c.available is None or c.available(ctx)}


def api_descriptor(ctx: Context) -> dict[bytes, Any]:
    """The exp-http-v2-0003 API descriptor: commands with their arguments, framing, formats."""
    commands: dict[bytes, Any] = {}
    for name, cmd in sorted(available_commands(ctx).items()):
        args: dict[bytes, Any] = {}
        for arg_name, arg in cmd.args.items():
            desc: dict[bytes, Any] = {b"type": arg.type.encode("ascii"), b"required": arg.required}
            if not arg.required:
                desc[b"default"] = arg.default()
            if arg.validvalues:
                desc[b"validvalues"] = set(arg.validvalues)
            args[arg_name] = desc
        commands[name] = {b"args": args, b"permissions": [cmd.permission.encode("ascii")], **cmd.extra}
    formats = sorted(r for r in ctx.repo.requirements if r in REVLOG_FORMATS)
    return {
        b"commands": commands,
        b"framingmediatypes": [FRAMING_MEDIA_TYPE.encode("ascii")],
        b"pathfilterprefixes": set(PATH_FILTER_PREFIXES),
        b"rawrepoformats": [f.encode("ascii") for f in formats],
        **({b"redirect": ctx.redirect} if ctx.redirect else {}),
    }


# -- argument validation ----------------------------------------------------------------------------

def _check_type(name: bytes, arg: Arg, value: Any) -> Any:
    label = name.decode("ascii")
    if arg.type == "bytes":
        ok = isinstance(value, bytes)
    elif arg.type == "bool":
        ok = isinstance(value, bool)
    elif arg.type == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif arg.type == "list":
        ok = isinstance(value, list)
    elif arg.type == "set":
        if isinstance(value, list):  # sets may come as lists
            try:
                value = set(value)
            except TypeError:
                raise CommandError(f"argument {label} must be a set of byte strings") from None
        ok = isinstance(value, (set, frozenset))
    else:
        ok = isinstance(value, dict)
    if not ok:
        raise CommandError(f"argument {label} must be of type {arg.type}, got {_cbor_kind(value)}")
    if arg.validvalues is not None:  # declared on sets only
        unknown = sorted((v for v in value if v not in arg.validvalues), key=repr)
        if unknown:
            raise CommandError(f"argument {label}: unknown value(s) %s (allowed: "
                               + ", ".join(v.decode() for v in sorted(arg.validvalues)) + ")",
                               b", ".join(u if isinstance(u, bytes) else repr(u).encode() for u in unknown))
    if arg.nodes:
        _check_nodes(label, value)
    return value


def _cbor_kind(value: Any) -> str:
    return {bytes: "byte string", bool: "bool", int: "integer", list: "array", dict: "map", set: "set",
            frozenset: "set", type(None): "null"}.get(type(value), type(value).__name__)


def _check_nodes(label: str, value: Any) -> None:
    if isinstance(value, list) and len(value) > MAX_NODES:
        raise CommandError(f"{label}: too many nodes in one request (at most {MAX_NODES})")
    if not isinstance(value, list) or not all(isinstance(n, bytes) and len(n) == 20 for n in value):
        raise CommandError(f"{label} must be a list of 20-byte binary nodes")


def validate_args(cmd: Command, given: dict[bytes, Any]) -> dict[str, Any]:
    extra = set(given) - set(cmd.args)
    if extra:
        raise CommandError("unsupported argument(s) to command %s: %s", cmd.name,
                           b", ".join(sorted(extra)))
    missing = sorted(a for a, spec in cmd.args.items() if spec.required and a not in given)
    if missing:
        raise CommandError("missing required argument(s) to command %s: %s", cmd.name, b", ".join(missing))
    out: dict[str, Any] = {}
    for name, spec in cmd.args.items():
        if name in given and not (given[name] is None and not spec.required):
            out[name.decode("ascii")] = _check_type(name, spec, given[name])
        else:
            out[name.decode("ascii")] = spec.default()
    return out


def run(ctx: Context, request: CommandRequest) -> Iterator[Any]:
    """The result values of one command request (a generator: errors surface on first use)."""
    if request.error:
        raise CommandError(request.error)
    cmd = COMMANDS.get(request.name)
    if cmd is None:
        raise CommandError("unknown wire protocol command: %s", request.name)
    if cmd.available is not None and not cmd.available(ctx):
        raise CommandError("command %s is not available for this repository", request.name)
    if request.data is not None:
        raise CommandError("command %s does not accept command data", request.name)
    kwargs = validate_args(cmd, request.args)
    yield from cmd.func(ctx, **kwargs)


def classify(exc: BaseException, request_id: str = "-") -> tuple[str, str, list[bytes]]:
    """How an exception from a command reaches the client: (kind, message, args).

    The one place v2 decides what is the client's fault ("command": a command error carrying
    the message) and what is the server's ("server": an error frame; logged with a traceback).
    """
    if isinstance(exc, CommandError):
        return "command", exc.message, exc.fmt_args
    if isinstance(exc, (hgerror.UnknownRevision, hgerror.LookupError)):
        return "command", _plain(exc.message), []
    if isinstance(exc, hgerror.Abort):
        return "command", _plain(exc.message), []
    if isinstance(exc, hgerror.LockTimeout):
        return "server", _plain(exc.message), []
    if isinstance(exc, hgerror.HgError):
        log.error("[%s] repository error: %s", request_id, exc.message)
        return "server", _plain(exc.message), []
    log.error("[%s] v2 command failed", request_id, exc_info=exc)
    return "server", f"internal server error (request id {request_id})", []


def _plain(message: str) -> str:
    # Messages without args are shown verbatim by clients; keep a stray "%" harmless anyway.
    return message.replace("%", "%%") if "%" in message else message


# -- shared helpers ---------------------------------------------------------------------------------

def _phase_name(ctx: Context, rev: int) -> bytes:
    if ctx.publishing:
        return b"public"
    return (b"public", b"draft", b"secret")[ctx.repo.phase(rev)]


def _visible_revs(ctx: Context, nodes: list[bytes], what: str = "changeset") -> list[int]:
    """Changelog revs of `nodes`; CommandError naming the first node the client may not see."""
    repo = ctx.repo
    known = repo.known(nodes)
    for node, ok in zip(nodes, known, strict=True):
        if not ok:
            raise CommandError(f"unknown {what}: %s", node.hex())
    cl = repo.changelog
    return [cl.rev(n) for n in nodes]


def resolve_revisions(ctx: Context, specs: list[Any]) -> list[int]:
    """Changelog revs selected by revision specifiers (union, ascending = topological order)."""
    repo = ctx.repo
    cl = repo.changelog
    revs: set[int] = set()
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get(b"type"), bytes):
            raise CommandError('each revision specifier must be a map with a "type" byte string')
        kind = spec[b"type"]
        if kind == b"changesetexplicit":
            if b"nodes" not in spec:
                raise CommandError("changesetexplicit revision specifier needs nodes")
            _check_nodes("changesetexplicit nodes", spec[b"nodes"])
            revs.update(_visible_revs(ctx, spec[b"nodes"]))
        elif kind == b"changesetexplicitdepth":
            for key in (b"nodes", b"depth"):
                if key not in spec:
                    raise CommandError("changesetexplicitdepth revision specifier needs %s", key)
            _check_nodes("changesetexplicitdepth nodes", spec[b"nodes"])
            depth = spec[b"depth"]
            if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
                raise CommandError("changesetexplicitdepth depth must be a positive integer")
            frontier = set(_visible_revs(ctx, spec[b"nodes"]))
            for _ in range(depth):
                frontier -= revs
                if not frontier:
                    break
                revs.update(frontier)
                frontier = {p for r in frontier for p in cl.parentrevs(r) if p != NULLREV}
        elif kind == b"changesetdagrange":
            for key in (b"roots", b"heads"):
                if key not in spec:
                    raise CommandError("changesetdagrange revision specifier needs %s", key)
            _check_nodes("changesetdagrange roots", spec[b"roots"])
            _check_nodes("changesetdagrange heads", spec[b"heads"])
            if not spec[b"heads"]:
                raise CommandError("changesetdagrange heads cannot be empty")
            _visible_revs(ctx, spec[b"heads"])
            roots = [n for n, ok in zip(spec[b"roots"], repo.known(spec[b"roots"]), strict=True) if ok]
            revs.update(repo.missing(roots, spec[b"heads"]))
        else:
            raise CommandError("unknown revision specifier type: %s", kind)
    return sorted(revs)


def emit_revisions(revlog: Any, revs: list[int], *, haveparents: bool, fields: set[bytes],
                   linknodes: dict[int, bytes] | None = None, what: str = "revision") -> Iterator[Any]:
    """Per revision: a map (node, parents, linknode, deltabasenode) then its data, as the client asked.

    The engine's DeltaEmitter chooses each delta (the policy changegroups use): against a base
    sent earlier in this answer or, with haveparents, a parent; a fulltext only when no such
    base exists (stored full texts are re-deltaed: v2 answers favour size).
    """
    want_data = b"revision" in fields
    deltas = DeltaEmitter(revlog, have_parents=haveparents, redelta_fulltexts=True)
    for rev in sorted(revs):
        node = revlog.node(rev)
        if revlog.flags(rev):
            # v2 has no field for storage flags: an lfs pointer would arrive as file content.
            raise CommandError(f"{what} %s has storage flags (lfs) that wire protocol v2 cannot "
                               "carry; use wire protocol v1", node.hex())
        p1, p2 = revlog.parentrevs(rev)
        entry: dict[bytes, Any] = {b"node": node}
        if b"parents" in fields:
            entry[b"parents"] = [revlog.node(p1) if p1 != NULLREV else NULLID,
                                 revlog.node(p2) if p2 != NULLREV else NULLID]
        if linknodes is not None and b"linknode" in fields:
            entry[b"linknode"] = linknodes[rev]
        if not want_data:
            yield entry
            continue
        base, data = deltas.next(rev)
        if base == NULLREV:
            entry[b"fieldsfollowing"] = [[b"revision", len(data)]]
        else:
            entry[b"deltabasenode"] = revlog.node(base)
            entry[b"fieldsfollowing"] = [[b"delta", len(data)]]
        yield entry
        yield data


# -- the commands -----------------------------------------------------------------------------------

NODE_LIST = Arg("list", nodes=True)


@command("branchmap", permission="pull")
def branchmap(ctx: Context) -> Iterator[Any]:
    yield {name: list(heads) for name, heads in ctx.repo.branchmap().items()}


@command("capabilities", permission="pull")
def capabilities(ctx: Context) -> Iterator[Any]:
    yield api_descriptor(ctx)


@command("heads", permission="pull",
         args={"publiconly": Arg("bool", required=False, default=lambda: False)})
def heads(ctx: Context, publiconly: bool) -> Iterator[Any]:
    yield list(ctx.repo.public_heads() if publiconly else ctx.repo.heads())


@command("known", permission="pull",
         args={"nodes": Arg("list", required=False, default=list, nodes=True)})
def known(ctx: Context, nodes: list[bytes]) -> Iterator[Any]:
    yield b"".join(b"1" if k else b"0" for k in ctx.repo.known(nodes))


@command("listkeys", permission="pull", args={"namespace": Arg("bytes")})
def listkeys(ctx: Context, namespace: bytes) -> Iterator[Any]:
    yield dict(ctx.repo.listkeys(namespace))


@command("lookup", permission="pull", args={"key": Arg("bytes")})
def lookup(ctx: Context, key: bytes) -> Iterator[Any]:
    yield ctx.repo.lookup(key)


@command("pushkey", permission="push",
         args={"namespace": Arg("bytes"), "key": Arg("bytes"), "old": Arg("bytes"), "new": Arg("bytes")})
def pushkey(ctx: Context, namespace: bytes, key: bytes, old: bytes, new: bytes) -> Iterator[Any]:
    repo = ctx.repo
    output: list[str] = []  # v2 answers carry no output: the hooks' is dropped, as hg's v2 server does
    args = pushkey_hook_args(namespace, key, old, new)
    with repo.lock():
        check_pushkey(ctx.push, repo, namespace, key, new)
        ok = ctx.push is None or ctx.push.prepushkey(repo, output, args)
        if ok:
            with repo.transaction(b"pushkey") as tr:
                ok = repo.pushkey(tr, namespace, key, old, new)
    if ctx.push is not None:
        ctx.push.run_hooks(repo, "pushkey", output, throw=False, args={**args, "ret": "1" if ok else "0"})
    yield bool(ok)


@command("changesetdata", permission="pull", args={
    "revisions": Arg("list"),
    "fields": Arg("set", required=False, default=set,
                  validvalues=frozenset({b"bookmarks", b"parents", b"phase", b"revision"})),
})
def changesetdata(ctx: Context, revisions: list[Any], fields: set[bytes]) -> Iterator[Any]:
    repo = ctx.repo
    cl = repo.changelog
    revs = resolve_revisions(ctx, revisions)
    yield {b"totalitems": len(revs)}

    marks_by_node: dict[bytes, list[bytes]] = {}
    if b"bookmarks" in fields:
        for mark, node in sorted(repo.bookmarks().items()):
            marks_by_node.setdefault(node, []).append(mark)
    for rev in revs:
        node = cl.node(rev)
        entry: dict[bytes, Any] = {b"node": node}
        if b"parents" in fields:
            entry[b"parents"] = list(cl.parents(node))
        if b"phase" in fields:
            entry[b"phase"] = _phase_name(ctx, rev)
        marks = marks_by_node.pop(node, None)
        if marks:
            entry[b"bookmarks"] = marks
        if b"revision" in fields:
            text = cl.revision(rev)
            entry[b"fieldsfollowing"] = [[b"revision", len(text)]]
            yield entry
            yield text
        else:
            yield entry

    # Bookmarks on changesets the client already has (or did not ask for): it learns where they
    # point now. Bookmarks on changesets it may not see stay unsent.
    if marks_by_node:
        nodes = sorted(marks_by_node)
        for node, visible in zip(nodes, repo.known(nodes), strict=True):
            if visible:
                yield {b"node": node, b"bookmarks": marks_by_node[node]}

    # On a non-publishing server, changesets the client has may have become public since it
    # last pulled: phase-only records for the public heads it already has tell it.
    if b"phase" in fields and not ctx.publishing:
        sent = {cl.node(r) for r in revs}
        roots = _dagrange_roots(ctx, revisions)
        for head in repo.public_heads():
            if head not in sent and roots is not None and not repo.missing(roots, [head]):
                yield {b"node": head, b"phase": b"public"}


def _dagrange_roots(ctx: Context, specs: list[Any]) -> list[bytes] | None:
    """The changesets a dagrange request says the client has (None for other specifiers)."""
    roots: list[bytes] = []
    for spec in specs:
        if spec.get(b"type") != b"changesetdagrange":
            return None
        roots.extend(spec[b"roots"])
    known = ctx.repo.known(roots)
    return [n for n, ok in zip(roots, known, strict=True) if ok]


@command("manifestdata", permission="pull", args={
    "nodes": NODE_LIST,
    "haveparents": Arg("bool", required=False, default=lambda: False),
    "fields": Arg("set", required=False, default=set, validvalues=frozenset({b"parents", b"revision"})),
    "tree": Arg("bytes"),
}, extra={b"recommendedbatchsize": MANIFESTDATA_BATCH})
def manifestdata(ctx: Context, nodes: list[bytes], haveparents: bool, fields: set[bytes],
                 tree: bytes) -> Iterator[Any]:
    if tree != b"":
        raise CommandError("no manifest tree %s: this repository has only the root manifest (tree '')",
                           tree)
    store = ctx.repo.manifestlog.revlog
    revs = _revs_of(store, nodes, "unknown manifest: %s")
    yield {b"totalitems": len(revs)}
    yield from emit_revisions(store, revs, haveparents=haveparents, fields=fields, what="manifest")


def _revs_of(store: Any, nodes: list[bytes], unknown: str) -> list[int]:
    """The sorted, distinct revisions of `nodes` in `store`; an unknown node is a CommandError."""
    revs = set()
    for node in nodes:
        rev = store.get_rev(node)
        if rev is None:
            raise CommandError(unknown, node.hex())
        revs.add(rev)
    return sorted(revs)


def _linknodes(ctx: Context, store: Any, revs: list[int]) -> dict[int, bytes]:
    cl = ctx.repo.changelog
    return {r: cl.node(store.linkrev(r)) for r in revs}


@command("filedata", permission="pull", args={
    "haveparents": Arg("bool", required=False, default=lambda: False),
    "nodes": NODE_LIST,
    "fields": Arg("set", required=False, default=set,
                  validvalues=frozenset({b"linknode", b"parents", b"revision"})),
    "path": Arg("bytes"),
})
def filedata(ctx: Context, haveparents: bool, nodes: list[bytes], fields: set[bytes],
             path: bytes) -> Iterator[Any]:
    store = ctx.repo.file(path)
    if not len(store):
        raise CommandError("unknown file: %s", path)
    revs = _revs_of(store, nodes, "unknown file node: %s")
    yield {b"totalitems": len(revs)}
    linknodes = _linknodes(ctx, store, revs) if b"linknode" in fields else None
    yield from emit_revisions(store, revs, haveparents=haveparents, fields=fields, linknodes=linknodes,
                              what=f"file {path.decode('utf-8', 'replace')} revision")


class PathFilter:
    """`path:` and `rootfilesin:` include/exclude patterns, as a predicate on repository paths."""

    def __init__(self, spec: dict | None):
        self.include: list[tuple[bytes, bytes]] | None = None
        self.exclude: list[tuple[bytes, bytes]] = []
        if spec is None:
            return
        unknown = set(spec) - {b"include", b"exclude"}
        if unknown:
            raise CommandError("pathfilter accepts only include and exclude keys")
        for key in (b"include", b"exclude"):
            if key not in spec:
                continue
            patterns = spec[key]
            if not isinstance(patterns, list) or not all(isinstance(p, bytes) for p in patterns):
                raise CommandError("pathfilter %s must be a list of byte strings", key)
            parsed = [self._parse(key, p) for p in patterns]
            if key == b"include":
                self.include = parsed
            else:
                self.exclude = parsed

    @staticmethod
    def _parse(key: bytes, pattern: bytes) -> tuple[bytes, bytes]:
        for prefix in PATH_FILTER_PREFIXES:
            if pattern.startswith(prefix):
                value = pattern[len(prefix):].strip(b"/")
                if value in (b".", b""):
                    value = b""
                return prefix, value
        raise CommandError("%s pattern must begin with `path:` or `rootfilesin:`; got %s", key, pattern)

    @staticmethod
    def _hit(rules: list[tuple[bytes, bytes]], path: bytes) -> bool:
        for kind, value in rules:
            if kind == b"path:":
                if not value or path == value or path.startswith(value + b"/"):
                    return True
            else:  # rootfilesin: files directly in that directory
                directory = path.rpartition(b"/")[0]
                if directory == value:
                    return True
        return False

    def __call__(self, path: bytes) -> bool:
        if self.include is not None and not self._hit(self.include, path):
            return False
        return not self._hit(self.exclude, path)


@command("filesdata", permission="pull", args={
    "haveparents": Arg("bool", required=False, default=lambda: False),
    "fields": Arg("set", required=False, default=set,
                  validvalues=frozenset({b"linknode", b"parents", b"revision"})),
    "pathfilter": Arg("dict", required=False),
    "revisions": Arg("list"),
}, extra={b"recommendedbatchsize": FILESDATA_BATCH})
def filesdata(ctx: Context, haveparents: bool, fields: set[bytes], pathfilter: dict | None,
              revisions: list[Any]) -> Iterator[Any]:
    repo = ctx.repo
    cl = repo.changelog
    ml = repo.manifestlog
    match = PathFilter(pathfilter)
    revs = resolve_revisions(ctx, revisions)

    # path -> {file node: changeset that introduced it (first in the requested order)}
    fnodes: dict[bytes, dict[bytes, bytes]] = {}
    stores: dict[bytes, Any] = {}
    mlog = ml.revlog
    for rev in revs:
        node = cl.node(rev)
        mtext = mlog.revision(mlog.rev(cl.manifest_node(rev)))
        if haveparents:
            # Only the file revisions this changeset introduces: a file it lists that is still
            # in its manifest (a removal lists the file but has no revision to send) with a node
            # neither parent has (the client has those, or gets them with the parents). A file
            # revision whose linkrev is this changeset is new here; only others need the check.
            ptexts = None
            for path in cl.read(rev).files:
                if not match(path):
                    continue
                found = find_entry(mtext, path)
                if found is None:
                    continue
                fnode = found[0]
                store = stores.get(path)
                if store is None:
                    store = stores[path] = repo.file(path)
                frev = store.get_rev(fnode)
                if frev is None or store.linkrev(frev) != rev:
                    if ptexts is None:
                        ptexts = [mlog.revision(mlog.rev(cl.manifest_node(p)))
                                  for p in cl.parentrevs(rev) if p != NULLREV]
                    if any(e is not None and e[0] == fnode for e in (find_entry(pt, path) for pt in ptexts)):
                        continue
                fnodes.setdefault(path, {}).setdefault(fnode, node)
        else:
            for path, (fnode, _) in ml.read(cl.manifest_node(rev)).items():
                if match(path):
                    fnodes.setdefault(path, {}).setdefault(fnode, node)

    yield {b"totalpaths": len(fnodes), b"totalitems": sum(len(v) for v in fnodes.values())}
    for path in sorted(fnodes):
        store = stores.pop(path, None) or repo.file(path)
        by_rev: dict[int, bytes] = {}
        for fnode, linknode in fnodes[path].items():
            frev = store.get_rev(fnode)
            if frev is None:
                raise hgerror.CorruptRevlog(f"a manifest names revision {fnode.hex()} of "
                                            f"{path.decode('utf-8', 'replace')}, which its filelog lacks")
            by_rev[frev] = linknode
        yield {b"path": path, b"totalitems": len(by_rev)}
        yield from emit_revisions(store, list(by_rev), haveparents=haveparents, fields=fields,
                                  linknodes=by_rev, what=f"file {path.decode('utf-8', 'replace')} revision")


RAW_FILE_SETS = {b"changelog": (b"00changelog.i", b"00changelog.d"),
                 b"manifestlog": (b"00manifest.i", b"00manifest.d")}


def _raw_store_allowed(ctx: Context) -> bool:
    """Whether the raw changelog/manifest files give a client exactly what it may see.

    They carry every changeset, and no phase information (a client without phaseroots sees
    everything public): so not with secret or hidden changesets, nor with drafts on a
    non-publishing server. And only in revlog formats a v2-era client reads.
    """
    repo = ctx.repo
    revlog_formats = {r for r in repo.requirements if r in REVLOG_FORMATS}
    return (ctx.stream_clone and revlog_formats <= RAW_READABLE_FORMATS and not repo.has_hidden()
            and (ctx.publishing or not repo.draft_roots()))


@command("rawstorefiledata", permission="pull", args={"files": Arg("list")}, available=_raw_store_allowed)
def rawstorefiledata(ctx: Context, files: list[Any]) -> Iterator[Any]:
    if not all(isinstance(f, bytes) for f in files):
        raise CommandError("files must be a list of byte strings")
    unknown = sorted(set(files) - set(RAW_FILE_SETS))
    if unknown:
        raise CommandError("unknown file type: %s (known: changelog, manifestlog)", b", ".join(unknown))
    wanted = {name for f in set(files) for name in RAW_FILE_SETS[f]}
    repo = ctx.repo
    # Sizes are taken under the store lock, so the files are a consistent snapshot even while a
    # push appends to them; each is then read only up to its recorded size.
    sendfiles = [(name, size) for name, size in repo.stream_files() if name in wanted]
    # Manifests before the changelog, so a reader never sees a changeset whose manifest is missing.
    sendfiles.sort(key=lambda item: (not item[0].startswith(b"00manifest"), item[0]))
    yield {b"filecount": len(sendfiles), b"totalsize": sum(size for _, size in sendfiles)}
    for name, size in sendfiles:
        yield {b"location": b"store", b"path": name, b"size": size}
        yield IndefiniteBytes(repo.read_store_file(name, size, 32768))
