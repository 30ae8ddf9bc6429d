"""Mercurial-compatible push hooks: external commands from `[hooks]`, run as hg runs them.

Hooks come from lfsserve's `hooks.commands` (every repository) and, when `hg.repo_hooks` is on,
from the repository's own `.hg/hgrc [hooks]` (read by hg/hgrc.py). Names are `type[.suffix]`; `priority.<name>`
orders them (higher first, then in the order given, global ones before the repository's), as hg's
`_allhooks` does. A command runs through the shell with the repository root as its working
directory and hg's environment (HG_NODE, HG_NODE_LAST, HG_SOURCE, HG_URL, HG_PENDING,
HG_HOOKTYPE, HG_HOOKNAME, HG_TXNID, HG_TXNNAME) plus HG_USER / LFSSERVE_USER, the authenticated
user. In-process `python:` hooks are refused when the hooks are loaded.

The push runs in a worker thread; each hook runs as an asyncio subprocess on the server's event
loop (the thread waits for it), killed after `hooks.timeout` seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import HOOK_TYPES, HooksConfig
from .hg.error import Abort

if TYPE_CHECKING:
    import asyncio

__all__ = ["Hook", "HookError", "HookRunner", "HookSet", "load_hooks"]

# What a hook may print that reaches the client; the rest is dropped (memory stays bounded).
MAX_OUTPUT = 64 * 1024


class HookError(Abort):
    """A hook cannot be loaded or run (python: hooks, an unknown priority...)."""


@dataclass(frozen=True)
class Hook:
    name: str       # "pretxnchangegroup.check"
    command: str

    @property
    def type(self) -> str:
        return self.name.split(".", 1)[0]


def _items_in_order(items: Iterable[tuple[str, str]], where: str, start: int,
                    into: dict[str, tuple[int, int, str, str]]) -> None:
    items = list(items)
    priorities = {}
    for name, value in items:
        if name.startswith("priority."):
            try:
                priorities[name[len("priority."):]] = int(value)
            except ValueError:
                raise HookError(f"{where}: hooks.{name} is not an integer: {value!r}") from None
    for name, cmd in items:
        if name.startswith(("priority.", "tonative.")) or ":" in name:
            continue
        if name.split(".", 1)[0] not in HOOK_TYPES:
            continue  # hooks lfsserve never fires (commit, preupdate...): as in hg, harmless
        if cmd.strip().startswith("python:"):
            raise HookError(f"hook {name} ({where}) is an in-process python: hook, which lfsserve does "
                            "not support", hint="run it as an external command instead")
        into[name] = (-priorities.get(name, 0), start + len(into), name, cmd)


def load_hooks(config: HooksConfig, repo_items: Iterable[tuple[str, str]] | None, repo_name: str = "") -> HookSet:
    """The hooks of one repository: lfsserve's, then its hgrc's (None: not allowed), which
    override a global hook of the same name as a later hg config file would."""
    entries: dict[str, tuple[int, int, str, str]] = {}
    _items_in_order(config.commands.items(), "lfsserve config", 0, entries)
    if repo_items is not None:
        _items_in_order(repo_items, f"{repo_name}/.hg/hgrc", len(entries), entries)
    hooks = [Hook(name, cmd) for _, _, name, cmd in sorted(entries.values()) if cmd.strip()]
    return HookSet(hooks)


@dataclass(frozen=True)
class HookSet:
    hooks: list[Hook]

    def of(self, htype: str) -> list[Hook]:
        return [h for h in self.hooks if h.type == htype]

    def __bool__(self) -> bool:
        return bool(self.hooks)


def explain_exit(code: int) -> str:
    """How hg words a hook's end (procutil.explainexit)."""
    if code < 0:
        return f"killed by signal {-code}"
    return f"exited with status {code}"


class HookRunner:
    """Runs hook commands on `loop` from a worker thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float):
        self.loop = loop
        self.timeout = timeout

    def run_sync(self, hook: Hook, cwd: str, env: Mapping[str, str]) -> tuple[int, bytes]:
        """(exit code, stdout+stderr) of `hook`; blocks the calling thread, never the loop."""
        import asyncio  # lazily: hg over SSH imports it only for a write

        fut = asyncio.run_coroutine_threadsafe(self._run(hook, cwd, env), self.loop)
        return fut.result()

    async def _run(self, hook: Hook, cwd: str, env: Mapping[str, str]) -> tuple[int, bytes]:
        import asyncio

        full_env = {**os.environ, **env}
        proc = await asyncio.create_subprocess_shell(
            hook.command, cwd=cwd, env=full_env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        assert proc.stdout is not None
        out = bytearray()

        async def collect() -> None:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                if len(out) < MAX_OUTPUT:
                    out.extend(chunk[:MAX_OUTPUT - len(out)])
            await proc.wait()

        try:
            await asyncio.wait_for(collect(), self.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            out.extend(f"hook {hook.name} timed out after {self.timeout:g} seconds (hooks.timeout)\n".encode())
            return -signal.SIGKILL, bytes(out)
        assert proc.returncode is not None
        return proc.returncode, bytes(out)
