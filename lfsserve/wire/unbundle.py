"""Push for wire v1: what `unbundle` does with a pushed bundle (bundle2 with its check:* parts,
or bundle1), under the engine's store lock and transaction, and the reply the client expects.

Each bundle2 part type is handled by one function registered with `@parthandler`, which gets the
push's one `PushOperation` (repository, lazily opened transaction, reply parts, output) and the
part. Plain synchronous code run in an executor thread; no HTTP.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, cast

from ..config import Config
from ..hg import bundle2, obsolete
from ..hg.bundle2 import Bundle2Error, InPart, OutPart, UnsupportedContent
from ..hg.changegroup import ApplyResult
from ..hg.error import Abort, HgError, PushRaced
from ..hg.phases import DRAFT, PUBLIC
from ..hg.repository import Repository
from ..hg.transaction import Transaction
from ..repos import AbsentRepo, ServedRepo, engine_repo
from .capabilities import BundleRequired, repo_heads
from .protocol import BadRequest
from .pushenv import PushEnv

__all__ = [
    "PART_HANDLERS",
    "FileTooLarge",
    "LfsCheck",
    "PushLimits",
    "PushOperation",
    "PushReply",
    "check_heads",
    "check_pushkey",
    "parse_unbundle_heads",
    "parthandler",
    "pushkey_hook_args",
    "unbundle",
]

log = logging.getLogger(__name__)

class Reader(Protocol):
    """What a changegroup is read from: the bundle1 stream or a bundle2 part."""

    def read(self, n: int = -1) -> bytes: ...


# Called (in the push thread) with the oids of the lfs pointers a push stores; returns those that
# are not acceptable.
LfsCheck = Callable[[set[str]], set[str]]


@dataclass(frozen=True)
class PushLimits:
    """What a pushed bundle may unpack to (hg.max_unpacked_push_size, hg.max_revision_size), and
    the largest file content a pushed revision may keep in plain history (hg.max_file_size; LFS
    pointers not counted); 0: no limit."""

    max_unpacked: int = 0
    max_revision: int = 0
    max_file_size: int = 0

    @classmethod
    def of(cls, config: Config) -> PushLimits:
        return cls(config.hg.max_unpacked_push_size, config.hg.max_revision_size, config.hg.max_file_size)

    def file_revision_check(self) -> Callable[[bytes, bytes, int], None] | None:
        """The engine's on_file_revision callback enforcing max_file_size; None without a limit."""
        limit = self.max_file_size
        if not limit:
            return None

        def check(path: bytes, node: bytes, size: int) -> None:
            if size > limit:
                raise FileTooLarge(path, size, limit)

        return check

    def changegroup_source(self, source: Reader) -> BinaryIO:
        """`source` as the changegroup reader must see it: one revision at most max_revision bytes.
        (The engine declares BinaryIO but reads a changegroup through read() alone.)"""
        if not self.max_revision:
            return cast(BinaryIO, source)
        return cast(BinaryIO, bundle2.LimitedReader(cast(BinaryIO, source), max_read=self.max_revision,
                                                    read_setting="hg.max_revision_size"))


@dataclass
class PushReply:
    """What unbundle answers: a bundle2 reply, or bundle1's `<int>\\n<output>` text."""

    body: bytes
    changed: bool = False   # the repository changed (for logging / caches)


