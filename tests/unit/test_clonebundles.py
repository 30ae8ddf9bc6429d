"""Clone bundles and v2 content redirects without a server: manifest filtering, bundle URLs and
their signatures, the redirect capability and the frames of a redirect answer."""

from __future__ import annotations

import time

import pytest

from lfsserve.auth import Authenticator
from lfsserve.config import ConfigError, load_config
from lfsserve.routing import BadPath, Kind, resolve
from lfsserve.wire import clonebundles as cb
from lfsserve.wire.v2 import commands, redirect
from lfsserve.wire.v2.encoding import IdentityEncoder
from lfsserve.wire.v2.framing import CommandRequest, ResponseWriter
from tests.wire_v2_client import decode_response

LINES = [b"https://cdn/a.hg BUNDLESPEC=zstd-v2 REQUIRESNI=true\n",
         b"peer-bundle-cache://b.hg BUNDLESPEC=zstd-v2\n",
         b"https://cdn/c.hg BUNDLESPEC=gzip-v2 STORE-FINGERPRINT=abc\n",
         b"https://cdn/d.hg BUNDLESPEC=none-v2%3Bstream%3Dv2\n",
         b"https://cdn/e.hg\n"]


def test_legacy_manifest_drops_inline_and_fingerprinted_entries_as_hg_does():
    assert cb.filter_legacy(LINES) == [LINES[0], LINES[3], LINES[4]]


def test_zstd_entries_are_dropped_only_for_clients_that_say_they_lack_zstd():
    assert cb.filter_compression(LINES, None) == LINES
    assert cb.filter_compression(LINES, ("zstd", "zlib", "none")) == LINES
    assert cb.filter_compression(LINES, ("zlib", "none")) == [LINES[2], LINES[3], LINES[4]]


def test_bundle_urls_route_and_are_signed(tmp_path):
    target = resolve("/team/app/.hg/clonebundles/zstd-v2-8-abc.hg", "/team/app/.hg/clonebundles/zstd-v2-8-abc.hg",
                     False)
    assert (target.kind, target.repo, target.rest) == (Kind.HG_CLONEBUNDLE, "team/app", "zstd-v2-8-abc.hg")
    for bad in ("/team/app/.hg/clonebundles/.index.json", "/team/app/.hg/clonebundles/"):
        with pytest.raises(BadPath):
            resolve(bad, bad, False)
    auth = Authenticator(load_config(overrides={"server": {"root": str(tmp_path)}}, env={}))
    key = "team/app/.clonebundles/zstd-v2-8-abc.hg"
    later = int(time.time()) + 60
    sig = auth.sign_bundle_url(key, later)
    assert auth.bundle_url_valid(key, str(later), sig)
    assert not auth.bundle_url_valid("team/other/.clonebundles/zstd-v2-8-abc.hg", str(later), sig)
    assert not auth.bundle_url_valid(key, str(later + 1), sig)            # the expiry is signed too
    past = int(time.time()) - 1
    assert not auth.bundle_url_valid(key, str(past), auth.sign_bundle_url(key, past))
    assert not auth.bundle_url_valid(key, "²", sig)


def test_config_checks_formats_and_limits():
    with pytest.raises(ConfigError, match=r"clonebundles.formats\[1\]: unsupported bundle specification 'bzip2-v2'"):
        load_config(overrides={"clonebundles": {"formats": ["zstd-v2", "bzip2-v2"]}}, env={})
    with pytest.raises(ConfigError, match=r"clonebundles\.keep: must be >= 1"):
        load_config(overrides={"clonebundles": {"keep": 0}}, env={})
    cfg = load_config(env={"LFSSERVE_CLONEBUNDLES_FORMATS": "none-v2;stream=v2, zstd-v2"})
    assert cfg.clonebundles.formats == ["none-v2;stream=v2", "zstd-v2"]


class _Repo:
    requirements = frozenset({"revlogv1", "generaldelta", "store"})

    def has_hidden(self) -> bool:
        return False

    def draft_roots(self) -> list[bytes]:
        return []


def test_redirect_capability_in_the_api_descriptor():
    plain = commands.api_descriptor(commands.Context(_Repo()))  # type: ignore[arg-type]
    assert b"redirect" not in plain
    ctx = commands.Context(_Repo(), redirect=redirect.descriptor("https://hg.example/x"))  # type: ignore[arg-type]
    desc = commands.api_descriptor(ctx)
    assert desc[b"redirect"] == {
        b"targets": [{b"name": b"lfsserve", b"protocol": b"https", b"uris": [b"https://hg.example/x/"],
                      b"snirequired": False, b"tlsversions": [b"1.2", b"1.3"]}],
        b"hashes": [b"sha256", b"sha1"]}
    assert redirect.descriptor("http://127.0.0.1:8080")[b"targets"][0][b"protocol"] == b"http"


def test_only_cacheable_commands_asking_for_our_target_are_redirected(tmp_path):
    r = redirect.Redirector(cb.open_bundle_store(load_config(overrides={"server": {"root": str(tmp_path)}},
                                                             env={})), "team/app", lambda key: "u")
    ours = {b"targets": [b"lfsserve"], b"hashes": [b"sha256"]}
    assert r.wanted(CommandRequest(1, b"changesetdata", {}, ours))
    assert r.wanted(CommandRequest(1, b"rawstorefiledata", {}, ours))
    assert not r.wanted(CommandRequest(1, b"heads", {}, ours))                      # not cacheable
    assert not r.wanted(CommandRequest(1, b"changesetdata", {}, None))              # no redirect asked
    assert not r.wanted(CommandRequest(1, b"changesetdata", {}, {b"targets": [b"cdn"]}))
    assert not r.wanted(CommandRequest(1, b"changesetdata", {}, {b"targets": b"lfsserve"}))


def test_a_redirect_answer_is_one_status_object_then_the_end():
    w = ResponseWriter(IdentityEncoder())
    location = {b"url": b"http://h/r/.hg/clonebundles/v2-x.cbor", b"mediatype": b"application/mercurial-cbor",
                b"size": 42, b"fullhashes": [[b"sha256", b"\1" * 32]]}
    body = b"".join(w.respond(1, iter(()), lambda exc: ("server", str(exc), []), last=True,
                              initial={b"status": b"redirect", b"location": location}))
    answer = decode_response(body).answers[1]
    assert answer.complete and answer.error is None
    assert answer.values == [{b"status": b"redirect", b"location": location}]
