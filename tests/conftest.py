"""Shared fixtures: a real lfsserve process, a real hg client. See tests/support.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import Hg, LfsserveProcess, hg593_exe, start_lfsserve


@pytest.fixture
def lfsserve(tmp_path: Path):
    """Factory: `lfsserve(*args, config=..., anonymous=...)` starts a server; all are stopped at the end.

    A server that died during the test fails it: bad input must leave the server serving.
    """
    started: list[LfsserveProcess] = []

    def start(*args: str, root: Path | None = None, **kwargs) -> LfsserveProcess:
        server = start_lfsserve(root or tmp_path / f"server{len(started)}", *args, **kwargs)
        started.append(server)
        return server

    yield start
    died = [s for s in started if not s.alive() and not s.stopped]
    for s in started:
        s.stop()
    if died:
        pytest.fail("lfsserve exited during the test:\n" + "\n".join(s.log()[-4000:] for s in died))


@pytest.fixture
def hg(tmp_path: Path) -> Hg:
    """The real hg 7.2.4 client with an isolated HOME/hgrc (lfs usercache private to the test)."""
    return Hg(tmp_path / "hg-home")


@pytest.fixture(scope="session")
def hg593_path() -> str:
    """Mercurial 5.9.3 (pure Python) executable, built once into a cached venv."""
    return hg593_exe()


@pytest.fixture
def hg593(tmp_path: Path, hg593_path: str) -> Hg:
    """The real Mercurial 5.9.3 client (wire protocol v2 capable), isolated like `hg`."""
    return Hg(tmp_path / "hg593-home", exe=hg593_path)
