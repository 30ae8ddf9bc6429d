"""A new user's first minutes against a real server: what `/`, a missing repository and an empty
one say (to curl, to a browser, to real hg)."""

import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from ..support import REPO_ROOT

pytestmark = pytest.mark.interop


def get(url: str, accept: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_index_missing_and_empty_repository_say_what_to_do(lfsserve, hg, tmp_path):
    root = tmp_path / "data"
    server = lfsserve(root=root)
    status, text = get(server.url + "/")
    assert status == 200 and "No repositories" in text and "lfsserve init" in text  # not an empty body
    status, text = get(server.url + "/", accept="text/html")
    assert status == 200 and "lfsserve init" in text and "hg.create_on_push" in text

    status, text = get(server.url + "/team/app")
    assert status == 404 and "lfsserve init team/app" in text
    res = hg("clone", server.url + "/team/app", str(tmp_path / "clone"), check=False)
    assert res.returncode != 0 and b"lfsserve init team/app" in res.stderr

    subprocess.run([sys.executable, "-m", "lfsserve", "init", "--root", str(root), "team/app"],
                   cwd=REPO_ROOT, check=True, capture_output=True)
    status, text = get(server.url + "/team/app", accept="text/html")
    assert status == 200 and "It is empty" in text and "head(s)" not in text and " head" not in text
    assert get(server.url + "/")[1] == f"{server.url}/team/app\n"  # scripts still get one URL a line

    work = tmp_path / "work"
    hg("init", str(work))
    (work / "f").write_text("x")
    hg("commit", "-Am", "one", "-u", "t", cwd=work)
    hg("push", server.url + "/team/app", cwd=work)
    status, text = get(server.url + "/team/app", accept="text/html")
    assert "Latest changes" in text and ">one</a>" in text and "empty" not in text


def test_missing_repository_with_create_on_push_says_push(lfsserve, tmp_path):
    server = lfsserve(config="[hg]\ncreate_on_push = true\n")
    status, text = get(server.url + "/")
    assert status == 200 and "create_on_push is on" in text
