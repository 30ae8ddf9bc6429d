"""The wire protocol v1 commands: one registry, each command declared once with its arguments and
the permission it needs. Transports (HTTP `?cmd=` now, SSH next) and `batch` look commands up here.

A command never sees a transport: it runs (synchronously, in an executor thread) with a Session
(the server config, one repository from the registry's opener, and for `unbundle` the request
payload the transport spooled) and the decoded arguments, and returns bytes, a Stream whose
chunks are produced lazily (the transport keeps the repository open until it has sent them), or
a PushReply. Failures are typed exceptions (BadRequest, HgError and its kinds, BundleRequired);
the transport turns them into its own framing.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

from ...blobstore.bundles import bundle_key
from ...config import Config
from ...hg.branchmap import parse_fqbn
from ...hg.bundle2 import uvarint
from ...hg.error import Abort, HgError
from ...hg.repository import Repository
from ...repos import ServedRepo, engine_repo
from .. import clonebundles as cb
from .. import getbundle as pull
from .. import streamclone
from ..capabilities import BundleRequired, capabilities_bytes, http_capabilities, repo_heads
from ..protocol import MAX_PAIRS, BadRequest, batch_escape, decode_batch, decode_nodes, encode_nodes
from ..pushenv import PushEnv
from ..streamclone import STREAM_READ
from ..unbundle import LfsCheck, PushReply, check_pushkey, pushkey_hook_args
from ..unbundle import unbundle as apply_push

__all__ = ["COMMANDS", "Command", "Result", "Session", "Stream", "bind_args", "command"]


@dataclass
class Session:
    """What a command sees: the config, one served repository, and what the transport carries for
    the push command (the spooled request payload, the LFS blob check bound to the pusher)."""

    config: Config
    repo: ServedRepo
    payload: BinaryIO | None = None
    check_lfs: LfsCheck | None = None
    # The transport the command came by: it adds its part to the capabilities answer (HTTP: its
    # headers, media types, compression; SSH: nothing).
    transport: Literal["http", "ssh"] = "http"
    # Whether `capabilities` may offer httppostargs to this client (hg.httppostargs permitting):
    # only where no 401 can follow, see wire/v1/http.py. Off unless the HTTP transport says so.
    offer_postargs: bool = False
    # For push commands: who pushes, with the hooks, rights and webhooks around the push.
    push: PushEnv | None = None
    # How the clone bundles manifest names a bundle file (store key -> URL): set by the HTTP
    # transport; None advertises them inline (peer-bundle-cache://, fetched over this connection).
    bundle_url: Callable[[str], str] | None = None
    # The compression engines the client says it has (HTTP's X-HgProto-1 comp=); None: unknown.
    client_engines: tuple[str, ...] | None = None


@dataclass
class Stream:
    """A streamed answer. `raw`: sent as is in application/mercurial-0.1 (stream_out); otherwise
    compressed as negotiated (`prefer_uncompressed`: engine `none` for 0.2 clients)."""

    chunks: Callable[[], Iterator[bytes]]
    prefer_uncompressed: bool = False
    raw: bool = False


Result = bytes | Stream | PushReply
Kind = Literal["bytes", "stream", "push"]


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...]      # required argument names; "*" also accepts any others
    permission: str            # "pull" | "push"
    kind: Kind                 # bytes: answers bytes; stream: a Stream; push: reads the payload, a PushReply
    func: Callable[..., Result]

    @property
    def batchable(self) -> bool:
        return self.kind == "bytes" and self.permission == "pull"


COMMANDS: dict[str, Command] = {}


def command(name: str, args: str = "", permission: str = "pull",
            kind: Kind = "bytes") -> Callable[[Callable[..., Result]], Callable[..., Result]]:
    def register(fn: Callable[..., Result]) -> Callable[..., Result]:
        if name in COMMANDS:
            raise RuntimeError(f"wire command {name!r} declared twice")
        COMMANDS[name] = Command(name, tuple(args.split()), permission, kind, fn)
        return fn
    return register


def bind_args(cmd: Command, given: dict[str, bytes]) -> dict[str, bytes | dict[str, bytes]]:
    """Keyword arguments for cmd.func from the request's arguments; BadRequest if one is missing."""
    out: dict[str, bytes | dict[str, bytes]] = {}
    for name in cmd.args:
        if name == "*":
            continue
        if name not in given:
            raise BadRequest(f"command {cmd.name!r} needs argument {name!r}")
        out[name] = given[name]
    if "*" in cmd.args:
        out["others"] = {k: v for k, v in given.items() if k not in cmd.args and k != "cmd"}
    return out


# -- byte commands ----------------------------------------------------------------------------------

def _capabilities(s: Session) -> bytes:
    # SSH adds protocaps (hg's sshv1 handler does: the client then says which compression it
    # takes, which SSH answers ignore)
    extra = http_capabilities(s.config, s.offer_postargs) if s.transport == "http" else ["protocaps"]
    offers = cb.has_manifest(s.config, cb.open_bundle_store(s.config), cb.repo_name_of(s.config, s.repo), s.repo)
    return capabilities_bytes(s.config, s.repo, extra, clonebundles=offers)


