"""The v2 command registry: argument checking, the API descriptor, path filters, manifest lookups."""

import os
import random

import pytest

from lfsserve.hg.manifest import find_entry, format_manifest, parse_manifest
from lfsserve.wire.v2 import commands
from lfsserve.wire.v2.commands import COMMANDS, PathFilter, api_descriptor, validate_args
from lfsserve.wire.v2.framing import CommandError, CommandRequest

class FakeRepo:
    requirements = frozenset({"revlogv1", "generaldelta", "sparserevlog", "store", "fncache", "dotencode",
                              "share-safe"})

    def has_hidden(self):
        return False

    def draft_roots(self):
        return []


def ctx(**kw):
    return commands.Context(FakeRepo(), **kw)


def err(cmd: str, args: dict) -> str:
    with pytest.raises(CommandError) as info:
        validate_args(COMMANDS[cmd.encode()], args)
    return info.value.render()


def test_arguments_are_checked_against_the_declaration():
    ok = validate_args(COMMANDS[b"manifestdata"], {b"tree": b"", b"nodes": [b"\1" * 20],
                                                   b"fields": [b"revision"]})
    assert ok == {"nodes": [b"\1" * 20], "haveparents": False, "fields": {b"revision"}, "tree": b""}
    assert "missing required argument(s) to command manifestdata: nodes, tree" in err("manifestdata", {})
    assert "unsupported argument(s) to command heads: x, y" in err("heads", {b"x": 1, b"y": 2})
    assert "argument publiconly must be of type bool, got integer" in err("heads", {b"publiconly": 1})
    assert "argument key must be of type bytes, got array" in err("lookup", {b"key": [b"x"]})
    assert "nodes must be a list of 20-byte binary nodes" in err("known", {b"nodes": [b"\1" * 19]})
    assert "unknown value(s) nope (allowed: parents, revision)" in err(
        "manifestdata", {b"tree": b"", b"nodes": [], b"fields": {b"nope"}})
    assert "must be a set" in err("filesdata", {b"revisions": [], b"fields": [[1]]})
    # Optional arguments sent as null take their default.
    assert validate_args(COMMANDS[b"filesdata"], {b"revisions": [], b"pathfilter": None})["pathfilter"] is None


def test_run_refuses_unknown_commands_and_data():
    with pytest.raises(CommandError, match="unknown wire protocol command"):
        list(commands.run(ctx(), CommandRequest(1, b"nosuch")))
    with pytest.raises(CommandError, match="does not accept command data"):
        list(commands.run(ctx(), CommandRequest(1, b"heads", data=b"x")))
    with pytest.raises(CommandError, match="cannot decode"):
        list(commands.run(ctx(), CommandRequest(1, error="cannot decode command request: x")))
    with pytest.raises(CommandError, match="not available"):
        list(commands.run(ctx(stream_clone=False), CommandRequest(1, b"rawstorefiledata", {b"files": []})))


# The "commands" map of hg serve's v2 capabilities in reference transcript 30 (Mercurial 5.9.3).
REFERENCE_COMMANDS = {
    b"branchmap": {b"args": {}, b"permissions": [b"pull"]},
    b"capabilities": {b"args": {}, b"permissions": [b"pull"]},
    b"changesetdata": {b"args": {
        b"fields": {b"default": set(), b"required": False, b"type": b"set",
                    b"validvalues": {b"revision", b"phase", b"parents", b"bookmarks"}},
        b"revisions": {b"required": True, b"type": b"list"}}, b"permissions": [b"pull"]},
    b"filedata": {b"args": {
        b"fields": {b"default": set(), b"required": False, b"type": b"set",
                    b"validvalues": {b"parents", b"revision", b"linknode"}},
        b"haveparents": {b"default": False, b"required": False, b"type": b"bool"},
        b"nodes": {b"required": True, b"type": b"list"},
        b"path": {b"required": True, b"type": b"bytes"}}, b"permissions": [b"pull"]},
    b"filesdata": {b"args": {
        b"fields": {b"default": set(), b"required": False, b"type": b"set",
                    b"validvalues": {b"firstchangeset", b"linknode", b"parents", b"revision"}},
        b"haveparents": {b"default": False, b"required": False, b"type": b"bool"},
        b"pathfilter": {b"default": None, b"required": False, b"type": b"dict"},
        b"revisions": {b"required": True, b"type": b"list"}},
        b"permissions": [b"pull"], b"recommendedbatchsize": 50000},
    b"heads": {b"args": {b"publiconly": {b"default": False, b"required": False, b"type": b"bool"}},
               b"permissions": [b"pull"]},
    b"known": {b"args": {b"nodes": {b"default": [], b"required": False, b"type": b"list"}},
               b"permissions": [b"pull"]},
    b"listkeys": {b"args": {b"namespace": {b"required": True, b"type": b"bytes"}}, b"permissions": [b"pull"]},
    b"lookup": {b"args": {b"key": {b"required": True, b"type": b"bytes"}}, b"permissions": [b"pull"]},
    b"manifestdata": {b"args": {
        b"fields": {b"default": set(), b"required": False, b"type": b"set",
                    b"validvalues": {b"parents", b"revision"}},
        b"haveparents": {b"default": False, b"required": False, b"type": b"bool"},
        b"nodes": {b"required": True, b"type": b"list"},
        b"tree": {b"required": True, b"type": b"bytes"}},
        b"permissions": [b"pull"], b"recommendedbatchsize": 100000},
    b"pushkey": {b"args": {k: {b"required": True, b"type": b"bytes"} for k in (b"key", b"namespace", b"new", b"old")},
                 b"permissions": [b"push"]},
    b"rawstorefiledata": {b"args": {
        b"files": {b"required": True, b"type": b"list"},
        b"pathfilter": {b"default": None, b"required": False, b"type": b"list"}}, b"permissions": [b"pull"]},
}


