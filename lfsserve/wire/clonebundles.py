"""Clone bundles: building them from a repository, remembering them, and the manifest a client reads.

A clone bundle is a whole repository in one file (a changegroup bundle, or a stream bundle of the
store files) that a cloning client downloads and applies before pulling whatever is newer. The
server builds them (`build`, after pushes or by `lfsserve clonebundles build`), keeps them in the
bundle store with an index per repository, and answers `clonebundles_manifest` with one line per
current bundle, after the lines of a static `.hg/clonebundles.manifest` if the repository has one.

A bundle is "current" while every head it was built from is still served: it then holds only
changesets the client may have, and the client pulls the rest. Plain synchronous code (worker
threads); no HTTP.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..blobstore.base import StorageUnavailable
from ..blobstore.bundles import BundleStore, BundleStoreBusy, LocalBundleStore, bundle_key
from ..config import Config
from ..hg import bundle2, changegroup
from ..hg.bundle2 import OutPart
from ..hg.repository import Repository
from ..repos import ServedRepo
from .capabilities import stream_allowed, stream_requirements
from .streamclone import stream2_part, stream_plan

__all__ = ["INLINE_SCHEME", "BuildReport", "BundleEntry", "BundleStoreBusy", "build", "current_entries",
           "filter_compression", "filter_legacy", "has_manifest", "manifest_lines", "open_bundle_store",
           "read_index", "repo_name_of"]

log = logging.getLogger(__name__)

INLINE_SCHEME = b"peer-bundle-cache://"
INDEX = "index.json"
STREAM_FORMAT = "none-v2;stream=v2"
# bundle2 stream parameter naming the compression of everything after it, per bundlespec engine
_COMPRESSION = {"zstd": b"ZS", "gzip": b"GZ", "none": None}
WRITE_CHUNK = 1024 * 1024


@dataclass
class BundleEntry:
    name: str                # file name in the store (content-addressed: its SHA-256 is in it)
    format: str              # the configured format it was built for ("zstd-v2", ...)
    bundlespec: str          # what the manifest's BUNDLESPEC says (with cg.version, requirements)
    heads: list[str]         # hex heads it was built from; it holds exactly their ancestors
    revs: int                # changesets in it
    size: int
    sha256: str
    created: float
    requirements: list[str] = field(default_factory=list)  # stream bundles: the store's requirements


@dataclass
class BuildReport:
    built: list[BundleEntry]
    skipped: list[tuple[str, str]]   # (format, why)
    removed: list[str]


def open_bundle_store(config: Config) -> BundleStore:
    """The store clone bundles go to: the blob store's bucket with the S3 backend (the manifest
    then hands out presigned URLs), else files under <root>/clonebundles."""
    if config.storage.backend == "s3":
        from ..blobstore.s3bundles import shared_store  # imports botocore: only when configured

        return shared_store(config.storage, config.clonebundles_dir)
    return LocalBundleStore(config.clonebundles_dir, durable=config.lfs.fsync)


def repo_name_of(config: Config, repo: ServedRepo) -> str | None:
    """The served name of an opened repository (its path below repos_dir); None for one opened
    from elsewhere, which has no generated bundles."""
    rel = Path(os.path.relpath(repo.root, config.repos_dir))
    return None if ".." in rel.parts or rel.is_absolute() else rel.as_posix()


# -- the index --------------------------------------------------------------------------------------

def read_index(store: BundleStore, repo_name: str) -> list[BundleEntry]:
    """The bundles recorded for `repo_name`, newest first; [] when none (or an unreadable index:
    advertising nothing is always safe)."""
    try:
        raw = store.read_small(bundle_key(repo_name, INDEX))
    except StorageUnavailable as exc:
        log.warning("%s: clone bundle index unreadable, advertising none: %s", repo_name, exc)
        return []
    if not raw:
        return []
    try:
        data = json.loads(raw)
        return [BundleEntry(**e) for e in data["bundles"]]
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s: ignoring unreadable clone bundle index: %s", repo_name, exc)
        return []


def _write_index(store: BundleStore, repo_name: str, entries: list[BundleEntry]) -> None:
    data = json.dumps({"version": 1, "bundles": [asdict(e) for e in entries]}, indent=1).encode()
    store.write_small(bundle_key(repo_name, INDEX), data)


def _usable(config: Config, repo: ServedRepo, entry: BundleEntry) -> bool:
    if entry.format == STREAM_FORMAT:
        # a stream bundle copies the store: only while stream clones are allowed (no secret
        # changesets) and the store format has not changed since
        if not stream_allowed(config, repo) or entry.requirements != stream_requirements(repo):
            return False
    heads = [bytes.fromhex(h) for h in entry.heads]
    return all(repo.known(heads))


def current_entries(config: Config, store: BundleStore, repo_name: str | None,
                    repo: ServedRepo) -> list[BundleEntry]:
    """The newest usable bundle of each configured format, in the configured order."""
    if repo_name is None:
        return []
    newest: dict[str, BundleEntry] = {}
    for entry in read_index(store, repo_name):
        if entry.format not in newest and entry.format in config.clonebundles.formats and \
                _usable(config, repo, entry):
            newest[entry.format] = entry
    return [newest[f] for f in config.clonebundles.formats if f in newest]


# -- the manifest -----------------------------------------------------------------------------------

def _attr(key: str, value: str) -> bytes:
    return f"{key}={urllib.parse.quote(value, safe='')}".encode("ascii")


def manifest_lines(config: Config, store: BundleStore, repo_name: str | None, repo: ServedRepo,
                   url_for: Callable[[str], str] | None) -> list[bytes]:
    """The manifest: the static `.hg/clonebundles.manifest` lines as they are, then one line per
    current generated bundle. `url_for(key)` gives a bundle's URL; None (SSH, or inline serving)
    advertises `peer-bundle-cache://NAME`, fetched with `get_cached_bundle_inline`."""
    lines = static_manifest_lines(repo)
    for entry in current_entries(config, store, repo_name, repo):
        assert repo_name is not None
        if url_for is None:
            url = INLINE_SCHEME + entry.name.encode("ascii")
        else:
            url = url_for(bundle_key(repo_name, entry.name)).encode("ascii")
        attrs = [_attr("BUNDLESPEC", entry.bundlespec)]
        if url.startswith(b"http"):
            attrs.append(b"REQUIRESNI=true")  # as hg's own generated manifests say of URLs
            # hg 6.9+ checks the download against it (older clients ignore the attribute)
            attrs.append(_attr("DIGEST", f"sha256:{entry.sha256}"))
        lines.append(b" ".join([url, *attrs]) + b"\n")
    return lines


def has_manifest(config: Config, store: BundleStore, repo_name: str | None, repo: ServedRepo) -> bool:
    """Whether to advertise clonebundles: a static `.hg/clonebundles.manifest`, or an index of
    generated bundles (whether one is still current is the manifest's business: an empty answer
    makes the client clone normally)."""
    if (repo.root / ".hg" / "clonebundles.manifest").is_file():
        return True
    if repo_name is None:
        return False
    try:
        return store.read_small(bundle_key(repo_name, INDEX)) is not None
    except StorageUnavailable as exc:  # the clone goes on without bundles
        log.warning("%s: clone bundle index unreadable, advertising none: %s", repo_name, exc)
        return False


def static_manifest_lines(repo: ServedRepo) -> list[bytes]:
    try:
        raw = (repo.root / ".hg" / "clonebundles.manifest").read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [line + b"\n" for line in raw.splitlines() if line.strip()]


def filter_compression(lines: Iterable[bytes], client_engines: Iterable[str] | None) -> list[bytes]:
    """Leave out zstd bundles for a client that says (X-HgProto-1 `comp=`) it has no zstd: an hg
    built without it (pure Python) aborts on such a manifest line instead of skipping it."""
    if client_engines is None or "zstd" in client_engines:
        return list(lines)
    out = []
    for line in lines:
        spec = next((urllib.parse.unquote_to_bytes(f[len(b"BUNDLESPEC="):]) for f in line.split()[1:]
                     if f.startswith(b"BUNDLESPEC=")), b"")
        if not spec.startswith(b"zstd-"):
            out.append(line)
    return out


def filter_legacy(lines: Iterable[bytes]) -> list[bytes]:
    """What the legacy `clonebundles` command answers (clients older than clonebundles_manifest):
    as hg, without inline entries and without STORE-FINGERPRINT ones, which those clients would
    try and fail on."""
    out = []
    for line in lines:
        if line.startswith(INLINE_SCHEME):
            continue
        fields = line.split()
        if any(urllib.parse.unquote_to_bytes(f.split(b"=", 1)[0]) == b"STORE-FINGERPRINT" for f in fields[1:]):
            continue
        out.append(line)
    return out


# -- building ---------------------------------------------------------------------------------------

def _slug(fmt: str) -> str:
    return fmt.replace(";", "-").replace("=", "-")


class _HashingWriter:
    def __init__(self, fh: BinaryIO):
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        if data:
            self.fh.write(data)
            self.sha.update(data)
            self.size += len(data)


def _compressed(chunks: Iterator[bytes], engine: str, zstd_level: int) -> Iterator[bytes]:
    if engine == "zstd":
        import zstandard  # only builds need it: SSH sessions start without it

        comp = zstandard.ZstdCompressor(level=zstd_level).compressobj()
        for c in chunks:
            yield comp.compress(c)
        yield comp.flush()
    elif engine == "gzip":
        z = zlib.compressobj(6)
        for c in chunks:
            yield z.compress(c)
        yield z.flush()
    else:
        yield from chunks


def _write_changegroup_bundle(config: Config, repo: Repository, revs: list[int], fmt: str,
                              out: _HashingWriter) -> str:
    """A bundle2 file with one changegroup of `revs`, compressed as `fmt` says; its bundlespec."""
    engine = fmt.split("-", 1)[0]
    version = "03" if repo.has_lfs else "02"
    part = OutPart(b"CHANGEGROUP", [(b"version", version.encode("ascii"))],
                   [(b"nbchanges", b"%d" % len(revs))], changegroup.generate(repo, revs, version))
    body = bundle2.encode_bundle([part], chunk_size=WRITE_CHUNK)
    head = next(body)   # the magic and an empty stream-parameter block: replaced below
    assert head == bundle2.MAGIC + b"\0\0\0\0"
    param = _COMPRESSION[engine]
    if param is None:
        out.write(head)
    else:
        params = b"Compression=" + param
        out.write(bundle2.MAGIC + len(params).to_bytes(4, "big") + params)
    for chunk in _compressed(body, engine, config.hg.zstd_level):
        out.write(chunk)
    return fmt if version == "02" else f"{fmt};cg.version={version}"


def _write_stream_bundle(repo: Repository, out: _HashingWriter) -> tuple[str, list[str]]:
    reqs = stream_requirements(repo)
    for chunk in bundle2.encode_bundle([stream2_part(repo, stream_plan(repo))], chunk_size=WRITE_CHUNK):
        out.write(chunk)
    spec = f"{STREAM_FORMAT};requirements={urllib.parse.quote(','.join(reqs), safe='')}"
    return spec, reqs


def build(config: Config, store: BundleStore, repo_name: str, repo: Repository, *,
          force: bool = False) -> BuildReport:
    """Build the configured formats that are missing or stale for `repo` (all of them with
    `force`), record them, and drop bundles beyond clonebundles.keep per format.

    Raises BundleStoreBusy when a build of this repository runs elsewhere. A crash at any point
    leaves the index naming only complete, installed bundles."""
    cfg = config.clonebundles
    report = BuildReport([], [], [])
    with store.exclusive(repo_name):
        tmp_dir = store.temp_dir(repo_name)
        for stale in tmp_dir.glob(".build-*"):
            # left by a build that died (we hold the lock: nobody is writing it)
            with contextlib.suppress(OSError):
                stale.unlink()
        entries = read_index(store, repo_name)
        heads = repo.heads()
        revs = list(repo.missing([], heads)) if heads else []
        if not revs:
            report.skipped += [(f, "the repository is empty") for f in cfg.formats]
            return report
        for fmt in cfg.formats:
            if fmt == STREAM_FORMAT and not stream_allowed(config, repo):
                report.skipped.append((fmt, "stream clones are off or the repository has secret changesets"))
                continue
            newest = next((e for e in entries if e.format == fmt and _usable(config, repo, e)), None)
            if newest is not None and not force and len(revs) - newest.revs < cfg.min_new_changesets:
                report.skipped.append((fmt, f"current ({newest.name})"))
                continue
            entry = _build_one(config, store, repo_name, repo, fmt, heads, revs, tmp_dir)
            entries.insert(0, entry)
            report.built.append(entry)
        keep: list[BundleEntry] = []
        per_format: dict[str, int] = {}
        for e in entries:
            per_format[e.format] = per_format.get(e.format, 0) + 1
            if per_format[e.format] <= cfg.keep and e.format in cfg.formats:
                keep.append(e)
            else:
                report.removed.append(e.name)
        if report.built or report.removed:
            _write_index(store, repo_name, keep)
        # files go only once no index names them
        kept_names = {e.name for e in keep}
        for name in report.removed:
            if name not in kept_names:
                store.delete(bundle_key(repo_name, name))
    return report


def _build_one(config: Config, store: BundleStore, repo_name: str, repo: Repository, fmt: str,
               heads: list[bytes], revs: list[int], tmp_dir: Path) -> BundleEntry:
    started = time.monotonic()
    tmp = tmp_dir / f".build-{os.getpid()}-{_slug(fmt)}"
    requirements: list[str] = []
    try:
        with open(tmp, "wb") as fh:
            out = _HashingWriter(fh)
            if fmt == STREAM_FORMAT:
                spec, requirements = _write_stream_bundle(repo, out)
            else:
                spec = _write_changegroup_bundle(config, repo, revs, fmt, out)
        digest = out.sha.hexdigest()
        tip = repo.changelog.node(max(revs)).hex()
        name = f"{_slug(fmt)}-{len(revs)}-{tip[:12]}-{digest[:16]}.hg"
        store.install(bundle_key(repo_name, name), tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    log.info("%s: built clone bundle %s (%d changesets, %d bytes) in %.2fs", repo_name, name, len(revs),
             out.size, time.monotonic() - started)
    return BundleEntry(name=name, format=fmt, bundlespec=spec, heads=[h.hex() for h in heads], revs=len(revs),
                       size=out.size, sha256=digest, created=time.time(), requirements=requirements)
