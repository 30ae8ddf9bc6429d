"""Code and docs name no path that exists only on some developer's or CI machine."""

import re

from ..support import REPO_ROOT

# Home and workspace directories of particular machines; /tmp and /srv examples are fine.
MACHINE_PATH = re.compile(r"(?<![\w.~])/(home|work|Users|root)/\w")
SOURCES = ["lfsserve", "tests", "bench", "deploy", ".ci"]
DOCS = ["README.md", "config.example.toml", "Dockerfile", "pyproject.toml"]


def test_no_development_machine_paths():
    files = [REPO_ROOT / d for d in DOCS]
    for top in SOURCES:
        files += [p for p in (REPO_ROOT / top).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    found = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
