"""The web UI against a real server, with real hg 7.2.4's `hg serve` (hgweb) as the oracle of its
JSON, and a real headless chromium for the pages.

One varied repository (merges, a named branch, a rename, a binary file, non-ASCII paths, an LFS
file, HTML in descriptions and file names) is pushed once to one lfsserve for the whole module;
the same source repository is served by `hg serve` for the JSON comparisons.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

from ..support import HG, Hg, LfsserveProcess, free_port, oid_of, require, start_lfsserve

pytestmark = pytest.mark.interop

LFS_CONTENT = b"".join(b"LFS line %d of the tracked data file\n" % i for i in range(40))
BINARY = bytes(range(256)) * 8
SCRIPT = "<script>alert('x')</script>"
HOSTILE_NAME = "<img src=x onerror=alert(1)>.txt"


@dataclass
class Site:
    server: LfsserveProcess
    hgweb: str       # the oracle: `hg serve` of the source repository
    src: Path
    nodes: dict[str, str]   # description -> node
    tmp: Path

    @property
    def repo(self) -> str:
        return f"{self.server.url}/team/site"


def _hg_serve(hg: Hg, repo: Path, tmp: Path) -> tuple[str, subprocess.Popen]:
    port = free_port()
    proc = subprocess.Popen([HG, "serve", "-R", str(repo), "-a", "127.0.0.1", "-p", str(port), "-E",
                             str(tmp / "hgweb-errors.log"), "-A", os.devnull], env=hg.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/json-tags", timeout=5).read()
            return url, proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError("hg serve did not start") from None
            time.sleep(0.1)


def _commit(hg: Hg, repo: Path, message: str, when: int, user: str = "Ann <ann@example.com>") -> None:
    hg("commit", "-A", "-q", "-m", message, "-u", user, "-d", f"{when} 0", cwd=repo)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("webui")
    htpasswd = tmp / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode() + "\n")
    server = start_lfsserve(tmp / "server", config=f"""
