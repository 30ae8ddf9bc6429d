"""Per-repository `.hg/hgrc` settings and changeset evolution with the real hg 7.2.4 client and
hg-evolve 12.0.0: one server for the module, one repository per scenario."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support import Hg, LfsserveProcess, start_lfsserve

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LfsserveProcess]:
    proc = start_lfsserve(tmp_path_factory.mktemp("evolve") / "server")
    yield proc
    alive = proc.alive()
    proc.stop()
    assert alive, "lfsserve exited during the tests:\n" + proc.log()[-4000:]


@pytest.fixture(scope="module")
def hg(tmp_path_factory) -> Hg:
    return Hg(tmp_path_factory.mktemp("hg-home"))


def server_repo(server: LfsserveProcess, hg: Hg, name: str, hgrc: str) -> Path:
    """A repository made by the real `hg init` where the server serves `name`, with its own hgrc."""
    path = server.root / "repos" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    hg("init", str(path))
    (path / ".hg" / "hgrc").write_text(hgrc)
    return path


def commit(hg: Hg, repo: Path, name: str, text: str, *extra: str) -> None:
    (repo / name).write_text(text)
    hg("commit", "-A", "-m", f"{name}: {text.strip()}", *extra, cwd=repo)


def test_non_publishing_repository_keeps_pushed_drafts(server, hg, tmp_path):
    served = server_repo(server, hg, "team/drafts", "[phases]\npublish = False\n")
    url = f"{server.url}/team/drafts"
    hg("clone", url, str(tmp_path / "a"))
    commit(hg, tmp_path / "a", "f", "one\n")
    out = hg.out("push", cwd=tmp_path / "a")
    assert "added 1 changesets" in out
    # the client learns the server is not publishing: its changeset stays draft
    assert hg.out("log", "-T", "{phase}", cwd=tmp_path / "a") == "draft"
    assert hg.out("log", "-T", "{phase}", cwd=served) == "draft"
    hg("clone", url, str(tmp_path / "b"))
    assert hg.out("log", "-T", "{phase}", cwd=tmp_path / "b") == "draft"
    # the hgrc changes: the next push publishes (the cache follows the file)
    (served / ".hg" / "hgrc").write_text("[phases]\npublish = True\n# now publishing\n")
    commit(hg, tmp_path / "a", "f", "two\n")
    hg("push", cwd=tmp_path / "a")
    assert hg.out("log", "-T", "{phase} ", cwd=served) == "public public "
    hg("verify", cwd=served)
