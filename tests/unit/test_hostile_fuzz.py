"""Bounded mutation fuzzing of the parsers that read client bytes (issue 10, part 5).

Each parser may refuse its input only with its own declared error type (which the front ends turn
into a 4xx or hg's abort form); any other exception would be a 500. Seeds are well-formed inputs;
mutations flip, insert, delete, duplicate and truncate bytes and splice in boundary integers. The
random generators are seeded, so a failure reproduces; the iteration counts keep the whole module
to a few seconds (well under the 60 s budget) on a loaded machine.
"""

from __future__ import annotations

import bz2
import io
import json
import random
import struct

import cbor2
import pytest

from lfsserve.hg import bundle2
from lfsserve.hg.changegroup import ChunkReader
from lfsserve.hg.error import BadChangegroup
from lfsserve.hg.filelog import LfsPointerError, parse_lfs_pointer
from lfsserve.lfs import batch, locks
from lfsserve.lfs.errors import LfsError
from lfsserve.lfs.request import check_ref, decode_json, object_error
from lfsserve.wire.protocol import BadRequest, decode_batch, decode_nodes, parse_qs_bytes
from lfsserve.wire.v2 import cbor
from lfsserve.wire.v2.commands import COMMANDS as V2_COMMANDS
from lfsserve.wire.v2.commands import validate_args
from lfsserve.wire.v2.framing import CommandError, ProtocolError, read_request
from tests.bundle_build import LFS_FLAG, changegroup03, lfs_pointer, part
from tests.bundle_build import bundle2 as make_bundle2
from tests.wire_v2_client import request_body

_BOUNDARY = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00",
             b"\x00\x00\x00\x05", b"\xff\xff\xff\xfe", b"\x00\x01\x00\x00"]


