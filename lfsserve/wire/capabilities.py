"""What a wire v1 server offers: the `capabilities` answer, the bundle2 capabilities, whether a
stream clone is allowed, and the discovery view shared by every command (heads as the wire shows
them, the bundle1 refusal). Plain synchronous code; no HTTP.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable

from ..config import Config
from ..hg import bundle2
from ..hg.error import HgError
from ..hg.node import NULLID
from ..repos import ServedRepo

__all__ = [
    "BundleRequired",
    "capabilities_bytes",
    "clonebundles_manifest",
    "http_capabilities",
    "repo_heads",
    "server_bundle2_caps",
    "stream_allowed",
    "stream_requirements",
    "topic_capabilities",
]

# Requirements a stream-clone client need not share with us (they are about the working copy or
# the store's file naming, which the client redoes on its side).
STREAM_IGNORABLE = frozenset({
    "sparse", "shared", "relshared", "share-safe", "exp-dirstate-tracked-hint", "dirstate-v2",
    "dotencode", "exp-plain-encode", "fncache", "exp-fileindex-v1", "store", "persistent-nodemap",
})

BUNDLE2_REQUIRED = ("incompatible Mercurial client; bundle2 required\n"
                    "(see https://www.mercurial-scm.org/wiki/IncompatibleClient)\n")


class BundleRequired(HgError):
    """A bundle1 exchange while hg.bundle1 is off; answered as application/hg-error."""

    def __init__(self) -> None:
        super().__init__(BUNDLE2_REQUIRED)



def repo_heads(repo: ServedRepo) -> list[bytes]:
    """Heads as the wire shows them: an empty repository has the single head NULLID."""
    return list(repo.heads()) or [NULLID]


def stream_requirements(repo: ServedRepo) -> list[str]:
    return sorted(set(repo.requirements) - STREAM_IGNORABLE)


def stream_allowed(config: Config, repo: ServedRepo) -> bool:
    """As hg serve: stream clones are off while the repository has secret changesets (the raw
    store would hand them out)."""
    return config.hg.stream_clone and not repo.has_secret()


def server_bundle2_caps(streamable: bool, obsmarkers: bool = False) -> dict[str, list[str]]:
    """The bundle2 capabilities; `obsmarkers`: the repository exchanges obsolescence markers
    (both formats, as hg advertises them when experimental.evolution.exchange is on)."""
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
    if obsmarkers:
        caps["obsmarkers"] = ["V0", "V1"]
    return caps


def http_capabilities(config: Config, postargs: bool = False) -> list[str]:
    """What the HTTP transport adds to the answer (hg's httpv1 protocol handler does the same):
    argument headers, media types, compression engines, and arguments in the POST body. An SSH
    transport adds nothing.

    `httppostargs` is offered only with `postargs` (the HTTP transport's judgement that this
    client cannot be sent a 401 later) and `hg.httppostargs`."""
    caps = ["httpheader=1024", "httpmediatype=0.1rx,0.1tx,0.2tx"]
    if config.hg.compression:
        caps.append("compression=" + ",".join(config.hg.compression))
    if postargs and config.hg.httppostargs:
        caps.append("httppostargs")
    return caps


def capabilities_bytes(config: Config, repo: ServedRepo, transport_caps: Iterable[str] = ()) -> bytes:
    """The `capabilities` answer for `repo` (an engine Repository or an AbsentRepo), with what
    the transport adds (`transport_caps`, e.g. http_capabilities).

    As hg serve 7.2.4 advertises, minus what lfsserve does not do: no `remote-changegroup`
    (the server would fetch client-named URLs) and hence no `digests`, no changegroup 04 and
    hence no `delta-compression`. lfsserve always serves LFS, so `lfs` is always there.
    """
    streamable = stream_allowed(config, repo)
    b2caps = server_bundle2_caps(streamable, repo.config.evolution.exchange)
    caps = [
        "batch",
        "branchmap",
        "bundle2=" + urllib.parse.quote(bundle2.encode_caps(b2caps)),
        "changegroupsubset",
        "getbundle",
        "known",
        "lfs",
        "lookup",
        "pushkey",
        "unbundle=HG10GZ,HG10BZ,HG10UN",
        "unbundlehash",
    ]
    caps += transport_caps
    caps += topic_capabilities(repo)
    if repo.has_lfs:
        caps.append("lfs-serve")
    if streamable:
        reqs = stream_requirements(repo)
        caps.append("stream" if not set(reqs) - {"revlogv1"} else "streamreqs=" + ",".join(reqs))
    if clonebundles_manifest(repo) is not None:
        caps += ["clonebundles", "clonebundles_manifest"]
    return " ".join(sorted(caps)).encode("ascii")


def topic_capabilities(repo: ServedRepo) -> list[str]:
    """What a server with hg-evolve's topic extension adds for topic-aware clients: its commands
    (`_exttopics_heads`, `tns_heads`, `branchmaptns`) and what a push publishes (all, only what
    has no topic, or nothing)."""
    topics = repo.config.topics
    if not topics.enabled:
        return []
    mode = "all" if repo.publishing else "auto" if topics.publish_bare_branch else "none"
    return ["_exttopics_heads", "ext-topics-publish=" + mode, "ext-topics-tns-heads", "topics", "topics-namespaces"]


def clonebundles_manifest(repo: ServedRepo) -> bytes | None:
    try:
        return (repo.root / ".hg" / "clonebundles.manifest").read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
