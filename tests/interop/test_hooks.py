"""Mercurial push hooks (issue 15), with the real hg 7.2.4 client over HTTP and SSH.

A `pretxnchangegroup` hook, a shell script calling the real `hg log -r $HG_NODE:` on the pending
changesets (HG_PENDING), refuses a commit message: the client shows the hook's output as
`remote:` lines and hg's abort, and nothing of the push stays. A `changegroup` hook sees the
nodes, the source, the URL and the user.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ..support import HG, REPO_ROOT, Hg, hg_env, run

pytestmark = pytest.mark.interop

TIMEOUT = 120

CHECK = """#!/bin/sh
# refuse any pushed changeset whose description mentions WIP; uses the pending changesets
set -e
: "${HOOK_DIR:?}"
hg log -r "$HG_NODE:" -T '{node|short} {desc|firstline}\\n' > "$HOOK_DIR/seen-$$"
if grep -q WIP "$HOOK_DIR/seen-$$"; then
    echo "rejected by policy: $(grep WIP "$HOOK_DIR/seen-$$")"
    echo "pending=$HG_PENDING" >&2
    exit 1
fi
echo "checked $(cut -d' ' -f1 "$HOOK_DIR/seen-$$" | tr '\\n' ' ')as $HG_USER"
"""

RECORD = """#!/bin/sh
line="$HG_HOOKTYPE $HG_HOOKNAME $HG_NODE $HG_NODE_LAST $HG_SOURCE $HG_URL $LFSSERVE_USER"
echo "$line $HG_BUNDLE2 $HG_TXNID" >> "$HOOK_DIR/log"
"""

GUARD = """#!/bin/sh
echo "$HG_HOOKTYPE|$HG_NAMESPACE|$HG_KEY|$HG_OLD|$HG_NEW|$HG_PUSHKEYCOMPAT|$HG_RET|$HG_USER" >> "$HOOK_DIR/pushkeys"
if [ "$HG_HOOKTYPE" = prepushkey ] && [ "$HG_KEY" = protected ]; then
    echo "bookmark $HG_KEY is frozen"
    exit 1
fi
"""


def _script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def test_pretxnchangegroup_refuses_changegroup_sees_nodes_http_and_ssh(lfsserve, tmp_path):
    hook_dir = tmp_path / "hooks"
    hook_dir.mkdir()
    check = _script(hook_dir / "check.sh", CHECK)
    record = _script(hook_dir / "record.sh", RECORD)
    guard = _script(hook_dir / "guard.sh", GUARD)
    root = tmp_path / "data"
    config_text = (f'[server]\nroot = "{root}"\n[auth]\nauthenticated = "write"\n[hg]\nrepo_hooks = true\n'
                   "[hooks]\ntimeout = 60\n[hooks.commands]\n"
                   f'"pretxnchangegroup.msg" = "{check}"\n'
                   f'"changegroup.record" = "{record}"\n'
                   f'"incoming.record" = "{record}"\n'
                   f'"prepushkey.guard" = "{guard}"\n'
                   f'"pushkey.guard" = "{guard}"\n'
                   # a hook type lfsserve never fires is ignored, as hg ignores it where it does not apply
                   '"priority.changegroup.record" = "5"\n')
    run([sys.executable, "-m", "lfsserve", "init", "--root", str(root), "team/app"], cwd=REPO_ROOT)
    served = root / "repos" / "team" / "app"
    # a hook of the repository's own hgrc (hg.repo_hooks is on), in a non-publishing repository:
    # it sees the pushed changesets as drafts only through the pending phaseroots (without them
    # hg would take a changeset under no draft root for public)
    (served / ".hg" / "hgrc").write_text(
        '[phases]\npublish = False\n'
        '[hooks]\npretxnclose.repo = echo "repo hook: $(hg log -r $HG_NODE_LAST -T {phase})" >&2\n')
    server = lfsserve(root=root, config=config_text, env={"HOOK_DIR": str(hook_dir)})
    hg = Hg(tmp_path / "home")
    work = tmp_path / "work"
    hg("clone", f"{server.url}/team/app", str(work), timeout=TIMEOUT)

    def commit(name: str, message: str) -> str:
        (work / name).write_text(name + "\n")
        hg("add", name, cwd=work)
        hg("commit", "-m", message, "-u", "dev", cwd=work)
        return hg.out("log", "-r", ".", "-T", "{node}", cwd=work)

    good = commit("a", "good change")
    res = hg("push", cwd=work, timeout=TIMEOUT)
    out = res.stdout.decode() + res.stderr.decode()
    assert f"remote: checked {good[:12]} as \n" in out, out  # anonymous push: no user
    assert "remote: repo hook: draft\n" in out, out
    log = (hook_dir / "log").read_text().splitlines()
    # changegroup first (priority, and hg's order), then incoming for each changeset
    assert log[0].split()[:6] == ["changegroup", "changegroup.record", good, good, "serve",
                                  "remote:http:127.0.0.1:"], log
    assert log[0].split()[-2:-1] == ["1"] and log[0].split()[-1].startswith("TXN:")  # HG_BUNDLE2, HG_TXNID
    assert log[1].split()[:3] == ["incoming", "incoming.record", good], log

    # two changesets, the second one refused: the client sees the hook's output and hg's abort
    commit("b", "fine")
    bad = commit("c", "WIP do not push")
    res = hg("push", cwd=work, check=False, timeout=TIMEOUT)
    out = res.stdout.decode() + res.stderr.decode()
    assert res.returncode != 0
    assert f"remote: rejected by policy: {bad[:12]} WIP do not push" in out, out
    assert f"remote: pending={os.path.realpath(served)}" in out, out
    assert "remote: transaction abort!" in out and "remote: rollback completed" in out, out
    # hg serve's exact form (reference-traffic/11-push-rejected-by-hook.txt)
    assert "remote: pretxnchangegroup.msg hook exited with status 1\nabort: push failed on remote" in out, out
    server_log = run([HG, "log", "-T", "{node}\\n"], cwd=served, env=hg_env(tmp_path / "h2")).stdout.decode()
    assert server_log.split() == [good]
    assert not list((served / ".hg" / "store").glob("*.a")) and not list((served / ".hg" / "store").glob("*.pending"))
    assert run([HG, "verify", "-q"], cwd=served, env=hg_env(tmp_path / "h2"), check=False).returncode == 0
    assert len((hook_dir / "log").read_text().splitlines()) == 2  # no changegroup hook for a refused push

    # over SSH (hg's `ui.ssh` replaced by the forced command sshd would run): same refusal
    fake_ssh = _script(tmp_path / "fake-ssh", f"""#!/bin/sh
