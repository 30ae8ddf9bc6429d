"""Pull and push for wire protocol v1: what getbundle sends and what unbundle does with a bundle.

Plain synchronous code run in executor threads, on top of the repository engine (lfsserve.hg):
it assembles getbundle answers (bundle2 parts, or a bare changegroup 01 for bundle1 clients) as
lazy byte generators, and applies pushed bundles (bundle2 with its check:* parts, or bundle1)
under the engine's store lock and transaction, building the reply the client expects. No HTTP.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ..config import Config
from ..hg import bundle2
from ..hg.bundle2 import Bundle2Error, OutPart, UnsupportedContent
from ..hg import changegroup
from ..hg.error import Abort, HgError, PushRaced, UnknownRevision
from ..hg.node import NULLID
from ..hg.phases import DRAFT, PUBLIC, SECRET
from ..hg.repository import Repository
from ..repos import make_dirs, remove_created
from .protocol import BadRequest, decode_nodes

__all__ = [
    "AbsentRepo",
    "BundleRequired",
    "GetbundlePlan",
    "FileTooLarge",
    "PushOptions",
    "capabilities_bytes",
    "changegroup_legacy",
    "getbundle",
    "stream_out",
    "unbundle",
]

log = logging.getLogger(__name__)

# Requirements a stream-clone client need not share with us (they are about the working copy or
# the store's file naming, which the client redoes on its side).
STREAM_IGNORABLE = frozenset({
    "sparse", "shared", "relshared", "share-safe", "exp-dirstate-tracked-hint", "dirstate-v2",
    "dotencode", "exp-plain-encode", "fncache", "exp-fileindex-v1", "store", "persistent-nodemap",
})
# What `hg init` 7.2.4 creates: the answer for a repository that does not exist yet.
DEFAULT_REQUIREMENTS = frozenset({"dotencode", "fncache", "generaldelta", "revlog-compression-zstd",
                                  "revlogv1", "share-safe", "sparserevlog", "store"})

BUNDLE2_REQUIRED = ("incompatible Mercurial client; bundle2 required\n"
                    "(see https://www.mercurial-scm.org/wiki/IncompatibleClient)\n")


class BundleRequired(HgError):
    """A bundle1 exchange while hg.bundle1 is off; answered as application/hg-error."""

    def __init__(self):
        super().__init__(BUNDLE2_REQUIRED)


# -- a repository that does not exist yet ---------------------------------------------------------

class AbsentRepo:
    """Stands in for a repository that a push may create (hg.create_on_push and a writer asking):
    it answers discovery as an empty repository would, so that `hg push` reaches unbundle."""

    has_lfs = False
    requirements = DEFAULT_REQUIREMENTS

    def __init__(self, publishing: bool):
        self.publishing = publishing

    def heads(self) -> list[bytes]:
        return []

    def branchmap(self) -> dict:
        return {}

    def known(self, nodes):
        return [False for _ in nodes]

    def lookup(self, key: bytes) -> bytes:
        if key in (b"tip", b"null", b".", b"0" * 40, b"-1"):
            return NULLID
        raise UnknownRevision(key)

    def listkeys(self, namespace: bytes) -> dict:
        if namespace == b"namespaces":
            return {b"bookmarks": b"", b"namespaces": b"", b"phases": b""}
        if namespace == b"phases":
            return {b"publishing": b"True"} if self.publishing else {}
        return {}

    def bookmarks(self) -> dict:
        return {}

    def missing(self, common, heads) -> list[int]:
        for h in heads:
            if h != NULLID:
                raise UnknownRevision(h.hex())
        return []

    def between(self, pairs):
        return [[] for _ in pairs]

    def branches(self, nodes):
        return [(n, NULLID, NULLID, NULLID) for n in nodes]


def repo_heads(repo) -> list[bytes]:
    """Heads as the wire shows them: an empty repository has the single head NULLID."""
    return list(repo.heads()) or [NULLID]


# -- capabilities ---------------------------------------------------------------------------------

def stream_requirements(repo) -> list[str]:
    return sorted(set(repo.requirements) - STREAM_IGNORABLE)


def has_secret(repo) -> bool:
    """Whether any changeset is secret. Secret is inherited by descendants, so some changelog
    head (counting secret ones) is secret exactly when any changeset is."""
    fast = getattr(repo, "has_secret", None)
    if fast is not None:
        return bool(fast())
    phases = getattr(repo, "phase_array", None)  # cached per phaseroots file; hidden phases count too
    if phases is not None:
        return bool(phases) and max(phases) >= SECRET
    cl = getattr(repo, "changelog", None)
    if cl is None:
        return False
    return any(repo.phase(r) == SECRET for r in cl.heads())


def stream_allowed(config: Config, repo) -> bool:
    """As hg serve: stream clones are off while the repository has secret changesets (the raw
    store would hand them out)."""
    return config.hg.stream_clone and not has_secret(repo)


def server_bundle2_caps(streamable: bool) -> dict[str, list[str]]:
    caps: dict[str, list[str]] = {
        "HG20": [],
        "bookmarks": [],
        "changegroup": ["01", "02", "03"],
        "checkheads": ["related"],
        "error": ["abort", "unsupportedcontent", "pushraced", "pushkey"],
        "hgtagsfnodes": [],
        "listkeys": [],
        "phases": ["heads"],
        "pushkey": [],
    }
    if streamable:
        caps["stream"] = ["v2"]
    return caps


def capabilities_bytes(config: Config, repo, postargs: bool = False) -> bytes:
    """The `capabilities` answer for `repo` (an engine Repository or an AbsentRepo).

    `httppostargs` is offered only with `postargs` (the front end's judgement that this client
    cannot be sent a 401 later) and `hg.httppostargs`.

    As hg serve 7.2.4 advertises, minus what lfsserve does not do: no `remote-changegroup`
    (the server would fetch client-named URLs) and hence no `digests`, no changegroup 04 and
    hence no `delta-compression`. lfsserve always serves LFS, so `lfs` is always there.
    """
    streamable = stream_allowed(config, repo)
    caps = [
        "batch",
        "branchmap",
        "bundle2=" + urllib.parse.quote(bundle2.encode_caps(server_bundle2_caps(streamable))),
        "changegroupsubset",
        "getbundle",
        "httpheader=1024",
        "httpmediatype=0.1rx,0.1tx,0.2tx",
        "known",
        "lfs",
        "lookup",
        "pushkey",
        "unbundle=HG10GZ,HG10BZ,HG10UN",
        "unbundlehash",
    ]
    if config.hg.compression:
        caps.append("compression=" + ",".join(config.hg.compression))
    if postargs and config.hg.httppostargs:
        caps.append("httppostargs")
    if repo.has_lfs:
        caps.append("lfs-serve")
    if streamable:
        reqs = stream_requirements(repo)
        caps.append("stream" if not set(reqs) - {"revlogv1"} else "streamreqs=" + ",".join(reqs))
    if clonebundles_manifest(repo) is not None:
        caps += ["clonebundles", "clonebundles_manifest"]
    return " ".join(sorted(caps)).encode("ascii")


def clonebundles_manifest(repo) -> bytes | None:
    root = getattr(repo, "root", None)
    if root is None:
        return None
    try:
        return (Path(root) / ".hg" / "clonebundles.manifest").read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


# -- getbundle ------------------------------------------------------------------------------------

@dataclass
class GetbundlePlan:
    """What a getbundle answer will be: whether it prefers no compression, and its bytes (lazily)."""

    chunks: Callable[[], Iterator[bytes]]
    prefer_uncompressed: bool = False


_BOOL_ARGS = ("cg", "cbattempted", "stream", "phases", "bookmarks", "obsmarkers")
_KNOWN_GETBUNDLE_ARGS = {"heads", "common", "bundlecaps", "listkeys", *_BOOL_ARGS}


def _bool(args: dict[str, bytes], name: str, default: bool) -> bool:
    if name not in args:
        return default
    return args[name] not in (b"0", b"")


def parse_bundlecaps(value: bytes) -> tuple[set[bytes], dict[str, list[str]] | None]:
    """bundlecaps=HG20,bundle2=<quoted caps blob>: the plain caps and the decoded bundle2 caps."""
    plain: set[bytes] = set()
    b2: dict[str, list[str]] | None = None
    for cap in value.split(b","):
        if not cap:
            continue
        if cap.startswith(b"bundle2="):
            b2 = bundle2.decode_caps(urllib.parse.unquote_to_bytes(cap[len(b"bundle2="):]))
        plain.add(cap)
    return plain, b2


def getbundle(config: Config, repo, args: dict[str, bytes]) -> GetbundlePlan:
    """Plan a getbundle answer. Argument errors raise BadRequest; repository errors raise HgError
    for a bundle1 client, and become an ERROR:ABORT part for a bundle2 client (as hg does)."""
    unknown = set(args) - _KNOWN_GETBUNDLE_ARGS
    if unknown:
        raise BadRequest(f"getbundle: unsupported argument(s) {', '.join(sorted(unknown))} "
                         "(narrow and other extensions are not served)")
    heads = decode_nodes(args.get("heads", b""), "heads")
    common = decode_nodes(args.get("common", b""), "common")
    plain_caps, b2caps = parse_bundlecaps(args.get("bundlecaps", b""))
    bundle2_client = any(c.startswith(b"HG2") for c in plain_caps)
    if not bundle2_client:
        if not config.hg.bundle1:
            raise BundleRequired()
        revs = _missing(repo, common, heads)
        return GetbundlePlan(lambda: changegroup.generate(repo, revs, "01"))
    b2caps = b2caps or {}
    opts = {name: _bool(args, name, name == "cg") for name in _BOOL_ARGS}
    listkeys = [ns for ns in args.get("listkeys", b"").split(b",") if ns]
    if opts["obsmarkers"]:
        raise BadRequest("getbundle: obsolescence markers are not served (the server did not advertise them)")
    try:
        parts = _plan_parts(config, repo, heads, common, b2caps, opts, listkeys)
    except HgError as exc:
        log.info("getbundle refused: %s", exc)
        # Build the part now: `exc` is unbound once the except block ends.
        refusal = bundle2.abort_part(exc)
        return GetbundlePlan(lambda: bundle2.encode_bundle([refusal]))
    return GetbundlePlan(
        lambda: bundle2.encode_bundle(parts(), interrupt_on=(HgError, Bundle2Error, OSError),
                                      on_interrupt=_log_interrupt),
        prefer_uncompressed=opts["stream"])


def _log_interrupt(exc: BaseException) -> None:
    log.error("getbundle interrupted while streaming: %s", exc)


def _missing(repo, common: list[bytes], heads: list[bytes]) -> list[int]:
    heads = heads or list(repo.heads())
    heads = [h for h in heads if h != NULLID]
    if not heads:
        return []
    return list(repo.missing([c for c in common if c != NULLID], heads))


def _cg_version(repo, b2caps: dict[str, list[str]]) -> str:
    ours = set(changegroup.supported_versions(repo))
    theirs = set(b2caps.get("changegroup", ["01"]))
    common = ours & theirs
    if not common:
        raise Abort("no common changegroup version",
                    hint=("this repository stores LFS files and needs changegroup 03; enable the lfs "
                          "extension on the client") if getattr(repo, "has_lfs", False) else None)
    return max(common)


def _plan_parts(config, repo, heads, common, b2caps, opts, listkeys):
    """Check everything that can be checked up front; return a generator function of the parts."""
    if opts["stream"]:
        if not stream_allowed(config, repo):
            raise Abort("stream data requested but server does not allow this feature",
                        hint="well-behaved clients should not be requesting stream data from "
                             "servers not advertising it; the client may be buggy")
        if "v2" not in b2caps.get("stream", []):
            raise Abort("the client does not support stream clone v2 (stream=v2 bundle2 capability)")
        stream_files = _stream_plan(repo)
        revs: list[int] = []
    else:
        stream_files = None
        revs = _missing(repo, common, heads) if opts["cg"] else []
    version = _cg_version(repo, b2caps) if revs else None
    if opts["bookmarks"] and "bookmarks" not in b2caps:
        raise Abort("no common bookmarks exchange method")
    if opts["phases"] and "heads" not in b2caps.get("phases", []):
        raise Abort("no common phases exchange method")
    requested_heads = [h for h in (heads or repo.heads()) if h != NULLID]

    def parts() -> Iterator[OutPart]:
        if stream_files is not None:
            yield _stream2_part(repo, stream_files)
        elif revs:
            yield OutPart(b"CHANGEGROUP", [(b"version", version.encode("ascii"))],
                          [(b"nbchanges", b"%d" % len(revs))],
                          changegroup.generate(repo, revs, version))
        if opts["bookmarks"]:
            marks = sorted(repo.bookmarks().items())
            if marks:
                yield OutPart(b"BOOKMARKS", data=bundle2.encode_bookmarks(marks))
        for ns in listkeys:
            yield OutPart(b"LISTKEYS", [(b"namespace", ns)], data=bundle2.encode_listkeys(repo.listkeys(ns)))
        if opts["phases"]:
            yield OutPart(b"PHASE-HEADS", data=bundle2.encode_phase_heads(phase_heads(repo, requested_heads)))
        if revs and "hgtagsfnodes" in b2caps:
            pairs = tags_fnodes(repo, requested_heads)
            if pairs:
                yield OutPart(b"hgtagsfnodes", data=bundle2.encode_tagsfnodes(pairs))

    return parts


def phase_heads(repo, heads: list[bytes]) -> dict[int, list[bytes]]:
    """The phase-heads a pull of `heads` gets: every head public on a publishing server; else each
    head under its phase, plus the public heads hidden below draft heads."""
    if repo.publishing:
        return {PUBLIC: sorted(heads)}
    cl = repo.changelog
    by_phase: dict[int, set[bytes]] = {}
    for h in heads:
        by_phase.setdefault(repo.phase(cl.rev(h)), set()).add(h)
    drafts = by_phase.get(DRAFT, set())
    if drafts:
        publics = by_phase.get(PUBLIC, set())
        below = [r for r in repo.missing(sorted(publics), sorted(drafts)) if repo.phase(r) == PUBLIC]
        if below:
            inside = set(below)
            has_child = set()
            for r in below:
                for p in cl.parentrevs(r):
                    if p in inside:
                        has_child.add(p)
            by_phase.setdefault(PUBLIC, set()).update(cl.node(r) for r in below if r not in has_child)
    by_phase.pop(SECRET, None)
    return {phase: sorted(nodes) for phase, nodes in by_phase.items()}


MAX_TAGS_FNODES_HEADS = 64


def tags_fnodes(repo, heads: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(head, .hgtags filenode) for heads whose manifest has .hgtags. Only worth it for a few heads
    (each needs one manifest read); the client computes anything missing itself."""
    if len(heads) > MAX_TAGS_FNODES_HEADS:
        return []
    cl = repo.changelog
    out = []
    for h in heads:
        found = repo.manifestlog.find(cl.manifest_node(cl.rev(h)), b".hgtags")
        if found is not None:
            out.append((h, found[0]))
    return out


