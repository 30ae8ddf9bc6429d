"""Push for wire v1: what `unbundle` does with a pushed bundle (bundle2 with its check:* parts,
or bundle1), under the engine's store lock and transaction, and the reply the client expects.
Plain synchronous code run in an executor thread; no HTTP.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from ..config import Config
from ..hg import bundle2
from ..hg.bundle2 import Bundle2Error, OutPart, UnsupportedContent
from ..hg.error import Abort, HgError, PushRaced
from ..hg.phases import DRAFT, PUBLIC
from ..hg.repository import Repository
from ..repos import AbsentRepo
from .capabilities import BundleRequired, repo_heads
from .protocol import BadRequest

__all__ = ["PushOptions", "PushReply", "check_heads", "parse_unbundle_heads", "unbundle"]

log = logging.getLogger(__name__)


@dataclass
class PushOptions:
    publishing: bool
    lock_timeout: float
    # Called (in this thread) with the oids of the lfs pointers a push stores; returns those that are
    # not acceptable. None: no check.
    check_lfs: Callable[[set[str]], set[str]] | None = None


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


def check_heads(repo, their_heads: list[bytes], context: str) -> None:
    if their_heads == [b"force"]:
        return
    heads = repo_heads(repo)
    digest = hashlib.sha1(b"".join(sorted(heads))).digest()
    if their_heads == [b"hashed", digest] or sorted(their_heads) == sorted(heads):
        return
    raise PushRaced(f"repository changed while {context} - please try again")


def unbundle(config: Config, repo_path: Path, repo, heads_arg: bytes, body: BinaryIO,
             opts: PushOptions) -> PushReply:
    """Apply a pushed bundle. `repo` is the opened repository, or None when it does not exist and
    may be created (it then is, and removed again if the push fails)."""
    their_heads = parse_unbundle_heads(heads_arg)
    # As hg: the heads argument is checked before the bundle is even looked at, and a mismatch is
    # the plain "0\n<message>" answer whatever the bundle's format.
    try:
        check_heads(repo if repo is not None else AbsentRepo(opts.publishing), their_heads, "preparing changes")
    except PushRaced as exc:
        return PushReply(b"0\n%s\n" % exc.message.encode("utf-8"))
    magic = body.read(4)
    if magic == b"HG20":
        kind = "bundle2"
    elif magic == b"HG10":
        kind = "bundle1"
        algo = body.read(2)
        if algo not in (b"UN", b"GZ", b"BZ"):
            raise BadRequest(f"unbundle: unknown bundle1 compression {algo!r}")
    else:
        raise BadRequest("unbundle: the request body is not a Mercurial bundle "
                         f"(starts with {magic[:4]!r}, expected HG20 or HG10)")
    if kind == "bundle1" and not config.hg.bundle1:
        raise BundleRequired()

    created = False
    if repo is None:
        repo = Repository.init(repo_path)
        created = True
    repo.publishing = opts.publishing
    ok = False
    try:
        if kind == "bundle1":
            reply = _apply_bundle1(repo, their_heads, bundle2.decompressing_reader(
                body, {b"UN": "UN", b"GZ": "GZ", b"BZ": "_truncatedBZ"}[algo]), opts)
        else:
            reply = _apply_bundle2(repo, body, opts)
        ok = reply.changed
        return reply
    finally:
        if created and not ok:
            shutil.rmtree(repo_path, ignore_errors=True)


def _added_message(result) -> str:
    n = len(result.added)
    revs = getattr(result, "file_revisions", getattr(result, "revisions", None))
    files = getattr(result, "files", None)
    msg = f"added {n} changesets"
    if revs is not None and files is not None:
        msg += f" with {revs} changes to {files} files"
    dh = result.heads_after - result.heads_before
    if dh > 0:
        msg += f" (+{dh} heads)"
    elif dh < 0:
        msg += f" ({dh} heads)"
    return msg + "\n"


def _check_lfs(oids: set[str], opts: PushOptions) -> None:
    if not oids or opts.check_lfs is None:
        return
    bad = opts.check_lfs(oids)
    if bad:
        shown = ", ".join(sorted(bad)[:5]) + (" ..." if len(bad) > 5 else "")
        raise Abort(f"push refused: {len(bad)} LFS object(s) referenced by the pushed changesets are not "
                    f"on this server ({shown})",
                    hint="push with the lfs extension enabled so the blobs are uploaded first")


def _apply_bundle1(repo, their_heads, stream, opts: PushOptions) -> PushReply:
    output: list[str] = []
    try:
        with repo.lock(timeout=opts.lock_timeout):
            check_heads(repo, their_heads, "uploading changes")
            with repo.transaction(b"push") as tr:
                output.append("adding changesets\nadding manifests\nadding file changes\n")
                result = repo.add_changegroup(tr, stream, "01")
                if opts.publishing and result.added:
                    repo.phases_advance(tr, PUBLIC, result.added)
                _check_lfs(set(result.lfs_oids), opts)
                if result.added:
                    output.append(_added_message(result))
    except PushRaced as exc:
        return PushReply(b"0\n%s\n" % exc.message.encode("utf-8"))
    except (HgError, Bundle2Error) as exc:
        if len(output) > 1:
            output.pop()
        output.append(f"transaction abort!\nrollback completed\nabort: {exc.message}\n")
        if getattr(exc, "hint", None):
            output.append(f"({exc.hint})\n")
        return PushReply(b"0\n" + "".join(output).encode("utf-8"))
    return PushReply(b"%d\n%s" % (result.return_code, "".join(output).encode("utf-8")),
                     changed=bool(result.added))


MAX_SMALL_PART = 16 * 1024 * 1024


class _PushkeyFailed(HgError):
    def __init__(self, part_id: int, params: dict[bytes, bytes]):
        super().__init__(f"failed to update value for {params.get(b'namespace', b'').decode()}/"
                         f"{params.get(b'key', b'').decode('utf-8', 'replace')}")
        self.part_id = part_id
        self.params = params


def _apply_bundle2(repo, body: BinaryIO, opts: PushOptions) -> PushReply:
    """Process the parts in order under the store lock; the transaction opens on the first write.

    The reply lists, in order, each part's reply parts then the output printed while handling it,
    then one output part for the transaction close. On failure: the output so far, the
    rollback notice, and one error part; nothing of the push is kept.
    """
    reply: list[OutPart] = []
    final: list[str] = []
    state: dict = {"replycaps": {}}
    lfs_oids: set[str] = set()
    lazy = _LazyTransaction(repo)
    try:
        reader = bundle2.BundleReader(body)
        with repo.lock(timeout=opts.lock_timeout):
            with lazy:
                for part in reader.parts():
                    texts: list[str] = []
                    try:
                        _handle_part(repo, part, lazy, texts, final, reply, state, opts, lfs_oids)
                    finally:
                        if texts:
                            reply.append(OutPart(b"output", [], [(b"in-reply-to", b"%d" % part.id)],
                                                 "".join(texts).encode("utf-8")))
                _check_lfs(lfs_oids, opts)
        reply.append(OutPart(b"output", data="".join(final).encode("utf-8")))
        return PushReply(bundle2.encode_parts(reply), changed=lazy.started)
    except (HgError, Bundle2Error) as exc:
        parts = [p for p in reply if p.type == b"output"]
        rollback = "transaction abort!\nrollback completed\n" if lazy.started else ""
        parts.append(OutPart(b"output", data=rollback.encode("utf-8")))
        parts.append(_error_part(exc, state["replycaps"]))
        log.info("push refused: %s", exc)
        return PushReply(bundle2.encode_parts(parts))


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
        adv = [(k, exc.params[k]) for k in (b"namespace", b"key", b"new", b"old", b"ret") if k in exc.params]
        return OutPart(b"ERROR:PUSHKEY", [(b"in-reply-to", b"%d" % exc.part_id)], adv)
    return bundle2.abort_part(exc)


class _LazyTransaction:
    """Opens the engine transaction on first use, so a push that only fails its checks writes nothing."""

    def __init__(self, repo):
        self.repo = repo
        self._cm = None
        self.tr = None

    @property
    def started(self) -> bool:
        return self.tr is not None

    def get(self):
        if self.tr is None:
            self._cm = self.repo.transaction(b"push")
            self.tr = self._cm.__enter__()
        return self.tr

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._cm is not None:
            return self._cm.__exit__(*exc)
        return False


def _handle_part(repo, part, lazy: _LazyTransaction, texts: list[str], final: list[str],
                 reply: list[OutPart], state, opts: PushOptions, lfs_oids: set[str]) -> None:
    name = part.name
    pid = part.id
    if name == b"replycaps":
        state["replycaps"] = bundle2.decode_caps(part.read_all(MAX_SMALL_PART))
    elif name == b"check:heads":
        theirs = bundle2.decode_nodes(part.read_all(MAX_SMALL_PART))
        if sorted(theirs) != sorted(repo_heads(repo)):
            raise PushRaced("remote repository changed while pushing - please try again")
    elif name == b"check:updated-heads":
        theirs = bundle2.decode_nodes(part.read_all(MAX_SMALL_PART))
        current = {h for hs in repo.branchmap().values() for h in hs}
        for h in theirs:
            if h not in current:
                raise PushRaced("remote repository changed while pushing - please try again")
    elif name == b"check:phases":
        for phase, node in bundle2.decode_phase_heads(part.read_all(MAX_SMALL_PART)):
            rev = repo.changelog.get_rev(node)
            actual = repo.phase(rev) if rev is not None else None
            if actual != phase:
                names = ("public", "draft", "secret")
                raise PushRaced("remote repository changed while pushing - please try again "
                                f"({node[:6].hex()} is {names[actual] if actual is not None else 'missing'} "
                                f"expected {names[phase]})")
    elif name == b"check:bookmarks":
        marks = repo.bookmarks()
        for book, node in bundle2.decode_bookmarks(part.read_all(MAX_SMALL_PART)):
            if marks.get(book) != node:
                old = marks.get(book)
                raise PushRaced('remote repository changed while pushing - please try again '
                                f'(bookmark "{book.decode("utf-8", "replace")}" move from '
                                f'{old.hex()[:12] if old else "missing"} to {node.hex()[:12] if node else "missing"})')
    elif name == b"changegroup":
        unknown = [k for k in part.mandatory_params if k not in (b"version", b"nbchanges", b"targetphase")]
        if unknown:
            raise UnsupportedContent(part.type.lower(), unknown)
        version = part.params.get(b"version", b"01").decode("ascii", "replace")
        if version not in ("01", "02", "03"):
            raise UnsupportedContent(part.type.lower(), [b"version=" + version.encode()])
        tr = lazy.get()
        texts.append("adding changesets\nadding manifests\nadding file changes\n")
        result = repo.add_changegroup(tr, part, version)
        target = part.params.get(b"targetphase")
        if result.added and (opts.publishing or target == b"0"):
            repo.phases_advance(tr, PUBLIC, result.added)
        lfs_oids.update(result.lfs_oids)
        if result.added:
            final.append(_added_message(result))
        reply.append(OutPart(b"reply:changegroup", [],
                             [(b"in-reply-to", b"%d" % pid), (b"return", b"%d" % result.return_code)]))
    elif name == b"phase-heads":
        entries = bundle2.decode_phase_heads(part.read_all(MAX_SMALL_PART))
        tr = None
        for phase in (PUBLIC, DRAFT):
            nodes = [n for p, n in entries if p == phase]
            if not nodes:
                continue
            tr = tr or lazy.get()   # the engine refuses unknown nodes (LookupError)
            repo.phases_advance(tr, phase, nodes)
    elif name == b"bookmarks":
        changes: dict[bytes, bytes | None] = {}
        for book, node in bundle2.decode_bookmarks(part.read_all(MAX_SMALL_PART)):
            if b"@" in book:
                raise Abort(f"cannot accept divergent bookmark {book.decode('utf-8', 'replace')}!")
            changes[book] = node  # unknown nodes: the engine raises LookupError
        if changes:
            repo.set_bookmarks(lazy.get(), changes)
    elif name == b"pushkey":
        params = part.params
        missing = [k for k in (b"namespace", b"key", b"old", b"new") if k not in params]
        if missing:
            raise Bundle2Error("pushkey part without " + ", ".join(k.decode() for k in missing))
        ok = bool(repo.pushkey(lazy.get(), params[b"namespace"], params[b"key"], params[b"old"], params[b"new"]))
        reply.append(OutPart(b"REPLY:PUSHKEY", [], [(b"in-reply-to", b"%d" % pid), (b"return", b"%d" % ok)]))
        if part.mandatory and not ok:
            raise _PushkeyFailed(pid, dict(params))
    elif part.mandatory:
        raise UnsupportedContent(name)
    # advisory parts we do not know (cache:rev-branch-cache, obsmarkers hints...) are ignored