for last; do :; done
cd {REPO_ROOT}
export HOOK_DIR={hook_dir} SSH_ORIGINAL_COMMAND="$last" SSH_CLIENT="10.1.2.3 5555 22"
exec {sys.executable} -m lfsserve ssh --config {server_config(root)} --user alice
""")
    ssh_url = "ssh://git@example.invalid/team/app"
    res = hg("push", "-e", fake_ssh, ssh_url, cwd=work, check=False, timeout=TIMEOUT)
    out = res.stdout.decode() + res.stderr.decode()
    assert res.returncode != 0
    assert f"remote: rejected by policy: {bad[:12]} WIP do not push" in out, out
    # hg serve's exact form (reference-traffic/11-push-rejected-by-hook.txt)
    assert "remote: pretxnchangegroup.msg hook exited with status 1\nabort: push failed on remote" in out, out
    # amend the message: now accepted over SSH, and the changegroup hook sees the SSH user
    hg("commit", "--amend", "-m", "done", cwd=work)
    last = hg.out("log", "-r", ".", "-T", "{node}", cwd=work)
    res = hg("push", "-e", fake_ssh, ssh_url, cwd=work, timeout=TIMEOUT)
    out = res.stdout.decode() + res.stderr.decode()
    assert "remote: checked " in out and "as alice" in out, out
    entry = (hook_dir / "log").read_text().splitlines()[2].split()
    assert entry[:7] == ["changegroup", "changegroup.record", entry[2], last, "serve", "remote:ssh:10.1.2.3",
                         "alice"], entry
    assert run([HG, "log", "-r", "tip", "-T", "{node}"], cwd=served,
               env=hg_env(tmp_path / "h2")).stdout.decode() == last

    # bookmarks pushed: hg's prepushkey and pushkey hooks (HG_NAMESPACE, HG_KEY, HG_OLD, HG_NEW);
    # a refusing prepushkey aborts the push, with its output, and moves nothing
    assert not (hook_dir / "pushkeys").exists()  # no pushkey in the pushes above
    hg("bookmark", "-r", last, "protected", cwd=work)
    hg("bookmark", "-r", last, "release", cwd=work)
    res = hg("push", "-B", "protected", cwd=work, check=False, timeout=TIMEOUT)
    out = res.stdout.decode() + res.stderr.decode()
    assert res.returncode != 0 and "remote: bookmark protected is frozen\n" in out, out
    assert "remote: prepushkey.guard hook exited with status 1\nabort: push failed on remote" in out, out
    books = run([HG, "bookmarks", "-T", "{bookmark} "], cwd=served, env=hg_env(tmp_path / "h2")).stdout.decode()
    assert books == ""
    hg("push", "-B", "release", "-e", fake_ssh, ssh_url, cwd=work, check=False, timeout=TIMEOUT)
    books = run([HG, "bookmarks", "-T", "{bookmark} "], cwd=served, env=hg_env(tmp_path / "h2")).stdout.decode()
    assert books == "release "
    assert (hook_dir / "pushkeys").read_text().splitlines() == [
        "prepushkey|bookmarks|protected||" + last + "|1||",
        "prepushkey|bookmarks|release||" + last + "|1||alice",
        "pushkey|bookmarks|release||" + last + "|1|1|alice"]


def server_config(root: Path) -> Path:
    """The config file start_lfsserve wrote for a server whose root is `root`."""
    return root.parent / f"{root.name}-config.toml"
