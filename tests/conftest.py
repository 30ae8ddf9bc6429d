"""Shared fixtures: a real lfsserve process, a real hg client. See tests/support.py.

Also the guard of the `interop` marker: `-m "not interop"` must select exactly the in-process tests.
A test without the marker fails collection if it lives under tests/interop, uses a fixture that
starts a server or a client program, or (a unit module) runs `python -m lfsserve` itself; and it
fails when run if it calls a support helper that starts a process (tests/support.py
`require_interop_marker`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from . import support
from .s3server import MotoServer
from .support import Hg, LfsserveProcess, hg593_exe, start_lfsserve

INTEROP_DIR = Path(__file__).resolve().parent / "interop"
# Fixtures (here and under tests/interop) that start a server or an external program.
INTEROP_FIXTURES = frozenset({"lfsserve", "hg", "hg593", "hg593_path", "moto"})
# In a module's source: it starts our own command as a process.
RUNS_LFSSERVE = '"-m", "lfsserve"'


def _missing_interop_marker(item: pytest.Item) -> str | None:
    """Why `item` needs the interop marker it lacks, or None."""
    if item.get_closest_marker("interop") is not None:
        return None
    path = Path(item.path).resolve()
    if INTEROP_DIR in path.parents:
        return "it is under tests/interop"
    fixtures = sorted(INTEROP_FIXTURES.intersection(getattr(item, "fixturenames", ())))
    if fixtures:
        return f"it uses the fixture(s) {', '.join(fixtures)}"
    if path.suffix == ".py" and RUNS_LFSSERVE in path.read_text(encoding="utf-8"):
        return "its module runs `python -m lfsserve` as a process"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    errors = [f"{item.nodeid}: {why}" for item in items if (why := _missing_interop_marker(item))]
    if errors:
        raise pytest.UsageError("tests without the interop marker (add `pytestmark = pytest.mark.interop` "
                                "to the module):\n  " + "\n  ".join(errors))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    support.CURRENT_TEST_IS_INTEROP = item.get_closest_marker("interop") is not None
    try:
        return (yield)
    finally:
        support.CURRENT_TEST_IS_INTEROP = None


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
def moto() -> Iterator[MotoServer]:
    """A moto S3 server for the whole session (tests create their own buckets); see tests/s3server.py."""
    server = MotoServer.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hg593_path() -> str:
    """Mercurial 5.9.3 (pure Python) executable, built once into a cached venv."""
    return hg593_exe()


@pytest.fixture
def hg593(tmp_path: Path, hg593_path: str) -> Hg:
    """The real Mercurial 5.9.3 client (wire protocol v2 capable), isolated like `hg`."""
    return Hg(tmp_path / "hg593-home", exe=hg593_path)