@command("capabilities")
def capabilities(s: Session) -> bytes:
    return _capabilities(s)


@command("hello")
def hello(s: Session) -> bytes:
    """The first question of the SSH handshake (hg answers it over HTTP too)."""
    return b"capabilities: " + _capabilities(s) + b"\n"


@command("heads")
def heads(s: Session) -> bytes:
    topics = s.repo.config.topics
    if topics.enabled and topics.gate_topic_changesets and isinstance(s.repo, Repository):
        # topic clients ask `_exttopics_heads` / `tns_heads`: `heads` is the others' view
        return encode_nodes(s.repo.heads_without_topics()) + b"\n"
    return encode_nodes(repo_heads(s.repo)) + b"\n"


@command("_exttopics_heads")
def exttopics_heads(s: Session) -> bytes:
    """The topic extension's `heads` for topic-aware clients: every visible head (`heads` leaves
    topic changesets out under `topic.server-gate-topic-changesets`)."""
    return encode_nodes(repo_heads(s.repo)) + b"\n"


@command("tns_heads", "namespaces")
def tns_heads(s: Session, namespaces: bytes) -> bytes:
    """Heads of the changesets in the topic namespaces asked for (`*`: all), and of those
    without a namespace (the topic extension's command)."""
    try:  # hex words, as hg's wireprototypes.encodelist sends any list
        wanted = {bytes.fromhex(w.decode("ascii")) for w in namespaces.split()}
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("tns_heads: namespaces must be hex-encoded words") from None
    if b"*" in wanted or not s.repo.config.topics.enabled or not isinstance(s.repo, Repository):
        return encode_nodes(repo_heads(s.repo)) + b"\n"
    heads = []
    for name, nodes in sorted(s.repo.branchmap_tns().items()):
        namespace = parse_fqbn(name)[1]
        if namespace == b"none" or namespace in wanted:
            heads.extend(nodes)
    return encode_nodes(heads) + b"\n"


@command("branchmaptns")
def branchmaptns(s: Session) -> bytes:
    """The branch map by fully qualified branch name (`branch//topic`), for topic clients."""
    if not s.repo.config.topics.enabled or not isinstance(s.repo, Repository):
        return _encode_branchmap(s.repo.branchmap())
    return _encode_branchmap(s.repo.branchmap_tns())


@command("known", "nodes *")
def known(s: Session, nodes: bytes, others: dict[str, bytes]) -> bytes:
    return b"".join(b"1" if k else b"0" for k in s.repo.known(decode_nodes(nodes)))


@command("branchmap")
def branchmap(s: Session) -> bytes:
    if s.repo.config.topics.enabled and not s.repo.publishing and isinstance(s.repo, Repository):
        # as hg-evolve's server: a non-publishing topic repository names the heads of a topic
        # `branch:topic` (the namespace is not shown), so a new topic head is no new branch head
        out: dict[bytes, list[bytes]] = {}
        for name, nodes in s.repo.branchmap_tns().items():
            branch, _namespace, topic = parse_fqbn(name)
            out.setdefault(branch + b":" + topic if topic else branch, []).extend(nodes)
        return _encode_branchmap(out)
    return _encode_branchmap(s.repo.branchmap())


def _encode_branchmap(bm: dict[bytes, list[bytes]]) -> bytes:
    lines = []
    for branch, nodes in sorted(bm.items()):
        lines.append(urllib.parse.quote_from_bytes(branch).encode("ascii") + b" " + encode_nodes(list(nodes)))
    return b"\n".join(lines)


@command("branches", "nodes")
def branches(s: Session, nodes: bytes) -> bytes:
    return b"".join(encode_nodes(list(b)) + b"\n" for b in s.repo.branches(decode_nodes(nodes)))


@command("between", "pairs")
def between(s: Session, pairs: bytes) -> bytes:
    if len(pairs) > MAX_PAIRS * 82 or pairs.count(b" ") >= MAX_PAIRS:
        raise BadRequest(f"between: too many pairs in one request (at most {MAX_PAIRS})")
    decoded = []
    for pair in pairs.split(b" ") if pairs else []:
        nodes = decode_nodes(pair.replace(b"-", b" "), "pairs")
        if len(nodes) != 2:
            raise BadRequest("between: each pair is two nodes joined by '-'")
        decoded.append((nodes[0], nodes[1]))
    return b"".join(encode_nodes(list(b)) + b"\n" for b in s.repo.between(decoded))


@command("lookup", "key")
def lookup(s: Session, key: bytes) -> bytes:
    try:
        node = s.repo.lookup(key)
    except HgError as exc:
        # as hg: any lookup failure (unknown revision, ambiguous prefix...) is a "0 <message>" answer
        return b"0 %s\n" % exc.message.encode("utf-8")
    return b"1 %s\n" % node.hex().encode("ascii")


@command("listkeys", "namespace")
def listkeys(s: Session, namespace: bytes) -> bytes:
    return b"\n".join(b"%s\t%s" % (k, v) for k, v in sorted(s.repo.listkeys(namespace).items()))