def parse_unbundle_heads(value: bytes) -> list[bytes]:
    """The `heads` argument: space-separated hex words (`force`, `hashed <sha1>`, or nodes)."""
    out = []
    for word in value.split():
        try:
            out.append(bytes.fromhex(word.decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            raise BadRequest(f"unbundle: bad heads argument {word[:50].decode('latin-1')!r}")
    if not out:
        raise BadRequest("unbundle: empty heads argument")
    return out


def check_heads(repo: ServedRepo, their_heads: list[bytes], context: str) -> None:
    if their_heads == [b"force"]:
        return
    heads = repo_heads(repo)
    digest = hashlib.sha1(b"".join(sorted(heads))).digest()
    if their_heads == [b"hashed", digest] or sorted(their_heads) == sorted(heads):
        return
    raise PushRaced(f"repository changed while {context} - please try again")


def refused_reply(magic: bytes, exc: BaseException) -> PushReply:
    """The answer to a push refused before it was applied (e.g. too large to spool), in the form
    of the bundle the client sent (`magic`: its first bytes): an `error:abort` part for bundle2,
    bundle1's `0\n<message>` otherwise."""
    if magic[:4] == b"HG20":
        return PushReply(bundle2.encode_parts([bundle2.abort_part(exc)]))
    return PushReply(b"0\n%s\n" % str(exc).encode("utf-8"))


def unbundle(config: Config, repo: ServedRepo, heads_arg: bytes, body: BinaryIO,
             check_lfs: LfsCheck | None = None, env: PushEnv | None = None) -> PushReply:
    """Apply a pushed bundle to `repo`: an opened repository, or an AbsentRepo when the push may
    create it (the opener checked that nothing but possibly an empty directory is there). It then
    is, and if the push changes nothing, only what this call made is removed. `check_lfs`: None,
    no check. `env`: who pushes, with the hooks, rights and webhooks around the push (None: none)."""
    their_heads = parse_unbundle_heads(heads_arg)
    # As hg: the heads argument is checked before the bundle is even looked at, and a mismatch is
    # the plain "0\n<message>" answer whatever the bundle's format.
    try:
        check_heads(repo, their_heads, "preparing changes")
    except PushRaced as exc:
        return PushReply(b"0\n%s\n" % exc.message.encode("utf-8"))
    magic = body.read(4)
    algo = b""
    if magic == b"HG20":
        kind = "bundle2"
    elif magic == b"HG10":
        kind = "bundle1"
        algo = body.read(2)
        if algo not in (b"UN", b"GZ", b"BZ"):
            raise BadRequest(f"unbundle: unknown bundle1 compression {algo!r}")
    elif magic[:1] == b"\0" and len(magic) == 4 and body.seekable():
        # hg's SSH client sends a bundle1 push as the bare changegroup (its first chunk length
        # starts with a zero byte), which hg reads as HG10UN
        kind, algo = "bundle1", b"UN"
        body.seek(-len(magic), io.SEEK_CUR)
    else:
        raise BadRequest("unbundle: the request body is not a Mercurial bundle "
                         f"(starts with {magic[:4]!r}, expected HG20 or HG10)")
    if kind == "bundle1" and not config.hg.bundle1:
        raise BundleRequired()
    if env is not None:
        env.bundle2 = kind == "bundle2"

    limits = PushLimits.of(config)
    with contextlib.ExitStack() as stack:
        absent = repo if isinstance(repo, AbsentRepo) else None
        if absent is not None:
            target = absent.create()
            stack.callback(target.close)
        else:
            target = engine_repo(repo)
        ok = False
        try:
            if kind == "bundle1":
                stream = bundle2.decompressing_reader(body, {b"UN": "UN", b"GZ": "GZ", b"BZ": "_truncatedBZ"}[algo])
                if limits.max_unpacked:
                    stream = bundle2.LimitedReader(stream, max_total=limits.max_unpacked,  # type: ignore[assignment]
                                                   total_setting="hg.max_unpacked_push_size")
                reply = _apply_bundle1(target, their_heads, limits.changegroup_source(stream), check_lfs, limits,
                                       env)
            else:
                reply = _apply_bundle2(target, body, check_lfs, limits, env)
            ok = reply.changed
            return reply
        finally:
            if absent is not None and not ok:
                stack.close()
                absent.undo_create()


def _added_message(result: ApplyResult) -> str:
    msg = f"added {len(result.added)} changesets with {result.file_revisions} changes to {result.files} files"
    dh = result.heads_after - result.heads_before
    if dh > 0:
        msg += f" (+{dh} heads)"
    elif dh < 0:
        msg += f" ({dh} heads)"
    return msg + "\n"


class FileTooLarge(Abort):
    """A pushed file revision larger than hg.max_file_size that is not stored with LFS."""

    def __init__(self, path: bytes, size: int, limit: int):
        name = path.decode("utf-8", "replace")
        super().__init__(
            f"{name} is {_size_words(size)}, over this server's limit of {_size_words(limit)} for files "
            "kept in history (hg.max_file_size); store it with LFS",
            # bundle2 carries at most 255 bytes of hint: no file name in it.
            hint="enable the lfs extension, commit a .hglfs file whose [track] section has a rule such as "
                 f'** = size(">{_size_words(limit, fileset=True)}"), then redo the commit that added the file '
                 "so that LFS stores it, and push again")


def _size_words(n: int, fileset: bool = False) -> str:
    """Bytes as hg's size() fileset writes them (1MB = 1 MiB), or with the exact count."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}" if fileset else f"{n // scale} {unit[0]}iB"
    return f"{n}" if fileset else f"{n} bytes"


def _check_lfs(oids: set[str], check_lfs: LfsCheck | None) -> None:
    if not oids or check_lfs is None:
        return
    bad = check_lfs(oids)
    if bad:
        shown = ", ".join(sorted(bad)[:5]) + (" ..." if len(bad) > 5 else "")
        raise Abort(f"push refused: {len(bad)} LFS object(s) referenced by the pushed changesets are not "
                    f"on this server ({shown})",
                    hint="push with the lfs extension enabled so the blobs are uploaded first")


def _apply_bundle1(repo: Repository, their_heads: list[bytes], stream: BinaryIO,
                   check_lfs: LfsCheck | None, limits: PushLimits = PushLimits(),
                   env: PushEnv | None = None) -> PushReply:
    output: list[str] = []
    try:
        with repo.lock():
            check_heads(repo, their_heads, "uploading changes")
            with repo.transaction(b"push") as tr:
                output.append("adding changesets\nadding manifests\nadding file changes\n")
                result = repo.add_changegroup(tr, stream, "01", on_file_revision=limits.file_revision_check())
                if env is not None:
                    _check_branches(env, result)
                    if repo.publishing and result.added:
                        env.check_publish(repo, result.added)
                if repo.publishing and result.added:
                    repo.phases_advance(tr, PUBLIC, result.added)
                _check_lfs(set(result.lfs_oids), check_lfs)
                if env is not None and result.added:
                    args = _node_args(result.added)
                    env.run_hooks(repo, "pretxnchangegroup", output, throw=True, pending=tr, args=args)
                    env.run_hooks(repo, "pretxnclose", output, throw=True, pending=tr, args=args)
        # said once the transaction is committed
        if result.added:
            output.append(_added_message(result))
        if env is not None:
            _after_push(repo, env, output, result.added, {}, result.lfs_oids)
    except PushRaced as exc:
        return PushReply(b"0\n%s\n" % exc.message.encode("utf-8"))
    except (HgError, Bundle2Error) as exc:
        output.append(f"transaction abort!\nrollback completed\nabort: {exc.message}\n")
        hint = getattr(exc, "hint", None)
        if hint:
            output.append(f"({hint})\n")
        return PushReply(b"0\n" + "".join(output).encode("utf-8"))
    return PushReply(b"%d\n%s" % (result.return_code, "".join(output).encode("utf-8")),
                     changed=bool(result.added))


# -- bundle2 --------------------------------------------------------------------------------------

MAX_SMALL_PART = 16 * 1024 * 1024


class _PushkeyFailed(HgError):
    def __init__(self, part_id: int, params: dict[bytes, bytes]):
        super().__init__(f"failed to update value for {params.get(b'namespace', b'').decode('utf-8', 'replace')}/"
                         f"{params.get(b'key', b'').decode('utf-8', 'replace')}")
        self.part_id = part_id
        self.params = params


@dataclass
class PushOperation:
    """One bundle2 push, as every part handler sees it.

    The transaction opens on the first write (`transaction()`), so a push that only fails its
    checks writes nothing. `reply` collects the reply parts; `output` is what the current part
    prints (sent in reply to it); `final` what the transaction close prints.
    """

    repo: Repository
    check_lfs: LfsCheck | None = None
    limits: PushLimits = PushLimits()
    replycaps: dict[str, list[str]] = field(default_factory=dict)
    reply: list[OutPart] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    final: list[str] = field(default_factory=list)
    lfs_oids: set[str] = field(default_factory=set)
    new_markers: int = 0
    env: PushEnv | None = None
    added: list[bytes] = field(default_factory=list)   # the changesets the push adds
    moved: dict[bytes, tuple[bytes | None, bytes | None]] = field(default_factory=dict)  # bookmark: (old, new)
    pushkeys: list[dict[str, str]] = field(default_factory=list)  # the `pushkey` hooks to run after the push
    _tr_cm: contextlib.AbstractContextManager[Transaction] | None = None
    _tr: Transaction | None = None

    @property
    def started(self) -> bool:
        return self._tr is not None

    def transaction(self) -> Transaction:
        if self._tr is None:
            self._tr_cm = self.repo.transaction(b"push")
            self._tr = self._tr_cm.__enter__()
        return self._tr

    def __enter__(self) -> PushOperation:
        return self

    def __exit__(self, *exc: object) -> bool | None:
        if self._tr_cm is not None:
            return self._tr_cm.__exit__(*exc)  # type: ignore[arg-type]
        return False


PartHandler = Callable[[PushOperation, InPart], None]


@dataclass(frozen=True)
class _Registered:
    handler: PartHandler
    # The mandatory parameters the handler understands; None: it does not look at them.
    params: frozenset[bytes] | None


PART_HANDLERS: dict[bytes, _Registered] = {}


def parthandler(name: bytes, params: Iterable[bytes] | None = None) -> Callable[[PartHandler], PartHandler]:
    """Register the handler of bundle2 part type `name` (lower case), as Mercurial's @parthandler.
    With `params`, a mandatory parameter outside them makes the part unsupported content."""
    def register(fn: PartHandler) -> PartHandler:
        if name in PART_HANDLERS:
            raise RuntimeError(f"bundle2 part {name!r} handled twice")
        PART_HANDLERS[name] = _Registered(fn, frozenset(params) if params is not None else None)
        return fn
    return register


def _apply_bundle2(repo: Repository, body: BinaryIO, check_lfs: LfsCheck | None,
                   limits: PushLimits = PushLimits(), env: PushEnv | None = None) -> PushReply:
    """Process the parts in order under the store lock; the transaction opens on the first write.

    The reply lists, in order, each part's reply parts then the output printed while handling it,
    then one output part for the transaction close. On failure: the output so far, the
    rollback notice, and one error part; nothing of the push is kept.
    """
    op = PushOperation(repo, check_lfs, limits, env=env)
    try:
        reader = bundle2.BundleReader(body, max_unpacked=limits.max_unpacked,
                                      unpacked_setting="hg.max_unpacked_push_size")
        with repo.lock():
            troubles = repo.instabilities() if repo.config.evolution.createmarkers else None
            with op:
                for part in reader.parts():
                    op.output = []
                    try:
                        _handle_part(op, part)
                    finally:
                        if op.output:
                            op.reply.append(OutPart(b"output", [], [(b"in-reply-to", b"%d" % part.id)],
                                                    "".join(op.output).encode("utf-8")))
                _check_lfs(op.lfs_oids, check_lfs)
                if op.started and repo.config.topics.enabled:
                    topic_output: list[str] = []
                    try:
                        _check_topics(op, topic_output)
                    finally:
                        if topic_output:
                            op.reply.append(OutPart(b"output", data="".join(topic_output).encode("utf-8")))
                if env is not None and op.started:
                    hook_output: list[str] = []
                    try:
                        env.run_hooks(repo, "pretxnclose", hook_output, throw=True, pending=op.transaction(),
                                      args=_node_args(op.added))
                    finally:
                        if hook_output:
                            op.reply.append(OutPart(b"output", data="".join(hook_output).encode("utf-8")))
            # hg's transaction summary comes when the transaction closes, before txnclose hooks
            if troubles is not None and op.started:
                op.final.extend(_evolution_report(repo, troubles, op.new_markers))
        if env is not None and (op.started or op.pushkeys):
            _after_push(repo, env, op.final, op.added, op.moved, op.lfs_oids, op.pushkeys)
        op.reply.append(OutPart(b"output", data="".join(op.final).encode("utf-8")))
        return PushReply(bundle2.encode_parts(op.reply), changed=op.started)
    except (HgError, Bundle2Error) as exc:
        parts = [p for p in op.reply if p.type == b"output"]
        rollback = "transaction abort!\nrollback completed\n" if op.started else ""
        parts.append(OutPart(b"output", data=rollback.encode("utf-8")))
        parts.append(_error_part(exc, op.replycaps))
        log.info("push refused: %s", exc)
        return PushReply(bundle2.encode_parts(parts))


def _some(nodes: list[bytes]) -> str:
    """hg-evolve's way of naming the changesets a check refuses: the first, and how many more."""
    first = nodes[0].hex()[:12]
    return first if len(nodes) == 1 else f"{first} and {len(nodes) - 1} more"


def _check_topics(op: PushOperation, output: list[str]) -> None:
    """The push checks of a server with hg-evolve's topic extension, made when the transaction
    closes, as its validators: `topic-mode.server` on the pushed drafts without a topic,
    `tns-reject-push` on those naming a topic namespace, `topic.allow-publish = no` on anything
    the push makes public. An Abort rolls the push back."""
    repo = op.repo
    topics = repo.config.topics
    drafts = [n for n in op.added if repo.tr_phase(n) != PUBLIC]
    if topics.server_mode != "ignore" and drafts:
        untopiced = [n for n in drafts if not repo.tr_extra(n).get(b"topic")]
        if untopiced and topics.server_mode == "warning":
            output.append(f"pushed draft changeset without topic: {_some(untopiced)}\n")
        elif untopiced and topics.server_mode == "enforce":
            raise Abort(f"rejecting draft changesets: {_some(untopiced)}")
        elif untopiced:
            output.append(f"unknown 'topic-mode.server': {topics.server_mode}\n")
    if topics.reject_tns_push:
        with_tns = [n for n in drafts if b"topic-namespace" in repo.tr_extra(n)]
        if with_tns:
            raise Abort(f"rejecting draft changesets with topic namespace: {_some(with_tns)}")
    if not topics.allow_publish:
        published = repo.tr_published()
        if published:
            more = f" and {len(published) - 1} others" if len(published) > 1 else ""
            raise Abort(f"rejecting publishing of changeset {published[0].hex()[:12]}{more}")


def _node_args(added: list[bytes]) -> dict[str, str]:
    """HG_NODE / HG_NODE_LAST of hg's changegroup hooks (nothing when nothing was added)."""
    return {"node": added[0].hex(), "node_last": added[-1].hex()} if added else {}


def _check_branches(env: PushEnv, result: ApplyResult) -> None:
    for node in result.added:
        env.check_branch(result.branches.get(node, b"default"), node)


def _after_push(repo: Repository, env: PushEnv, output: list[str], added: list[bytes],
                moved: dict[bytes, tuple[bytes | None, bytes | None]], lfs_oids: Iterable[str],
                pushkeys: Iterable[dict[str, str]] = ()) -> None:
    """Once the transaction committed and the lock is released: hg's changegroup, incoming,
    pushkey and txnclose hooks (a failure is only a warning), then the webhook event."""
    if added:
        env.run_hooks(repo, "changegroup", output, throw=False, args=_node_args(added))
        for node in added:
            env.run_hooks(repo, "incoming", output, throw=False, args={"node": node.hex()})
    for args in pushkeys:
        env.run_hooks(repo, "pushkey", output, throw=False, args=args)
    env.run_hooks(repo, "txnclose", output, throw=False, args=_node_args(added))
    env.emit_push(repo, added, moved, lfs_oids)


def _handle_part(op: PushOperation, part: InPart) -> None:
    registered = PART_HANDLERS.get(part.name)
    if registered is None:
        if part.mandatory:
            raise UnsupportedContent(part.name)
        return  # advisory parts we do not know (cache:rev-branch-cache, obsmarkers hints...)
    if registered.params is not None:
        unknown = [k for k in part.mandatory_params if k not in registered.params]
        if unknown:
            raise UnsupportedContent(part.type.lower(), unknown)
    registered.handler(op, part)


def _error_part(exc: BaseException, replycaps: dict[str, list[str]]) -> OutPart:
    if isinstance(exc, PushRaced):
        return OutPart(b"ERROR:PUSHRACED", [(b"message", exc.message.encode("utf-8")[:255])])
    if isinstance(exc, UnsupportedContent):
        params = []
        if exc.parttype is not None:
            params.append((b"parttype", exc.parttype[:255]))
        if exc.params:
            params.append((b"params", b"\0".join(exc.params)[:255]))
        return OutPart(b"ERROR:UNSUPPORTEDCONTENT", params)
    if isinstance(exc, _PushkeyFailed) and "pushkey" in replycaps.get("error", ["pushkey"]):
        adv: list[tuple[bytes, bytes]] = [(k, exc.params[k]) for k in (b"namespace", b"key", b"new", b"old", b"ret")
                                          if k in exc.params]
        return OutPart(b"ERROR:PUSHKEY", [(b"in-reply-to", b"%d" % exc.part_id)], adv)
    return bundle2.abort_part(exc)


# -- part handlers --------------------------------------------------------------------------------

_RACED = "remote repository changed while pushing - please try again"


@parthandler(b"replycaps")
def _replycaps(op: PushOperation, part: InPart) -> None:
    op.replycaps = bundle2.decode_caps(part.read_all(MAX_SMALL_PART))


@parthandler(b"check:heads")
def _check_heads(op: PushOperation, part: InPart) -> None:
    theirs = bundle2.decode_nodes(part.read_all(MAX_SMALL_PART))
    if sorted(theirs) != sorted(repo_heads(op.repo)):
        raise PushRaced(_RACED)


@parthandler(b"check:updated-heads")
def _check_updated_heads(op: PushOperation, part: InPart) -> None:
    theirs = bundle2.decode_nodes(part.read_all(MAX_SMALL_PART))
    current = {h for hs in op.repo.branchmap().values() for h in hs}
    if op.repo.config.topics.enabled:
        # a topic client checks the heads of each branch//topic it updates (topic's handler)
        current.update(h for hs in op.repo.branchmap_tns().values() for h in hs)
    for h in theirs:
        if h not in current:
            raise PushRaced(_RACED)


@parthandler(b"check:phases")
def _check_phases(op: PushOperation, part: InPart) -> None:
    repo = op.repo
    for phase, node in bundle2.decode_phase_heads(part.read_all(MAX_SMALL_PART)):
        rev = repo.changelog.get_rev(node)
        actual = repo.phase(rev) if rev is not None else None
        if actual != phase:
            names = ("public", "draft", "secret")
            raise PushRaced(f"{_RACED} ({node[:6].hex()} is {names[actual] if actual is not None else 'missing'} "
                            f"expected {names[phase]})")


@parthandler(b"check:bookmarks")
def _check_bookmarks(op: PushOperation, part: InPart) -> None:
    marks = op.repo.bookmarks()
    for book, node in bundle2.decode_bookmarks(part.read_all(MAX_SMALL_PART)):
        if marks.get(book) != node:
            old = marks.get(book)
            raise PushRaced(f'{_RACED} (bookmark "{book.decode("utf-8", "replace")}" move from '
                            f'{old.hex()[:12] if old else "missing"} to {node.hex()[:12] if node else "missing"})')


@parthandler(b"changegroup", (b"version", b"nbchanges", b"targetphase"))
def _changegroup(op: PushOperation, part: InPart) -> None:
    version = part.params.get(b"version", b"01").decode("ascii", "replace")
    if version not in ("01", "02", "03"):
        raise UnsupportedContent(part.type.lower(), [b"version=" + version.encode()])
    repo = op.repo
    tr = op.transaction()
    op.output.append("adding changesets\nadding manifests\nadding file changes\n")
    result = repo.add_changegroup(tr, op.limits.changegroup_source(part), version,
                                  on_file_revision=op.limits.file_revision_check())
    target = part.params.get(b"targetphase")
    env = op.env
    if env is not None:
        _check_branches(env, result)
        if result.added and (repo.publishing or target == b"0"):
            env.check_publish(repo, result.added)
    if result.added and (repo.publishing or target == b"0"):
        repo.phases_advance(tr, PUBLIC, result.added)
    elif (result.added and repo.config.topics.enabled and repo.config.topics.publish_bare_branch
          and repo.config.topics.server_mode == "ignore"):
        # the topic extension's experimental.topic.publish-bare-branch: what has no topic is public
        # (hg-evolve applies it only where topic-mode.server is `ignore`)
        bare = [n for n in result.added if not repo.topic_of(n)]
        if bare:
            repo.phases_advance(tr, PUBLIC, bare)
    op.lfs_oids.update(result.lfs_oids)
    op.added.extend(result.added)
    if result.added:
        op.final.append(_added_message(result))
    if env is not None and result.added:
        env.run_hooks(repo, "pretxnchangegroup", op.output, throw=True, pending=tr, args=_node_args(result.added))
    op.reply.append(OutPart(b"reply:changegroup", [],
                            [(b"in-reply-to", b"%d" % part.id), (b"return", b"%d" % result.return_code)]))


@parthandler(b"phase-heads")
def _phase_heads(op: PushOperation, part: InPart) -> None:
    entries = bundle2.decode_phase_heads(part.read_all(MAX_SMALL_PART))
    for phase in (PUBLIC, DRAFT):
        nodes = [n for p, n in entries if p == phase]
        if nodes and phase == PUBLIC and op.env is not None:
            op.env.check_publish(op.repo, nodes)
        if nodes:
            op.repo.phases_advance(op.transaction(), phase, nodes)  # the engine refuses unknown nodes (LookupError)


@parthandler(b"bookmarks")
def _bookmarks(op: PushOperation, part: InPart) -> None:
    changes: dict[bytes, bytes | None] = {}
    for book, node in bundle2.decode_bookmarks(part.read_all(MAX_SMALL_PART)):
        if b"@" in book and not book.endswith(b"@"):   # `name@path`, as hg; `@` itself is a bookmark
            raise Abort(f"cannot accept divergent bookmark {book.decode('utf-8', 'replace')}!")
        changes[book] = node  # unknown nodes: the engine raises LookupError
    _note_bookmarks(op, changes)
    if changes and op.env is not None:
        # as hg's server (server.bookmarks-pushkey-compat): each move runs the pushkey hooks, and
        # a refusing prepushkey hook aborts the push
        current = op.repo.bookmarks()
        for book, node in changes.items():
            old = current.get(book)
            args = {"namespace": "bookmarks", "key": book.decode("utf-8", "surrogateescape"),
                    "old": old.hex() if old else "", "new": node.hex() if node else "", "pushkeycompat": "1"}
            op.env.run_hooks(op.repo, "prepushkey", op.output, throw=True, args=args)
            op.pushkeys.append({**args, "ret": "1"})
    if changes:
        op.repo.set_bookmarks(op.transaction(), changes)


def _note_bookmarks(op: PushOperation, changes: dict[bytes, bytes | None]) -> None:
    """Check the bookmark moves against protection and remember them for the webhook event."""
    current = op.repo.bookmarks()
    for book, node in changes.items():
        if current.get(book) == node:
            continue
        if op.env is not None:
            op.env.check_bookmark(book)
        old = op.moved[book][0] if book in op.moved else current.get(book)
        op.moved[book] = (old, node)


def pushkey_hook_args(namespace: bytes, key: bytes, old: bytes, new: bytes) -> dict[str, str]:
    """HG_NAMESPACE, HG_KEY, HG_OLD, HG_NEW of hg's prepushkey and pushkey hooks."""
    return {name: value.decode("utf-8", "surrogateescape")
            for name, value in (("namespace", namespace), ("key", key), ("old", old), ("new", new))}


def check_pushkey(env: PushEnv | None, repo: Repository, namespace: bytes, key: bytes, new: bytes) -> None:
    """The rights a pushkey needs: publishing for a phase moved to public, protection for a
    bookmark (both pushkey transports and the bundle2 part)."""
    if env is None:
        return
    if namespace == b"phases" and new == b"0":
        try:
            env.check_publish(repo, [bytes.fromhex(key.decode("ascii"))])
        except (ValueError, UnicodeDecodeError):
            return  # not a node: the engine answers the pushkey with failure
    elif namespace == b"bookmarks":
        env.check_bookmark(key)


@parthandler(b"pushkey")
def _pushkey(op: PushOperation, part: InPart) -> None:
    params = part.params
    missing = [k for k in (b"namespace", b"key", b"old", b"new") if k not in params]
    if missing:
        raise Bundle2Error("pushkey part without " + ", ".join(k.decode() for k in missing))
    check_pushkey(op.env, op.repo, params[b"namespace"], params[b"key"], params[b"new"])
    key = params[b"key"]
    old = op.repo.bookmarks().get(key)
    args = pushkey_hook_args(params[b"namespace"], key, params[b"old"], params[b"new"])
    ok = op.env is None or op.env.prepushkey(op.repo, op.output, args)
    ok = ok and bool(op.repo.pushkey(op.transaction(), params[b"namespace"], key, params[b"old"], params[b"new"]))
    op.pushkeys.append({**args, "ret": "1" if ok else "0"})
    if ok and params[b"namespace"] == b"bookmarks":
        first = op.moved[key][0] if key in op.moved else old
        op.moved[key] = (first, bytes.fromhex(params[b"new"].decode("ascii")) if params[b"new"] else None)
    op.reply.append(OutPart(b"REPLY:PUSHKEY", [], [(b"in-reply-to", b"%d" % part.id), (b"return", b"%d" % ok)]))
    if part.mandatory and not ok:
        raise _PushkeyFailed(part.id, dict(params))


# The most bytes of obsolescence markers one push may carry (about 90,000 typical markers); the
# part is read whole, so this also bounds the memory a push can make the server use for them.
MAX_OBSMARKERS_PART = 8 * 1024 * 1024


@parthandler(b"obsmarkers")
def _obsmarkers(op: PushOperation, part: InPart) -> None:
    repo = op.repo
    if not repo.config.evolution.createmarkers and not part.mandatory:
        return  # as hg: advisory markers are dropped where the feature is off
    data = part.read_all(MAX_OBSMARKERS_PART)
    _version, markers = obsolete.decode_markers(data)  # raises before anything is written
    new = repo.add_markers(op.transaction(), markers)
    op.new_markers += new
    op.reply.append(OutPart(b"reply:obsmarkers", [], [(b"in-reply-to", b"%d" % part.id), (b"new", b"%d" % new)]))


def _evolution_report(repo: Repository, before: dict[str, frozenset[int]], new_markers: int) -> list[str]:
    """What hg's transaction summary says about obsolescence after a push: the new markers, the
    changesets they obsoleted, and the new troubled changesets of each kind."""
    after = repo.instabilities()
    out = []
    if new_markers:
        out.append(f"{new_markers} new obsolescence markers\n")
    obsoleted = after["obsolete"] - before["obsolete"]
    if obsoleted:
        out.append(f"obsoleted {len(obsoleted)} changesets\n")
    mask = repo.visible_mask
    for kind in ("orphan", "phase-divergent", "content-divergent"):
        delta = sum(1 for r in after[kind] if mask[r]) - sum(1 for r in before[kind] if r < len(mask) and mask[r])
        if delta > 0:
            out.append(f"{delta} new {kind} changesets\n")
    return out
