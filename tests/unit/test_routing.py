import pytest

from lfsserve.routing import BadPath, Kind, Target, resolve

OID = "a" * 64


@pytest.mark.parametrize("path, cmd, target", [
    ("/", False, Target(Kind.INDEX, "")),
    ("/repo", True, Target(Kind.HG, "repo")),
    ("/team/repo/", False, Target(Kind.HG, "team/repo")),
    ("/team/repo/objects/batch", True, Target(Kind.HG, "team/repo/objects/batch")),
    ("/team/repo/.git/info/lfs/objects/batch", False, Target(Kind.LFS_BATCH, "team/repo")),
    ("/team/repo.git/info/lfs/objects/batch", False, Target(Kind.LFS_BATCH, "team/repo")),
    ("/team/repo/objects/batch", False, Target(Kind.LFS_BATCH, "team/repo")),
    ("/team/repo/.git/info/lfs/locks", False, Target(Kind.LFS_LOCKS, "team/repo", "")),
    ("/team/repo.git/info/lfs/locks/verify", False, Target(Kind.LFS_LOCKS, "team/repo", "verify")),
    ("/team/repo/locks/17/unlock", False, Target(Kind.LFS_LOCKS, "team/repo", "17/unlock")),
    (f"/team/repo/.hg/lfs/objects/{OID}", False, Target(Kind.LFS_OBJECT, "team/repo", OID)),
    ("/team/repo/.hg/lfs/verify", False, Target(Kind.LFS_VERIFY, "team/repo")),
    ("/repo/api", False, Target(Kind.HG_API, "repo", "")),
    ("/a/repo/api/exp-http-v2-0003/ro/heads", False, Target(Kind.HG_API, "a/repo", "exp-http-v2-0003/ro/heads")),
    ("/api/core/api/exp-http-v2-0003/ro/multirequest", False,
     Target(Kind.HG_API, "api/core", "exp-http-v2-0003/ro/multirequest")),
    # the web UI: the first web command after a repository path; what follows is the page's
    ("/team/repo/log", False, Target(Kind.WEB, "team/repo", "log")),
    ("/team/repo/file/tip/.hgtags", False, Target(Kind.WEB, "team/repo", "file/tip/.hgtags")),
    ("/repo/file/tip/d/\u00fc.txt", False, Target(Kind.WEB, "repo", "file/tip/d/\u00fc.txt")),
    ("/repo/json-log", False, Target(Kind.WEB, "repo", "json-log")),
    ("/repo/raw-file/abc/x/log/y", False, Target(Kind.WEB, "repo", "raw-file/abc/x/log/y")),
    ("/repo/archive/tip.tar.gz", False, Target(Kind.WEB, "repo", "archive/tip.tar.gz")),
    ("/repo/atom-log", False, Target(Kind.WEB, "repo", "atom-log")),
    ("/log", False, Target(Kind.HG, "log")),
    ("/repo/logs", False, Target(Kind.HG, "repo/logs")),
    ("/repo/json-nothing", False, Target(Kind.HG, "repo/json-nothing")),
    ("/repo/log", True, Target(Kind.HG, "repo/log")),
    ("/repo/file/tip/docs/api", False, Target(Kind.WEB, "repo", "file/tip/docs/api")),
    ("/repo/file/tip/objects/batch", False, Target(Kind.WEB, "repo", "file/tip/objects/batch")),
    ("/repo/raw-file/tip/locks", False, Target(Kind.WEB, "repo", "raw-file/tip/locks")),
    ("/repo/file/tip/.git/info/lfs/objects/batch", False, Target(Kind.LFS_BATCH, "repo/file/tip")),
])
def test_resolve(path, cmd, target):
    assert resolve(path, path, cmd) == target


@pytest.mark.parametrize("path, raw", [
    ("/../etc/passwd", "/../etc/passwd"),
    ("/a/../b", "/a/../b"),
    ("/a/./b", "/a/./b"),
    ("/.hg/store", "/.hg/store"),
    ("/repo/.hg/lfs/objects/AAAA", "/repo/.hg/lfs/objects/AAAA"),
    ("/repo/.hg/lfs/objects/" + "A" * 64, "/repo/.hg/lfs/objects/" + "A" * 64),
    ("/a/../../x", "/a/%2e%2e/%2E%2E/x"),
    ("/a/b", "/a%2fb"),
    ("/a\\b", "/a%5cb"),
    ("/r\u00e9po", "/r%C3%A9po"),
    ("/a//b", "/a//b"),
    ("/-rf", "/-rf"),
    ("/" + "x/" * 20, "/" + "x/" * 20),
    ("/" + "x" * 300, "/" + "x" * 300),
    ("/repo/.git/info/lfs/whatever", "/repo/.git/info/lfs/whatever"),
    ("/.hg/log", "/.hg/log"),
    ("/repo/file/tip/a/../../b", "/repo/file/tip/a/%2e%2e/%2e%2e/b"),
])
def test_rejects(path, raw):
    with pytest.raises(BadPath):
        resolve(path, raw, False)