def _manifest(s: Session) -> list[bytes]:
    store = cb.open_bundle_store(s.config)
    lines = cb.manifest_lines(s.config, store, cb.repo_name_of(s.config, s.repo), s.repo, s.bundle_url)
    return cb.filter_compression(lines, s.client_engines)


@command("clonebundles_manifest", "*")
def clonebundles_manifest(s: Session, others: dict[str, bytes]) -> bytes:
    # (the client's store_fingerprint=1 says it understands STORE-FINGERPRINT entries: they stay)
    return b"".join(_manifest(s))


@command("clonebundles")
def clonebundles(s: Session) -> bytes:
    """The manifest for clients older than clonebundles_manifest, filtered as hg does."""
    return b"".join(cb.filter_legacy(_manifest(s)))


@command("get_cached_bundle_inline", "path", kind="stream")
def get_cached_bundle_inline(s: Session, path: bytes) -> Stream:
    """The bytes of a generated clone bundle an inline (peer-bundle-cache://) entry names: its
    length as a uvarint, then the file."""
    store = cb.open_bundle_store(s.config)
    repo_name = cb.repo_name_of(s.config, s.repo)
    name = path.decode("ascii", "replace")
    # only a bundle the index names (never a path the client makes up)
    known = repo_name is not None and any(e.name == name for e in cb.read_index(store, repo_name))
    opened = store.open_read(bundle_key(repo_name, name)) if known and repo_name is not None else None
    if opened is None:
        raise Abort(f"clonebundle {name} does not exist")
    fh, size = opened

    def chunks() -> Iterator[bytes]:
        # (opened before the status line: a vanished file is still an error)
        with contextlib.closing(fh):
            yield uvarint(size)
            while data := fh.read(STREAM_READ):
                yield data
    return Stream(chunks, prefer_uncompressed=True)


@command("protocaps", "caps")
def protocaps(s: Session, caps: bytes) -> bytes:
    return b"OK"


@command("pushkey", "namespace key old new", permission="push")
def pushkey(s: Session, namespace: bytes, key: bytes, old: bytes, new: bytes) -> bytes:
    repo = engine_repo(s.repo)
    output: list[str] = []  # hooks' output: after the answer, which hg's client shows as `remote:`
    args = pushkey_hook_args(namespace, key, old, new)
    with repo.lock():
        before = repo.bookmarks().get(key)
        check_pushkey(s.push, repo, namespace, key, new)
        ok = s.push is None or s.push.prepushkey(repo, output, args)
        if ok:
            with repo.transaction(b"pushkey") as tr:
                ok = repo.pushkey(tr, namespace, key, old, new)
    if s.push is not None:
        s.push.run_hooks(repo, "pushkey", output, throw=False, args={**args, "ret": "1" if ok else "0"})
    if ok and namespace == b"bookmarks" and s.push is not None:
        s.push.emit_push(repo, [], {key: (before, bytes.fromhex(new.decode("ascii")) if new else None)}, [])
    return b"%d\n" % bool(ok) + "".join(output).encode("utf-8")


@command("batch", "cmds *")
def batch(s: Session, cmds: bytes, others: dict[str, bytes]) -> bytes:
    results = []
    for name, args in decode_batch(cmds):
        sub = COMMANDS.get(name)
        if sub is None:
            raise BadRequest(f"batch: unknown command {name!r}")
        if not sub.batchable or sub.name == "batch":
            raise BadRequest(f"batch: command {name!r} cannot be batched")
        answer = sub.func(s, **bind_args(sub, args))
        assert isinstance(answer, bytes), "batchable commands answer bytes"
        results.append(batch_escape(answer))
    return b";".join(results)


# -- stream commands --------------------------------------------------------------------------------

@command("getbundle", "*", kind="stream")
def getbundle(s: Session, others: dict[str, bytes]) -> Stream:
    plan = pull.getbundle(s.config, s.repo, others)
    return Stream(plan.chunks, prefer_uncompressed=plan.prefer_uncompressed)


@command("changegroup", "roots", kind="stream")
def changegroup(s: Session, roots: bytes) -> Stream:
    if not s.config.hg.bundle1:
        raise BundleRequired()
    return Stream(pull.changegroup_legacy(s.repo, decode_nodes(roots, "roots"), None))


@command("changegroupsubset", "bases heads", kind="stream")
def changegroupsubset(s: Session, bases: bytes, heads: bytes) -> Stream:
    if not s.config.hg.bundle1:
        raise BundleRequired()
    return Stream(pull.changegroup_legacy(s.repo, decode_nodes(bases, "bases"), decode_nodes(heads, "heads")))


@command("stream_out", kind="stream")
def stream_out(s: Session) -> Stream:
    repo = s.repo
    return Stream(lambda: streamclone.stream_out(s.config, repo), raw=True)


@command("unbundle", "heads", permission="push", kind="push")
def unbundle(s: Session, heads: bytes) -> PushReply:
    """Apply the pushed bundle (the session's payload); s.repo is an AbsentRepo when the push may
    create the repository."""
    if s.payload is None:
        raise BadRequest("unbundle: no bundle in the request")
    return apply_push(s.config, s.repo, heads, s.payload, s.check_lfs, s.push)