[auth]
htpasswd = "{htpasswd}"
[[auth.rules]]
repos = "private/**"
read = ["alice"]
write = ["alice"]
[hg]
create_on_push = true
[web]
ssh_clone_base = "ssh://hg@example.com"
""")
    hg = Hg(tmp / "home", f"[extensions]\nlfs =\n[lfs]\nurl = {server.url}/team/site/.git/info/lfs\n"
                          "track = **.dat\n")
    try:
        src = tmp / "src"
        hg("init", str(src))
        (src / "README.md").write_text("# Site\n\nA <b>test</b> repository.\n")
        (src / "src").mkdir()
        (src / "src" / "main.py").write_text("def main():\n    return 'hello'\n")
        (src / "old-name.txt").write_text("moved\nline two\n")
        _commit(hg, src, "initial import <b>bold</b>", 1_700_000_000)
        (src / "src" / "main.py").write_text("def main():\n    return 'hello, world'\n\n\nmain()\n")
        (src / "docs").mkdir()
        (src / "docs" / "ünïcödé.txt").write_text("Grüße, 世界\n")
        _commit(hg, src, "greet the world", 1_700_000_100, "Bob <bob@example.com>")
        hg("mv", "old-name.txt", "new-name.txt", cwd=src)
        (src / "logo.bin").write_bytes(BINARY)
        _commit(hg, src, "rename and add a binary", 1_700_000_200)
        hg("tag", "-u", "Ann <ann@example.com>", "-d", "1700000300 0", "v1.0", cwd=src)
        hg("branch", "-q", "feature", cwd=src)
        (src / "src" / "feature.py").write_text("FEATURE = True\n")
        _commit(hg, src, "start the feature", 1_700_000_400)
        hg("bookmark", "-q", "feat-mark", cwd=src)
        hg("update", "-q", "default", cwd=src)
        (src / "assets").mkdir()
        (src / "assets" / "data.dat").write_bytes(LFS_CONTENT)
        (src / HOSTILE_NAME).write_text(f"{SCRIPT}\n")
        _commit(hg, src, f"add LFS data and a hostile {SCRIPT} name", 1_700_000_500)
        hg("merge", "-q", "feature", cwd=src)
        _commit(hg, src, "merge the feature", 1_700_000_600)
        lines = "".join(f"line {i}\n" for i in range(30))
        (src / "src" / "main.py").write_text(lines)
        _commit(hg, src, "rewrite main", 1_700_000_700)
        hg("push", "-q", "--new-branch", "-r", "default", "-r", "feature", "-B", "feat-mark",
           f"{server.url}/team/site", cwd=src)
        # hgweb serves the same changesets (pushing made them public on both sides)
        (tmp / "private").mkdir()
        priv = server.root / "repos" / "private" / "hidden-gem"
        hg("clone", "-q", "-U", str(src), str(priv))
        (priv / ".hg" / "hgrc").write_text("[web]\ndescription = secret stuff\n")
        (src / ".hg" / "hgrc").write_text("[web]\ndescription = The <i>site</i> repo\ncontact = Ann\n"
                                          "allow-archive = gz zip\n")
        shutil.copy(src / ".hg" / "hgrc", server.root / "repos" / "team" / "site" / ".hg" / "hgrc")
        hidden = server.root / "repos" / "team" / "unlisted"
        hg("init", str(hidden))
        (hidden / ".hg" / "hgrc").write_text("[web]\nhidden = true\n")
        log = hg.out("log", "-T", "{desc|firstline}\\t{node}\\n", cwd=src)
        nodes = dict(line.split("\t") for line in log.splitlines())
        hgweb, proc = _hg_serve(hg, src, tmp)
        try:
            yield Site(server, hgweb, src, nodes, tmp)
        finally:
            proc.terminate()
            proc.wait(10)
        assert server.alive(), server.log()[-4000:]
    finally:
        server.stop()


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers={"Accept": "text/html", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def page(url: str, headers: dict | None = None) -> str:
    status, _, body = get(url, headers)
    assert status == 200, (url, status, body[:500])
    return body.decode("utf-8")


def q(path: str) -> str:
    return urllib.parse.quote(path)


ALICE = {"Authorization": "Basic " + b64encode(b"alice:wonderland").decode()}


# -- HTML pages -------------------------------------------------------------------------------------

def test_pages(site: Site):
    n = site.nodes
    summary = page(site.repo)
    assert "The &lt;i&gt;site&lt;/i&gt; repo" in summary and "<i>site</i>" not in summary
    assert f"hg clone {site.server.url}/team/site" in summary
    assert "hg clone ssh://hg@example.com/team/site" in summary
    assert "rewrite main" in summary and "v1.0" in summary and "feat-mark" in summary
    assert 'href="/team/site/archive/tip.zip"' in summary and ".tar.bz2" not in summary
    assert "<script>" not in summary and "&lt;script&gt;" in summary and "<img" not in summary

    shortlog = page(f"{site.repo}/shortlog")
    assert shortlog.count('href="/team/site/rev/') >= 2 * 8
    # paging: one a page, the second page links back
    first = page(f"{site.repo}/shortlog?revcount=1")
    assert "rewrite main" in first and "merge the feature" not in first and "skip=1" in first
    second = page(f"{site.repo}/shortlog?revcount=1&skip=1")
    assert "merge the feature" in second and 'rel="prev"' in second
    # filters: branch and keyword
    feature = page(f"{site.repo}/shortlog?branch=feature")
    assert "start the feature" in feature and "rewrite main" not in feature
    found = page(f"{site.repo}/log?rev=binary")
    assert "rename and add a binary" in found and "rewrite main" not in found

    graph = page(f"{site.repo}/graph")
    assert graph.count("<svg") == len(n) and graph.count("<circle") == len(n)

    rev = page(f"{site.repo}/rev/{n['rename and add a binary']}")
    assert "new-name.txt" in rev and "(from old-name.txt)" in rev and "logo.bin" in rev
    assert "removed" in rev and "added" in rev
    merge = page(f"{site.repo}/rev/{n['merge the feature']}")
    assert merge.count(">Parent<") == 2

    root = page(f"{site.repo}/file/tip")
    for name in ("README.md", "new-name.txt", "src/", "docs/", "assets/", "LFS"):
        assert name in root, name
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in root and HOSTILE_NAME not in root
    docs = page(f"{site.repo}/file/tip/docs")
    assert "ünïcödé.txt" in docs
    text = page(f"{site.repo}/file/tip/{q('docs/ünïcödé.txt')}")
    assert "Grüße, 世界" in text
    py = page(f"{site.repo}/file/{n['greet the world']}/src/main.py")
    assert 'class="k">def</span>' in py  # pygments highlighting
    binary = page(f"{site.repo}/file/tip/logo.bin")
    assert "binary file" in binary and "raw-file/" in binary
    lfs = page(f"{site.repo}/file/tip/assets/data.dat")
    assert "Git LFS" in lfs and oid_of(LFS_CONTENT) in lfs
    hostile = page(f"{site.repo}/file/tip/{q(HOSTILE_NAME)}")
    assert SCRIPT not in hostile and HOSTILE_NAME not in hostile
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in hostile

    rev_diff = page(f"{site.repo}/rev/{n['greet the world']}")
    added = '<tr class="add"><td class="ln"></td><td class="ln">2</td><td class="code">+    return &#39;hello, world'
    assert added in rev_diff
    sbs = page(f"{site.repo}/rev/{n['greet the world']}?sidebyside=1")
    assert 'class="source sbs"' in sbs and "hello, world" in sbs
    diff = page(f"{site.repo}/diff/{n['rename and add a binary']}/new-name.txt")
    assert "(added)" in diff and "+moved" in diff
    # an LFS file's diff shows its content (read from the blob store), not the pointer
    lfs_diff = page(f"{site.repo}/rev/{n[f'add LFS data and a hostile {SCRIPT} name']}")
    assert "+LFS line 39 of the tracked data file" in lfs_diff and "oid sha256:" not in lfs_diff
    blame = page(f"{site.repo}/annotate/tip/new-name.txt")
    assert blame.count("<tr id=") == 2 and "old-name.txt" in blame  # followed the rename
    history = page(f"{site.repo}/log/tip/src/main.py")
    assert "rewrite main" in history and "greet the world" in history and "start the feature" not in history
    assert "v1.0" in page(f"{site.repo}/tags")
    assert "feat-mark" in page(f"{site.repo}/bookmarks")
    branches = page(f"{site.repo}/branches")
    assert "feature" in branches and "default" in branches


def test_index_permissions_and_settings(site: Site):
    index = page(site.server.url + "/")
    assert "team/site" in index and "The &lt;i&gt;site&lt;/i&gt; repo" in index
    assert "private/hidden-gem" not in index and "team/unlisted" not in index
    assert "team/site" in page(site.server.url + "/?q=SITE") and "team/site" not in page(site.server.url + "/?q=zzz")
    as_alice = page(site.server.url + "/", ALICE)
    assert "private/hidden-gem" in as_alice and "secret stuff" in as_alice
    # a hidden repository is only left out of the index
    assert get(f"{site.server.url}/team/unlisted")[0] == 200

    # private: the same 404 as a repository that does not exist, in every form
    for path in ("private/hidden-gem", "private/hidden-gem/log", "private/hidden-gem/json-log",
                 "private/hidden-gem/file/tip/README.md"):
        status, _, body = get(f"{site.server.url}/{path}")
        status2, _, body2 = get(f"{site.server.url}/{path.replace('hidden-gem', 'no-such')}")
        assert status == status2 == 404, path
        assert body.replace(b"hidden-gem", b"X") == body2.replace(b"no-such", b"X"), path
        assert b"secret" not in body
    assert "secret stuff" in page(f"{site.server.url}/private/hidden-gem", ALICE)
    # logging in: an anonymous ?login asks for credentials, a logged-in one is sent back
    assert get(f"{site.repo}?login")[0] == 401
    assert get(f"{site.server.url}/?login")[0] == 401
    status, _, _ = get(f"{site.repo}/log?login", {"Authorization": "Basic " + b64encode(b"alice:wrong").decode()})
    assert status == 401
    # scripts still get one clone URL a line
    req = urllib.request.Request(site.server.url + "/")
    assert urllib.request.urlopen(req).read().decode() == f"{site.repo}\n{site.server.url}/team/unlisted\n"
    # the web UI is read-only
    assert get(f"{site.repo}/log", {"X": "y"})[0] == 200
    post = urllib.request.Request(f"{site.repo}/log", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(post)
    assert err.value.code == 405


@pytest.mark.parametrize("path", [
    "rev/zzzzzz", "rev/" + "a" * 300, "rev/%00", "rev/", "rev/-99999", "file/tip/..", "file/tip/a/../../x",
    "file/tip/no-such-file", "file/nosuchrev/README.md", "file/tip/%0a", "log/tip/no-such-file",
    "shortlog?revcount=0", "shortlog?revcount=999999", "shortlog?skip=-1", "shortlog?revcount=abc",
    "shortlog?revcount=%C2%B2", "shortlog?skip=%D9%A1", "rev/%D9%A1",
    "graph/zzz", "json-rev/zzz", "log/%FF%FE", "file/tip/README.md/inner", "json-file/tip/..",
    "nosuchcommand", "rev/tip%20", "file/tip%00/x",
])
def test_hostile_arguments_are_4xx(site: Site, path: str):
    status, _, body = get(f"{site.repo}/{path}")
    assert 400 <= status < 500, (path, status, body[:300])
    assert b"Traceback" not in body


def test_pages_forbid_scripts(site: Site):
    for url in (site.server.url + "/", site.repo, f"{site.repo}/graph", f"{site.repo}/rev/tip", f"{site.repo}/nope"):
        _, headers, _ = get(url)
        assert "default-src 'none'" in headers["Content-Security-Policy"] and "script-src" not in \
            headers["Content-Security-Policy"], url
        assert headers["X-Content-Type-Options"] == "nosniff"


def test_immutable_urls_are_cacheable(site: Site):
    node = site.nodes["greet the world"]
    for path in (f"rev/{node}", f"file/{node}/src/main.py", f"json-file/{node}/src"):
        status, headers, _ = get(f"{site.repo}/{path}")
        assert status == 200
        assert "immutable" in headers["Cache-Control"] and headers["ETag"]
        assert headers["Last-Modified"] == "Tue, 14 Nov 2023 22:15:00 GMT"
        status, _, body = get(f"{site.repo}/{path}", {"If-None-Match": headers["ETag"]})
        assert status == 304 and body == b""
    status, headers, _ = get(f"{site.repo}/rev/tip")
    assert status == 200 and "ETag" not in headers and "immutable" not in headers.get("Cache-Control", "")


# -- hgweb's JSON -----------------------------------------------------------------------------------

def _json(url: str) -> object:
    status, _, body = get(url)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


def _drop(value: object, keys: set[str]) -> object:
    if isinstance(value, dict):
        return {k: _drop(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_drop(v, keys) for v in value]
    return value


def test_json_matches_hgweb(site: Site):
    n = site.nodes
    urls = [
        "json-summary", "json-log", "json-shortlog?revcount=100", "json-log?rev=binary", "json-tags",
        "json-bookmarks", "json-branches", "json-file/tip", "json-file/tip/src", "json-file/tip/docs",
        f"json-file/{n['greet the world']}/{q('docs/ünïcödé.txt')}", "json-file/tip/src/main.py",
        "json-filelog/tip/src/main.py", f"json-log/{n['merge the feature']}/new-name.txt",
        "json-graph", "json-changelog", f"json-rev/{n['rename and add a binary']}",
        f"json-changeset/{n['merge the feature']}", f"json-rev/{n['start the feature']}",
        f"log?style=json&rev={n['greet the world'][:12]}", "?style=json",
        f"json-diff/{n['rename and add a binary']}/new-name.txt", f"json-diff/{n['greet the world']}/src/main.py",
        f"json-filediff/{n['rewrite main']}/src/main.py", f"json-diff/{n['merge the feature']}/src/feature.py",
        "json-annotate/tip/src/main.py", f"json-annotate/{n['merge the feature']}/new-name.txt",
        "json-annotate/tip/README.md", f"json-annotate/{n['greet the world']}/{q('docs/ünïcödé.txt')}",
    ]
    for url in urls:
        ours = _json(f"{site.repo}/{url}")
        theirs = _json(f"{site.hgweb}/{url}")
        # the graph's layout is ours to draw; archive URLs name each server
        ignore = {"col", "row", "color", "edges", "url"}
        assert _drop(ours, ignore) == _drop(theirs, ignore), url


# -- a real browser ---------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    require(Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(),
            "chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument("--user-data-dir=" + str(tmp_path_factory.mktemp("chromium-profile")))
    options.add_argument("--window-size=1200,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_in_a_real_browser(site: Site, browser, tmp_path: Path):
    from selenium.webdriver.common.by import By

    shots = []
    errors = []

    def check(name: str) -> None:
        path = tmp_path / f"{len(shots):02d}-{name}.png"
        browser.save_screenshot(str(path))
        shots.append(path)
        errors.extend((name, e) for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR"))
        assert browser.find_element(By.TAG_NAME, "main").is_displayed()

    def click(text: str) -> None:
        browser.find_element(By.LINK_TEXT, text).click()

    n = site.nodes
    browser.get(site.server.url + "/")
    check("index")
    assert browser.title.startswith("Repositories")
    names = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "table.repos td:first-child a")]
    assert names == ["team/site"]
    click("team/site")
    check("summary")
    assert browser.find_element(By.TAG_NAME, "h1").text == "team/site"
    assert browser.find_element(By.ID, "clone-http").get_attribute("value") == f"hg clone {site.repo}"
    rows = browser.find_elements(By.CSS_SELECTOR, "table.log tbody tr")
    assert len(rows) == len(n) and "rewrite main" in rows[0].text

    nav = browser.find_element(By.CSS_SELECTOR, "nav[aria-label=Repository]")
    nav.find_element(By.LINK_TEXT, "Graph").click()
    check("graph")
    assert browser.find_element(By.CSS_SELECTOR, "a[aria-current=page]").text == "Graph"
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.graph svg circle")) == len(n)
    # the merge draws its two parents' lines: some row has a line leaving to another column
    widths = [int(svg.get_attribute("width")) for svg in browser.find_elements(By.CSS_SELECTOR, "table.graph svg")]
    assert max(widths) > min(widths)

    click("greet the world")
    check("changeset")
    assert browser.find_element(By.CSS_SELECTOR, "dd.node").text == n["greet the world"]
    added = [r.text for r in browser.find_elements(By.CSS_SELECTOR, ".diff tr.add td.code")]
    assert "+    return 'hello, world'" in added and "+Grüße, 世界" in added
    click("Side-by-side view")
    check("changeset-sidebyside")
    assert browser.find_elements(By.CSS_SELECTOR, ".sbs td.code.add")

    browser.get(f"{site.repo}/file/tip")
    check("files")
    click("src/")
    check("files-src")
    click("main.py")
    check("file-view")
    code = browser.find_elements(By.CSS_SELECTOR, ".source td.code")
    assert len(code) == 30 and code[29].text == "line 29"
    click("annotate")
    check("annotate")
    who = browser.find_elements(By.CSS_SELECTOR, ".annotate td.who a")
    assert who and all(a.get_attribute("href").startswith(f"{site.repo}/annotate/") for a in who)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".annotate tbody tr")) == 30

    browser.get(f"{site.repo}/file/tip/assets")
    click("data.dat")
    check("lfs-file")
    body = browser.find_element(By.TAG_NAME, "main").text
    assert "stored with Git LFS" in body and "LFS line 39 of the tracked data file" in body

    browser.get(f"{site.repo}/file/tip/{q(HOSTILE_NAME)}")
    check("hostile-name")
    assert browser.find_element(By.CSS_SELECTOR, ".source td.code").text == SCRIPT  # shown, not run

    # a phone: nothing wider than the screen except what scrolls inside its own box
    browser.set_window_size(390, 844)
    for url in (site.repo, f"{site.repo}/rev/{n['greet the world']}", f"{site.repo}/file/tip/src/main.py"):
        browser.get(url)
        check("phone")
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1"), url
    # keyboard: the first Tab reaches the skip link
    from selenium.webdriver.common.keys import Keys
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert browser.switch_to.active_element.text == "Skip to content"

    assert not errors, errors
    assert all(p.stat().st_size > 1000 for p in shots)
