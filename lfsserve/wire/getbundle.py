"""Pull for wire v1: what `getbundle` (bundle2, or a bare changegroup 01 for bundle1 clients)
and the legacy `changegroup` / `changegroupsubset` commands send, as lazy byte generators.
Plain synchronous code run in executor threads; no HTTP.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..config import Config
from ..hg import bundle2, changegroup, dagop, obsolete
from ..hg.bundle2 import Bundle2Error, OutPart
from ..hg.error import Abort, HgError, UnknownRevision
from ..hg.node import NULLID
from ..hg.phases import DRAFT, PUBLIC, SECRET
from ..hg.repository import Repository
from ..repos import ServedRepo, engine_repo
from .capabilities import BundleRequired, stream_allowed
from .protocol import BadRequest, decode_nodes
from .streamclone import StreamPlan, stream2_part, stream_plan

__all__ = ["GetbundlePlan", "changegroup_legacy", "getbundle", "obsmarkers_part", "parse_bundlecaps", "phase_heads",
           "tags_fnodes"]

log = logging.getLogger(__name__)


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


def getbundle(config: Config, repo: ServedRepo, args: dict[str, bytes]) -> GetbundlePlan:
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
        engine = engine_repo(repo)
        return GetbundlePlan(lambda: changegroup.generate(engine, revs, "01"))
    b2caps = b2caps or {}
    opts = {name: _bool(args, name, name == "cg") for name in _BOOL_ARGS}
    listkeys = [ns for ns in args.get("listkeys", b"").split(b",") if ns]
    if opts["obsmarkers"] and not repo.config.evolution.exchange:
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


def _missing(repo: ServedRepo, common: list[bytes], heads: list[bytes]) -> list[int]:
    heads = heads or list(repo.heads())
    heads = [h for h in heads if h != NULLID]
    if not heads:
        return []
    return list(repo.missing([c for c in common if c != NULLID], heads))


def _cg_version(repo: Repository, b2caps: dict[str, list[str]]) -> str:
    ours = set(changegroup.supported_versions(repo))
    theirs = set(b2caps.get("changegroup", ["01"]))
    common = ours & theirs
    if not common:
        raise Abort("no common changegroup version",
                    hint=("this repository stores LFS files and needs changegroup 03; enable the lfs "
                          "extension on the client") if repo.has_lfs else None)
    return max(common)


def _plan_parts(config: Config, repo: ServedRepo, heads: list[bytes], common: list[bytes],
                b2caps: dict[str, list[str]], opts: dict[str, bool],
                listkeys: list[bytes]) -> Callable[[], Iterator[OutPart]]:
    """Check everything that can be checked up front; return a generator function of the parts."""
    if opts["stream"]:
        if not stream_allowed(config, repo):
            raise Abort("stream data requested but server does not allow this feature",
                        hint="well-behaved clients should not be requesting stream data from "
                             "servers not advertising it; the client may be buggy")
        if "v2" not in b2caps.get("stream", []):
            raise Abort("the client does not support stream clone v2 (stream=v2 bundle2 capability)")
        streamed = engine_repo(repo)
        engine: Repository | None = streamed
        stream_files: StreamPlan | None = stream_plan(streamed)
        revs: list[int] = []
    else:
        stream_files = None
        revs = _missing(repo, common, heads) if opts["cg"] else []
        # Only an existing repository has revisions to send.
        engine = engine_repo(repo) if revs else None
    version = _cg_version(engine, b2caps) if engine is not None and revs else "01"
    if opts["bookmarks"] and "bookmarks" not in b2caps:
        raise Abort("no common bookmarks exchange method")
    if opts["phases"] and "heads" not in b2caps.get("phases", []):
        raise Abort("no common phases exchange method")
    requested_heads = [h for h in (heads or repo.heads()) if h != NULLID]

    def parts() -> Iterator[OutPart]:
        if stream_files is not None and engine is not None:
            yield stream2_part(engine, stream_files)
        elif revs and engine is not None:
            yield OutPart(b"CHANGEGROUP", [(b"version", version.encode("ascii"))],
                          [(b"nbchanges", b"%d" % len(revs))],
                          changegroup.generate(engine, revs, version))
        if opts["bookmarks"]:
            marks = sorted(repo.bookmarks().items())
            if marks:
                yield OutPart(b"BOOKMARKS", data=bundle2.encode_bookmarks(marks))
        for ns in listkeys:
            yield OutPart(b"LISTKEYS", [(b"namespace", ns)], data=bundle2.encode_listkeys(repo.listkeys(ns)))
        if opts["obsmarkers"] and isinstance(repo, Repository):
            part = obsmarkers_part(repo, requested_heads, b2caps)
            if part is not None:
                yield part
        if opts["phases"]:
            yield OutPart(b"PHASE-HEADS", data=bundle2.encode_phase_heads(phase_heads(repo, requested_heads)))
        if revs and engine is not None and "hgtagsfnodes" in b2caps:
            pairs = tags_fnodes(engine, requested_heads)
            if pairs:
                yield OutPart(b"hgtagsfnodes", data=bundle2.encode_tagsfnodes(pairs))

    return parts


def phase_heads(served: ServedRepo, heads: list[bytes]) -> dict[int, list[bytes]]:
    """The phase-heads a pull of `heads` gets: every head public on a publishing server; else each
    head under its phase, plus the public heads hidden below draft heads."""
    if served.publishing:
        return {PUBLIC: sorted(heads)}
    if not heads:
        return {}
    repo = engine_repo(served)
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


def obsmarkers_part(repo: Repository, heads: list[bytes], b2caps: dict[str, list[str]]) -> OutPart | None:
    """The `obsmarkers` part of a pull of `heads`: the markers relevant to their ancestors, in
    the newest format both sides read (None: no marker, or no common format)."""
    obs = repo.obsstore
    if not obs:
        return None
    theirs = {int(v[1:]) for v in b2caps.get("obsmarkers", []) if v[1:].isdigit() and v.startswith("V")}
    common = sorted(theirs & set(obsolete.FORMATS))
    if not common:
        return None
    cl = repo.changelog
    head_revs = [r for r in (cl.get_rev(h) for h in heads) if r is not None and r >= 0]
    ancestors = dagop.ancestors_mask(repo.parents_list, head_revs)
    nodes = []
    for node in {*obs.predecessors, *obs.successors, *obs.children}:
        r = cl.get_rev(node)
        if r is not None and r >= 0 and ancestors[r]:
            nodes.append(node)
    markers = obsolete.sorted_markers(obs.relevant(nodes))
    if not markers:
        return None
    return OutPart(b"OBSMARKERS", data=obsolete.encode_markers(markers, common[-1]))


MAX_TAGS_FNODES_HEADS = 64


def tags_fnodes(repo: Repository, heads: list[bytes]) -> list[tuple[bytes, bytes]]:
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


def changegroup_legacy(repo: ServedRepo, roots: list[bytes],
                       heads: list[bytes] | None) -> Callable[[], Iterator[bytes]]:
    """`changegroup` / `changegroupsubset`: cg01 of the descendants of `roots` up to `heads`."""
    common: list[bytes] = []
    for r in roots:
        if r == NULLID:
            continue
        if not isinstance(repo, Repository) or repo.changelog.get_rev(r) is None:
            raise UnknownRevision(r.hex())
        common.extend(p for p in repo.changelog.parents(r) if p != NULLID)
    revs = _missing(repo, common, heads or [])
    engine = engine_repo(repo)
    return lambda: changegroup.generate(engine, revs, "01")