def mutate(data: bytes, rnd: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(6)
        pos = rnd.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(pos, len(b) - 1)] ^= 1 << rnd.randrange(8)
        elif op == 1:
            b[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        elif op == 2:
            del b[pos:pos + rnd.randint(1, 16)]
        elif op == 3:
            b[pos:pos + 4] = rnd.choice(_BOUNDARY)
        elif op == 4:
            end = min(len(b), pos + rnd.randint(1, 64))
            b[pos:pos] = b[pos:end]
        else:
            del b[pos:]
    return bytes(b)


def fuzz(seeds: list[bytes], check, rounds: int, seed: int) -> None:
    rnd = random.Random(seed)
    for seed_input in seeds:
        check(seed_input)  # the seeds themselves must go through
    for i in range(rounds):
        data = mutate(rnd.choice(seeds), rnd)
        try:
            check(data)
        except Exception as exc:  # pragma: no cover - the failure report
            raise AssertionError(f"round {i}: {type(exc).__name__}: {exc} for input {data[:200]!r}") from exc


# -- bundle2 and changegroup framing ---------------------------------------------------------------

def _walk_changegroup(source, version: str = "03") -> None:
    """Read a changegroup's framing (groups of chunks, the file sections) without its content."""
    reader = ChunkReader(source)
    for _ in range(2 + (version == "03")):  # changelog, manifests, (03) tree manifests
        while reader.chunk():
            pass
    while reader.chunk():  # a file name, then its group
        while reader.chunk():
            pass


def _read_bundle(data: bytes) -> None:
    fp = io.BytesIO(data)
    if fp.read(4) != bundle2.MAGIC:
        return
    try:
        reader = bundle2.BundleReader(fp, max_unpacked=1 << 20, unpacked_setting="test")
        for p in reader.parts():
            if p.name == b"changegroup":
                try:
                    _walk_changegroup(bundle2.LimitedReader(p, max_read=1 << 18, read_setting="test"))
                except BadChangegroup:
                    pass
            elif p.name == b"phase-heads":
                bundle2.decode_phase_heads(p.read_all(1 << 16))
            elif p.name in (b"bookmarks", b"check:bookmarks"):
                bundle2.decode_bookmarks(p.read_all(1 << 16))
            elif p.name in (b"check:heads", b"check:updated-heads"):
                bundle2.decode_nodes(p.read_all(1 << 16))
            elif p.name == b"replycaps":
                bundle2.decode_caps(p.read_all(1 << 16))
            elif p.name == b"pushkey":
                bundle2.decode_listkeys(p.read_all(1 << 16))
    except bundle2.Bundle2Error:
        pass


def _bundle_seeds() -> list[bytes]:
    cg = changegroup03(b"a.txt", b"hello\n" * 20)
    lfs = changegroup03(b"big.bin", lfs_pointer("a" * 64, b"12"), file_flags=LFS_FLAG)
    parts = [
        part(b"replycaps", bundle2.encode_caps({"HG20": [], "error": ["abort", "pushkey"]})),
        part(b"CHECK:HEADS", b"\x11" * 20),
        part(b"CHANGEGROUP", cg, [(b"version", b"03")], piece=97),
        part(b"phase-heads", struct.pack(">i20s", 0, b"\x22" * 20)),
        part(b"bookmarks", bundle2.encode_bookmarks([(b"main", b"\x33" * 20), (b"gone", None)])),
        part(b"pushkey", b"", [(b"namespace", b"phases"), (b"key", b"k"), (b"old", b"1"), (b"new", b"0")]),
    ]
    interrupted = (part(b"CHANGEGROUP", lfs, [(b"version", b"03")])[:-4] + b"\xff\xff\xff\xff"
                   + part(b"error:abort", b"", [(b"message", b"stop")])[:-4] + b"\x00\x00\x00\x00" * 2)
    plain = make_bundle2(parts)
    bz = b"HG20" + struct.pack(">i", 14) + b"Compression=BZ" + bz2.compress(plain[8:])
    return [plain, make_bundle2(parts, "ZS"), make_bundle2(parts, "GZ"), bz,
            make_bundle2([interrupted]), make_bundle2([part(b"CHANGEGROUP", lfs, [(b"version", b"03")])])]


def test_fuzz_bundle2_and_changegroup_framing():
    fuzz(_bundle_seeds(), _read_bundle, rounds=6000, seed=10_5)


def test_fuzz_unbundle_in_process(tmp_path):
    """The whole push path (bundle2, parts, changegroup framing, replies) on mutated bundles:
    a refusal is a reply or BadRequest/HgError (hg's abort form), never another exception."""
    from lfsserve.config import Config
    from lfsserve.hg.error import HgError
    from lfsserve.hg.repository import Repository
    from lfsserve.repos import RepoSettings
    from lfsserve.wire import unbundle

    path = tmp_path / "repo"
    Repository.init(path)
    config = Config()
    settings = RepoSettings(publishing=True, lock_timeout=5)

    def check(data: bytes) -> None:
        try:
            with settings.apply(Repository.open(path)) as repo:
                unbundle.unbundle(config, repo, b"force".hex().encode(), io.BytesIO(data), lambda oids: set())
        except (BadRequest, HgError):
            pass

    fuzz(_bundle_seeds(), check, rounds=1500, seed=10_11)


def test_bundle2_claimed_sizes_are_never_allocated():
    """A chunk length near 2 GiB is refused by the revision limit before any read of that size."""
    cg = struct.pack(">i", 0x7FFFFFF0) + b"x" * 100
    reads: list[int] = []

    class Recorder(io.BytesIO):
        def read(self, n=-1):
            reads.append(n)
            return super().read(n)

    bundle = Recorder(make_bundle2([part(b"CHANGEGROUP", cg, [(b"version", b"03")])])[4:])
    p = next(bundle2.BundleReader(bundle).parts())
    with pytest.raises(bundle2.SizeLimitExceeded, match=r"2 GiB is larger than .* 1 MiB"):
        ChunkReader(bundle2.LimitedReader(p, max_read=1 << 20, read_setting="x")).chunk()
    assert max(reads) < 1 << 20


@pytest.mark.parametrize("algo", ["ZS", "GZ", "BZ"])
def test_decompression_reads_in_bounded_steps(algo):
    """A bomb (64 MiB of zeros, tiny compressed) is inflated step by step as it is read: the
    compressed source is read in small pieces and no decompressor call produces more than 1 MiB."""
    raw = b"\0" * (64 << 20)
    if algo == "ZS":
        import zstandard
        packed = zstandard.ZstdCompressor().compress(raw)
    elif algo == "GZ":
        import zlib
        packed = zlib.compress(raw)
    else:
        packed = bz2.compress(raw)
    source_reads: list[int] = []

    class Source(io.BytesIO):
        def read(self, n=-1):
            source_reads.append(n)
            return super().read(n)

        def readinto(self, b):  # zstandard's stream_reader may use it
            source_reads.append(len(b))
            return super().readinto(b)

    reader = bundle2.decompressing_reader(Source(packed), algo)
    first = reader.read(4096)
    assert first == b"\0" * 4096
    assert all(0 <= n <= 128 * 1024 for n in source_reads), source_reads[:10]
    # reading on in bounded pieces never needs the whole output at once
    total = len(first)
    while True:
        piece = reader.read(1 << 20)
        if not piece:
            break
        assert len(piece) <= 1 << 20
        total += len(piece)
    assert total == len(raw)


def test_unpacked_limit_refuses_a_bomb():
    bundle = io.BytesIO(make_bundle2([part(b"CHANGEGROUP", b"\0" * (8 << 20), [(b"version", b"03")])], "ZS")[4:])
    reader = bundle2.BundleReader(bundle, max_unpacked=1 << 20, unpacked_setting="hg.max_unpacked_push_size")
    with pytest.raises(bundle2.SizeLimitExceeded, match=r"unpacks to more than .* 1 MiB \(hg.max_unpacked_push_size\)"):
        for p in reader.parts():
            p.consume()


def test_fuzz_lfs_pointers():
    def check(text: bytes) -> None:
        try:
            pointer = parse_lfs_pointer(text)
        except LfsPointerError:
            return
        assert 0 <= pointer.size < 1 << 63

    seeds = [lfs_pointer("ab" * 32, b"12345"), lfs_pointer("ab" * 32, b"9" * 5000),
             lfs_pointer("ab" * 32, "²".encode())]
    fuzz(seeds, check, rounds=3000, seed=10_6)


# -- wire protocol v1 arguments and v2 frames --------------------------------------------------------

def test_fuzz_v1_arguments():
    def check(data: bytes) -> None:
        try:
            args = parse_qs_bytes(data)
            for v in args.values():
                decode_nodes(v)
            for _name, sub in decode_batch(args.get("cmds", b"")):
                for v in sub.values():
                    decode_nodes(v)
        except BadRequest:
            pass

    node = b"8f4dcfd7ba98bfc6b197bd14df4b20948ceaa974"
    seeds = [b"cmds=heads+%3Bknown+nodes%3D" + node + b"%3Blookup+key%3Dtip", b"nodes=" + node + b"+" + node,
             b"pairs=" + node + b"-" + node]
    fuzz(seeds, check, rounds=4000, seed=10_7)


@pytest.mark.interop  # builds its repository with the real hg
def test_fuzz_v1_commands(tmp_path):
    """Every pull command, through argument binding, on a real repository (built by hg): mutated
    arguments end in BadRequest or an HgError (hg's error forms), streams in a bundle2 error part."""
    from lfsserve.config import Config
    from lfsserve.hg.error import HgError
    from lfsserve.hg.repository import Repository
    from lfsserve.wire.v1.commands import COMMANDS, Session, Stream, bind_args
    from tests.support import HG, hg_env, run

    path = tmp_path / "dag"
    env = hg_env(tmp_path / "home")
    run([HG, "init", str(path)], env=env)
    run([HG, "debugbuilddag", "-q", "+20 *3 +5 /2 +3"], cwd=path, env=env)
    repo = Repository.open(path)
    session = Session(Config(), repo)
    tip = repo.changelog.node(len(repo.changelog) - 1).hex().encode()
    root = repo.changelog.node(0).hex().encode()
    seeds = {
        "getbundle": b"bundlecaps=HG20%2Cbundle2%3DHG20%250Achangegroup%253D01%252C02%252C03&cg=1&common="
                     + root + b"&heads=" + tip + b"&listkeys=phases%2Cbookmarks&phases=1",
        "known": b"nodes=" + tip + b"+" + root,
        "between": b"pairs=" + tip + b"-" + root,
        "branches": b"nodes=" + tip,
        "lookup": b"key=tip",
        "listkeys": b"namespace=phases",
        "batch": b"cmds=heads+%3Bknown+nodes%3D" + tip + b"%3Blookup+key%3Dtip",
        "changegroupsubset": b"bases=" + root + b"&heads=" + tip,
    }
    names = sorted(seeds)
    rnd = random.Random(10_12)

    def check(data: bytes) -> None:
        name = names[data[0] % len(names)] if data else "known"
        try:
            cmd = COMMANDS[name]
            result = cmd.func(session, **bind_args(cmd, parse_qs_bytes(data[1:])))
            if isinstance(result, Stream):
                for _ in result.chunks():
                    pass
        except (BadRequest, HgError, bundle2.Bundle2Error):
            pass

    fuzz([bytes([names.index(n)]) + seeds[n] for n in names], check, rounds=2500, seed=rnd.randrange(1 << 30))


def test_fuzz_v2_frames():
    def check(data: bytes) -> None:
        try:
            req = read_request(data)
        except ProtocolError:
            return
        for c in req.commands:
            cmd = V2_COMMANDS.get(c.name)
            if c.error or cmd is None:
                continue
            try:
                validate_args(cmd, c.args)
            except CommandError:
                pass

    node = b"\x8e" * 20
    seeds = [
        request_body(("heads", None), ("known", {b"nodes": [node, node]}), encodings=[b"zstd", b"identity"]),
        request_body(("changesetdata", {b"revisions": [{b"type": b"changesetexplicit", b"nodes": [node]}],
                                        b"fields": {b"parents", b"revision"}})),
        request_body(("filedata", {b"path": b"a", b"nodes": [node], b"fields": {b"revision"}})),
    ]
    fuzz(seeds, check, rounds=4000, seed=10_8)


def test_fuzz_cbor():
    def check(data: bytes) -> None:
        try:
            cbor.decode(data)
        except cbor.CBORError:
            pass

    seeds = [cbor2.dumps({b"name": b"known", b"args": {b"nodes": [b"\1" * 20]}}),
             cbor2.dumps([[[[b"x", 1, -1, True, None]]]]), cbor.encode({b"a": {b"b", b"c"}})]
    fuzz(seeds, check, rounds=4000, seed=10_9)


# -- LFS JSON bodies (batch, locks, verify) -------------------------------------------------------

def _lfs_json(data: bytes) -> None:
    try:
        body = decode_json(data)
    except LfsError as exc:
        assert 400 <= exc.status < 500
        return
    # batch
    try:
        req = batch.parse_batch(body, 100)
        for obj in req.objects:
            if obj.error is not None:
                json.loads(batch._error(obj, 422, obj.error))
    except LfsError as exc:
        assert 400 <= exc.status < 500
    # locks: create, list/verify paging, unlock
    for step in (lambda: check_ref(body),
                 lambda: locks._int_param(body.get("cursor"), "cursor", 0),
                 lambda: locks._limit(body.get("limit")),
                 lambda: isinstance(body.get("path"), str) and locks._text(body["path"], "path")):
        try:
            step()
        except LfsError as exc:
            assert 400 <= exc.status < 500
    # verify
    object_error(body.get("oid"), body.get("size"))


def test_fuzz_lfs_json():
    oid = "ab" * 32
    seeds = [
        json.dumps({"operation": "upload", "objects": [{"oid": oid, "size": 12}], "transfers": ["basic"],
                    "ref": {"name": "refs/heads/main"}, "hash_algo": "sha256"}).encode(),
        b'{"operation": "download", "objects": [{"oid": "' + oid.encode() + b'", "size": ' + b"9" * 4000 + b"}]}",
        b'{"operation": "upload", "objects": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"path": "a/b.bin", "ref": {"name": "main"}, "cursor": "12", "limit": 5}',
        b'{"path": "\\ud800", "cursor": 99999999999999999999999, "limit": 1e999, "force": true}',
        b'{"oid": "' + oid.encode() + b'", "size": 18446744073709551616}',
    ]
    fuzz(seeds, _lfs_json, rounds=4000, seed=10_10)
    # the cursor spellings of the issue
    for cursor in ("99999999999999999999999", "²", "1" * 5000, "-1", "0x10"):
        with pytest.raises(LfsError) as exc:
            locks._int_param(cursor, "cursor", 0)
        assert exc.value.status == 422