STREAM_READ = 1024 * 1024


# Cache files hg itself copies in a stream clone (mercurial's cacheutil); the client checks each
# against the changelog before trusting it, so a stale one only costs it a recomputation.
_CACHE_FILE = re.compile(rb"(branch[23](-[a-z.-]+)?|rbc-names-v2|rbc-revs-v2|tags2(-[a-z.-]+)?|hgtagsfnodes1)\Z")
MAX_CACHE_FILE = 8 * 1024 * 1024


@dataclass
class StreamPlan:
    files: list[tuple[bytes, int]]          # store files, read from disk up to their size
    from_memory: dict[bytes, bytes]         # store files sent from a snapshot (phaseroots)
    caches: list[tuple[bytes, bytes]]       # .hg/cache files (stream2 only), snapshots

    def entries(self, stream2: bool) -> list[tuple[bytes, int]]:
        return self.files + ([(n, len(d)) for n, d in self.caches] if stream2 else [])


def _stream_plan(repo) -> StreamPlan:
    """What a stream clone sends: the engine's store files with their sizes, plus, snapshotted
    under the lock: `phaseroots` when the server is not publishing (as hg; a publishing server
    leaves it out so the client sees everything public) and hg's cache files when present."""
    files = [(n, sz) for n, sz in repo.stream_files() if n != b"phaseroots"]
    memory: dict[bytes, bytes] = {}
    caches: list[tuple[bytes, bytes]] = []
    cache_dir = Path(repo.root) / ".hg" / "cache"
    with repo.lock():
        if not repo.publishing:
            try:
                with repo.open_store_file(b"phaseroots") as fh:
                    memory[b"phaseroots"] = fh.read()
            except FileNotFoundError:
                pass
        try:
            names = sorted(os.listdir(cache_dir))
        except (FileNotFoundError, NotADirectoryError):
            names = []
        for name in names:
            bname = os.fsencode(name)
            if not _CACHE_FILE.match(bname):
                continue
            try:
                with open(cache_dir / name, "rb") as fh:
                    data = fh.read(MAX_CACHE_FILE + 1)
            except OSError:
                continue
            if len(data) <= MAX_CACHE_FILE:
                caches.append((bname, data))
    files += [(n, len(d)) for n, d in memory.items()]
    return StreamPlan(files, memory, caches)


