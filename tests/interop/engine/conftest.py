"""Session fixtures for the engine tests: repositories built once with the real hg 7.2.4."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import Hg

from .repos import build_lfs, build_synthetic, build_varied


@pytest.fixture(scope="session")
def session_hg(tmp_path_factory) -> Hg:
    return Hg(tmp_path_factory.mktemp("engine-hg-home"))


@pytest.fixture(scope="session")
def built(tmp_path_factory, session_hg: Hg) -> dict[str, Path]:
    """name -> repository path; treat them as read-only (copy before writing)."""
    base = tmp_path_factory.mktemp("engine-repos")
    hg = session_hg
    repos = {"varied": build_varied(hg, base / "varied")}
    repos["lfs"] = build_lfs(hg, base / "lfs", base / "lfs-blobs")
    repos["synthetic"] = build_synthetic(base / "synthetic", 400, "--desc", "500", "--merges")
    # the same history in older or different formats, converted by hg itself
    hg("--config", "format.revlog-compression=zlib", "clone", "-q", "--pull", str(repos["varied"]),
       str(base / "zlib"))
    repos["zlib"] = base / "zlib"
    hg("--config", "format.usegeneraldelta=false", "--config", "format.sparse-revlog=false",
       "--config", "format.dotencode=false", "--config", "format.revlog-compression=zlib",
       "clone", "-q", "--pull", str(repos["varied"]), str(base / "oldformat"))
    repos["oldformat"] = base / "oldformat"
    hg("--config", "format.usefncache=false", "clone", "-q", "--pull", str(repos["varied"]),
       str(base / "nofncache"))
    repos["nofncache"] = base / "nofncache"
    return repos
