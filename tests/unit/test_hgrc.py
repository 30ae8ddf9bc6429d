"""The `.hg/hgrc` reader (hg's config syntax) and what the server makes of a repository's settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lfsserve.hg import hgrc
from lfsserve.hg.hgrc import HgrcError
from lfsserve.hg.repository import Repository
from lfsserve.repos import RepoRegistry, RepoSettings


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_syntax_as_hg_reads_it(tmp_path):
    write(tmp_path / "extra.rc", "[web]\ncontact = Ops <ops@example.com>\n[hooks]\nincoming = echo hi\n")
    rc = write(tmp_path / "hgrc", "\ufeff# a comment\n; another\n[phases]\npublish = False\n\n"
               "[web]\ndescription = first line\n  second line\n# comment inside\n  third line\n"
               "name=app\n%include extra.rc\n%include missing.rc\n"
               "[hooks]\npretxnchangegroup.check = ./check.sh\nincoming = echo again\n"
               "changegroup = x\n%unset changegroup\n[experimental]\nevolution = createmarkers exchange\n")
    cfg = hgrc.parse(rc)
    assert cfg.get("phases", "publish") == "False"
    assert cfg.get("web", "description") == "first line\nsecond line\nthird line"
    assert cfg.get("web", "name") == "app"
    assert cfg.get("web", "contact") == "Ops <ops@example.com>"
    # a setting made again moves last, as hg orders hooks; %unset removes
    assert cfg.items("hooks") == [("pretxnchangegroup.check", "./check.sh"), ("incoming", "echo again")]
    assert hgrc.evolution_options(cfg) == {"createmarkers": True, "allowunstable": False,
                                           "allowdivergence": False, "exchange": True}


@pytest.mark.parametrize(("text", "expected"), [
    ("evolution = all\n", (True, True, True, True)),
    ("evolution = true\n", (True, True, True, True)),
    ("evolution = false\n", (False, False, False, False)),
    ("evolution = all\nevolution.exchange = no\n", (True, True, True, False)),
    ("evolution.createmarkers = yes\n", (True, False, False, False)),
    ("evolution = exchange\n", (False, False, False, False)),  # nothing without createmarkers
    ("evolution = createmarkers, allowunstable\n", (True, True, False, False)),
])
def test_evolution_options_as_hg_computes_them(tmp_path, text, expected):
    cfg = hgrc.parse(write(tmp_path / "hgrc", "[experimental]\n" + text))
    got = hgrc.evolution_options(cfg)
    assert tuple(got[o] for o in hgrc.EVOLUTION_OPTIONS) == expected


def test_evolve_extension_means_all_unless_said_otherwise(tmp_path):
    cfg = hgrc.parse(write(tmp_path / "hgrc", "[extensions]\nevolve =\n"))
    assert all(hgrc.evolution_options(cfg).values())
    cfg = hgrc.parse(write(tmp_path / "hgrc", "[extensions]\nevolve = !\n"))
    assert not any(hgrc.evolution_options(cfg).values())


@pytest.mark.parametrize(("text", "message"), [
    ("[web]\n  indented = 1\n", "parse error at .hg/hgrc:2: unexpected leading whitespace:   indented = 1"),
    ("[web\n", "parse error at .hg/hgrc:1: [web"),
    ("just words\n", "parse error at .hg/hgrc:1: just words"),
])
def test_parse_errors_in_hg_form(tmp_path, text, message):
    write(tmp_path / ".hg" / "hgrc", text)
    with pytest.raises(HgrcError) as exc:
        hgrc.load(tmp_path)
    assert exc.value.message == message


def test_include_cycle_refused(tmp_path):
    rc = write(tmp_path / "hgrc", "%include hgrc\n")
    with pytest.raises(HgrcError, match="nested more than"):
        hgrc.parse(rc)


def test_bad_boolean_is_hgs_error(tmp_path):
    repo = Repository.init(tmp_path / "r")
    write(repo.root / ".hg" / "hgrc", "[phases]\npublish = maybe\n")
    with pytest.raises(HgrcError, match=r"phases.publish is not a boolean \('maybe'\)"):
        RepoSettings().apply(repo)


def test_cached_until_a_file_changes(tmp_path):
    Repository.init(tmp_path / "r").close()
    inc = write(tmp_path / "shared.rc", "[phases]\npublish = true\n")
    rc = write(tmp_path / "r" / ".hg" / "hgrc", f"%include {inc}\n[web]\nhidden = yes\n")
    first = hgrc.load(tmp_path / "r")
    assert hgrc.load(tmp_path / "r") is first  # unchanged: not parsed again
    inc.write_text("[phases]\npublish = false\n# longer\n")
    second = hgrc.load(tmp_path / "r")
    assert second is not first and second.get("phases", "publish") == "false"
    st = rc.stat()
    rc.write_text(rc.read_text().replace("yes", "no "))
    os.utime(rc, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert hgrc.load(tmp_path / "r").get("web", "hidden") == "no"


def test_opener_applies_hgrc_within_server_limits(tmp_path):
    Repository.init(tmp_path / "a").close()
    write(tmp_path / "a" / ".hg" / "hgrc",
          "[phases]\npublish = False\n[experimental]\nevolution = all\n[extensions]\ntopic =\n"
          "[experimental]\ntopic.publish-bare-branch = yes\n"
          "[web]\ndescription = The app\ncontact = me\nallow-archive = gz zip\nhidden = true\n"
          "[hooks]\nchangegroup = ./notify\n")
    Repository.init(tmp_path / "b").close()
    with RepoRegistry(tmp_path).open("a") as repo:
        c = repo.config
        assert repo.publishing is False and c.publishing is False
        assert c.evolution.createmarkers and c.evolution.exchange and c.evolution.allowunstable
        assert c.topics.enabled and c.topics.publish_bare_branch
        # hg-evolve's other server settings keep their defaults when the hgrc does not set them
        assert (c.topics.server_mode, c.topics.gate_topic_changesets, c.topics.reject_tns_push,
                c.topics.allow_publish) == ("ignore", False, False, True)
        assert (c.web.description, c.web.contact, c.web.allow_archive, c.web.hidden) == \
            ("The app", "me", ("gz", "zip"), True)
        assert c.hooks == (("changegroup", "./notify"),) and not c.hooks_allowed
        assert c.hgrc.get("web", "contact") == "me"
    with RepoRegistry(tmp_path, RepoSettings(evolution=("createmarkers",))).open("b") as repo:
        assert repo.publishing and repo.config.evolution.createmarkers and not repo.config.evolution.exchange
    locked = RepoSettings(publishing=True, repo_evolution=False, repo_hooks=True)
    with RepoRegistry(tmp_path, locked).open("a") as repo:
        assert not repo.publishing and not repo.config.evolution.createmarkers and repo.config.hooks_allowed
    with RepoRegistry(tmp_path, RepoSettings(repo_hgrc=False)).open("a") as repo:
        assert repo.publishing and repo.config.web.description is None and repo.config.hooks == ()


def test_topic_server_settings_from_hgrc(tmp_path):
    Repository.init(tmp_path / "t").close()
    write(tmp_path / "t" / ".hg" / "hgrc",
          "[extensions]\ntopic =\n[experimental]\ntopic-mode.server = enforce\n"
          "topic.server-gate-topic-changesets = on\ntns-reject-push = 1\ntopic.allow-publish = no\n")
    with RepoRegistry(tmp_path).open("t") as repo:
        t = repo.config.topics
        assert (t.server_mode, t.gate_topic_changesets, t.reject_tns_push, t.allow_publish) == \
            ("enforce", True, True, False)
    write(tmp_path / "t" / ".hg" / "hgrc", "[experimental]\ntopic.allow-publish = maybe\n")
    with pytest.raises(HgrcError, match=r"topic\.allow-publish is not a boolean"), RepoRegistry(tmp_path).open("t"):
        pass