def _stream2_part(repo, plan: StreamPlan) -> OutPart:
    entries = plan.entries(stream2=True)
    reqs = ",".join(stream_requirements(repo))
    params = [(b"requirements", urllib.parse.quote(reqs, safe="").encode("ascii")),
              (b"filecount", b"%d" % len(entries)), (b"bytecount", b"%d" % sum(sz for _, sz in entries))]
    return OutPart(b"STREAM2", params, data=_stream_file_data(repo, plan, stream2=True))


def _stream_file_data(repo, plan: StreamPlan, *, stream2: bool) -> Iterator[bytes]:
    for name, size in plan.files:
        bname = os.fsencode(name)
        yield (bundle2.stream2_entry_header(b"s", bname, size) if stream2
               else b"%s\0%d\n" % (bname, size))
        if name in plan.from_memory:
            yield plan.from_memory[name]
            continue
        yield from repo.read_store_file(name, size, STREAM_READ)
    if stream2:
        for name, data in plan.caches:
            yield bundle2.stream2_entry_header(b"c", name, len(data))
            yield data


def stream_out(config: Config, repo) -> Iterator[bytes]:
    """Legacy `stream_out`: `0\\n`, `<files> <bytes>\\n`, then `name\\0size\\n` + data per file."""
    if not stream_allowed(config, repo):
        yield b"1\n"
        return
    plan = _stream_plan(repo)
    entries = plan.entries(stream2=False)
    yield b"0\n%d %d\n" % (len(entries), sum(size for _, size in entries))
    yield from _stream_file_data(repo, plan, stream2=False)