def test_descriptor_matches_the_reference_but_for_deliberate_differences():
    ours = api_descriptor(ctx())
    assert ours[b"framingmediatypes"] == [b"application/mercurial-exp-framing-0006"]
    assert ours[b"pathfilterprefixes"] == {b"path:", b"rootfilesin:"}
    assert ours[b"rawrepoformats"] == [b"generaldelta", b"revlogv1", b"sparserevlog"]
    ref = {k: {**v, b"args": dict(v[b"args"])} for k, v in REFERENCE_COMMANDS.items()}
    # Deliberate: filesdata's undocumented, unimplemented "firstchangeset" field, and
    # rawstorefiledata's unused "pathfilter" argument, are not advertised.
    ref[b"filesdata"][b"args"][b"fields"] = {**ref[b"filesdata"][b"args"][b"fields"],
                                             b"validvalues": {b"linknode", b"parents", b"revision"}}
    del ref[b"rawstorefiledata"][b"args"][b"pathfilter"]
    assert ours[b"commands"] == ref


def test_raw_store_is_offered_only_when_it_is_safe():
    assert b"rawstorefiledata" in api_descriptor(ctx())[b"commands"]
    assert b"rawstorefiledata" not in api_descriptor(ctx(stream_clone=False))[b"commands"]
    zstd = FakeRepo()
    zstd.requirements = FakeRepo.requirements | {"revlog-compression-zstd"}
    assert b"rawstorefiledata" not in api_descriptor(commands.Context(zstd))[b"commands"]
    secret = FakeRepo()
    secret.has_hidden = lambda: True
    assert b"rawstorefiledata" not in api_descriptor(commands.Context(secret))[b"commands"]
    drafts = FakeRepo()
    drafts.draft_roots = lambda: [b"\1" * 20]
    assert b"rawstorefiledata" in api_descriptor(commands.Context(drafts))[b"commands"]
    assert b"rawstorefiledata" not in api_descriptor(commands.Context(drafts, publishing=False))[b"commands"]


@pytest.mark.parametrize("spec, yes, no", [
    (None, [b"a", b"d/e/f"], []),
    ({b"include": [b"path:d"]}, [b"d/x", b"d/e/f"], [b"a", b"dd/x", b"e/d"]),
    ({b"include": [b"path:."]}, [b"a", b"d/x"], []),
    ({b"include": [b"rootfilesin:d"]}, [b"d/x"], [b"d/e/f", b"a"]),
    ({b"include": [b"rootfilesin:."]}, [b"a"], [b"d/x"]),
    ({b"exclude": [b"path:d/e"]}, [b"a", b"d/x"], [b"d/e/f"]),
    ({b"include": [b"path:d"], b"exclude": [b"rootfilesin:d"]}, [b"d/e/f"], [b"d/x", b"a"]),
])
def test_path_filters(spec, yes, no):
    match = PathFilter(spec)
    assert all(match(p) for p in yes) and not any(match(p) for p in no)


@pytest.mark.parametrize("spec, why", [
    ({b"include": [b"glob:*.c"]}, "must begin with `path:` or `rootfilesin:`"),
    ({b"include": b"path:x"}, "must be a list of byte strings"),
    ({b"other": []}, "only include and exclude"),
])
def test_bad_path_filters(spec, why):
    with pytest.raises(CommandError) as info:
        PathFilter(spec)
    assert why in info.value.render()


def test_manifest_lookup_agrees_with_parsing():
    rng = random.Random(5)
    names = sorted({b"/".join(rng.choice([b"a", b"b", b"a.b", b"a-b", b"z", b"\xc3\xa9"]) for _ in range(rng.randint(1, 4)))
                    for _ in range(400)})
    entries = {n: (os.urandom(20), rng.choice([b"", b"x", b"l"])) for n in names}
    text = format_manifest(entries)
    assert parse_manifest(text) == entries
    for n in names:
        assert find_entry(text, n) == entries[n]
    for missing in (b"", b"0", b"a/", b"a.b/zz", b"zzz", b"a\0", b"b/a.", b"\xff"):
        assert find_entry(text, missing) is None
    assert find_entry(b"", b"a") is None
