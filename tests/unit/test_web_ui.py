"""The web UI's pure parts: hgrc [web] settings, diff blocks within their budget, graph layout."""

from __future__ import annotations

from lfsserve.hg.diff import FileDiff, Hunk
from lfsserve.web.diffs import page_diff
from lfsserve.web.hgrc import WebSettings, parse_hgrc_section, read_web_settings


def test_hgrc_web_section(tmp_path):
    text = ("[ui]\nusername = x\n[web]\n# comment\ndescription = first line\n  second line\ncontact=Ann\n"
            "hidden = Yes\nallow_archive = gz, zip bz2\nname = old\n%unset name\n[web]\nlabels = a b\n")
    assert parse_hgrc_section(text, "web") == {"description": "first line\nsecond line", "contact": "Ann",
                                               "hidden": "Yes", "allow_archive": "gz, zip bz2", "labels": "a b"}
    (tmp_path / ".hg").mkdir()
    (tmp_path / ".hg" / "hgrc").write_text(text)
    got = read_web_settings(tmp_path, WebSettings(contact="default", description="d"))
    assert got == WebSettings(name="", description="first line\nsecond line", contact="Ann", hidden=True,
                              allow_archive=["gz", "zip", "bz2"], labels=["a", "b"])
    # nothing there: the server's defaults; a huge file is not one a person wrote
    assert read_web_settings(tmp_path / "none", WebSettings(contact="c")) == WebSettings(contact="c")
    # hgweb's spelling wins over the older one
    (tmp_path / ".hg" / "hgrc").write_text("[web]\nallow_archive = zip\nallow-archive = gz bz2\n")
    assert read_web_settings(tmp_path).allow_archive == ["gz", "bz2"]
    (tmp_path / ".hg" / "hgrc").write_text("[web]\ndescription = x\n" + "#" * (300 << 10))
    assert read_web_settings(tmp_path) == WebSettings()


def _fd(path: bytes, n: int) -> FileDiff:
    lines = [b"+line %d\n" % i for i in range(n)]
    return FileDiff(path, path, "added", [b"diff -r 000000000000 -r 111111111111 " + path, b"--- /dev/null",
                                          b"+++ b/" + path], [Hunk(0, 0, 1, n, lines)])


def test_page_diff_blocks_and_budget():
    shown = page_diff([_fd(b"a", 2), FileDiff(b"big", b"big", "modified", [b"diff big"], [], too_large=True)])
    assert [b.placeholder for b in shown.blocks] == ["", shown.blocks[1].placeholder]
    assert "diff too large" in shown.blocks[1].placeholder and not shown.notice
    # hgweb's JSON: the `diff -r` line left out, lines numbered from 1 within each block
    assert shown.json_blocks()[0] == {"blockno": 1, "lines": [
        {"t": "-", "n": 1, "l": "--- /dev/null\n"}, {"t": "+", "n": 2, "l": "+++ b/a\n"},
        {"t": "@", "n": 3, "l": "@@ -0,0 +1,2 @@\n"}, {"t": "+", "n": 4, "l": "+line 0\n"},
        {"t": "+", "n": 5, "l": "+line 1\n"}]}
    # past the page's budget, files become placeholders and the page says so
    limited = page_diff([_fd(b"a", 10), _fd(b"b", 10_000), _fd(b"c", 10)], budget=10_000)
    assert [bool(b.placeholder) for b in limited.blocks] == [False, True, True]
    assert "too large" in limited.notice
    html = limited.html(False, lambda p: "/r/file/x/" + p)
    assert html.count('<section class="box diff"') == 3 and "+line 9" in html and "+line 5000" not in html
    # everything is escaped
    evil = page_diff([_fd(b"<img src=x>", 1)]).html(True, lambda p: "/f")
    assert "<img" not in evil and "&lt;img src=x&gt;" in evil


def test_manifest_text_cache_is_bounded():
    from lfsserve.hg.manifest import _TextCache

    cache = _TextCache(max_bytes=100, max_item=60)
    cache.put(b"a", b"x" * 40)
    cache.put(b"b", b"y" * 40)
    assert cache.get(b"a") == b"x" * 40  # a is now the most recent
    cache.put(b"c", b"z" * 40)            # over 100 bytes: the least recent (b) goes
    assert cache.get(b"b") is None and cache.get(b"a") and cache.get(b"c")
    cache.put(b"huge", b"h" * 61)         # larger than one item may be: not kept
    assert cache.get(b"huge") is None and cache.get(b"a")