def changegroup_legacy(repo, roots: list[bytes], heads: list[bytes] | None) -> Callable[[], Iterator[bytes]]:
    """`changegroup` / `changegroupsubset`: cg01 of the descendants of `roots` up to `heads`."""
    cl = getattr(repo, "changelog", None)
    common = []
    for r in roots:
        if r == NULLID:
            continue
        if cl is None or cl.get_rev(r) is None:
            raise UnknownRevision(r.hex())
        common.extend(p for p in cl.parents(r) if p != NULLID)
    revs = _missing(repo, common, heads or [])
    return lambda: changegroup.generate(repo, revs, "01")


# -- unbundle -------------------------------------------------------------------------------------

@dataclass
class PushOptions:
    publishing: bool
    lock_timeout: float
    # Called (in this thread) with the oids of the lfs pointers a push stores; returns those that are
    # not acceptable. None: no check.
    check_lfs: Callable[[set[str]], set[str]] | None = None
    # hg.max_file_size: largest file content a pushed revision may keep in plain history (LFS
    # pointers not counted); 0 = no limit.
    max_file_size: int = 0


@dataclass(frozen=True)
class PushLimits:
    """What a pushed bundle may unpack to (hg.max_unpacked_push_size, hg.max_revision_size); 0: no limit."""

    max_unpacked: int = 0
    max_revision: int = 0

    @classmethod
    def of(cls, config: Config) -> PushLimits:
        return cls(config.hg.max_unpacked_push_size, config.hg.max_revision_size)

    def changegroup_source(self, source: BinaryIO) -> BinaryIO:
        """`source` as the changegroup reader must see it: one revision at most max_revision bytes."""
        if not self.max_revision:
            return source
        return bundle2.LimitedReader(source, max_read=self.max_revision,  # type: ignore[return-value]
                                     read_setting="hg.max_revision_size")


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
    may be created at `repo_path` (checked by the caller: nothing there but possibly an empty
    directory). It then is, and if the push changes nothing, only what this call made is removed."""
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

    made: list[Path] | None = None  # set when this request creates the repository
    if repo is None:
        made = make_dirs(repo_path)
        try:
            repo = Repository.init(repo_path)
        except BaseException:
            remove_created(repo_path, made)
            raise
    repo.publishing = opts.publishing
    ok = False
    limits = PushLimits.of(config)
    try:
        if kind == "bundle1":
            stream = bundle2.decompressing_reader(body, {b"UN": "UN", b"GZ": "GZ", b"BZ": "_truncatedBZ"}[algo])
            if limits.max_unpacked:
                stream = bundle2.LimitedReader(stream, max_total=limits.max_unpacked,  # type: ignore[assignment]
                                               total_setting="hg.max_unpacked_push_size")
            reply = _apply_bundle1(repo, their_heads, limits.changegroup_source(stream), opts)
        else:
            reply = _apply_bundle2(repo, body, opts, limits)
        ok = reply.changed
        return reply
    finally:
        if made is not None and not ok:
            repo.close()
            remove_created(repo_path, made)


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


def _file_size_check(opts: PushOptions) -> Callable[[bytes, bytes, int], None] | None:
    limit = opts.max_file_size
    if not limit:
        return None

    def check(path: bytes, node: bytes, size: int) -> None:
        if size > limit:
            raise FileTooLarge(path, size, limit)

    return check


def _apply_bundle1(repo, their_heads, stream, opts: PushOptions) -> PushReply:
    output: list[str] = []
    try:
        with repo.lock(timeout=opts.lock_timeout):
            check_heads(repo, their_heads, "uploading changes")
            with repo.transaction(b"push") as tr:
                output.append("adding changesets\nadding manifests\nadding file changes\n")
                result = repo.add_changegroup(tr, stream, "01", on_file_revision=_file_size_check(opts))
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
        super().__init__(f"failed to update value for {params.get(b'namespace', b'').decode('utf-8', 'replace')}/"
                         f"{params.get(b'key', b'').decode('utf-8', 'replace')}")
        self.part_id = part_id
        self.params = params


def _apply_bundle2(repo, body: BinaryIO, opts: PushOptions, limits: PushLimits = PushLimits()) -> PushReply:
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
        reader = bundle2.BundleReader(body, max_unpacked=limits.max_unpacked,
                                      unpacked_setting="hg.max_unpacked_push_size")
        state["limits"] = limits
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
        limits = state.get("limits") or PushLimits()
        result = repo.add_changegroup(tr, limits.changegroup_source(part), version,
                                      on_file_revision=_file_size_check(opts))
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
