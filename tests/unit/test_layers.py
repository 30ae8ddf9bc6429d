"""The import graph of lfsserve points one way: front ends -> kernel -> stores/engine.

Read from the sources (ast), so every import counts, including those inside functions (but not
those under `if TYPE_CHECKING:`, which only annotations see):

    top          app, server, cli, admin, entry,     compose and run everything
                 __main__
    front ends   wire/, lfs/, ssh/, web/             never import the top, nor each other; ssh/
                                                     reaches LFS storage through lfs.service only
    kernel       every other top-level module        never imports a front end or the top
    stores       hg/, blobstore/                      import only themselves and the utils
    utils        aio, sqlitedb, pgdb, config             leaves: no HTTP, no front end, no kernel

plus: no import cycle between modules at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lfsserve

ROOT = Path(lfsserve.__file__).parent
TOP = {"lfsserve.app", "lfsserve.server", "lfsserve.cli", "lfsserve.admin", "lfsserve.__main__", "lfsserve.entry"}
UTILS = {"lfsserve.aio", "lfsserve.sqlitedb", "lfsserve.pgdb", "lfsserve.config"}
FRONT_ENDS = ("lfsserve.wire", "lfsserve.lfs", "lfsserve.ssh", "lfsserve.web")
# Service modules of a front end that other front ends may use: LfsService is the one door to LFS
# storage (its HTTP handlers in lfs/ stay private to that front end); the transport-free wire v1
# commands and what their transports share serve hg over HTTP (wire/) and over SSH (ssh/).
SHARED_SERVICES = {"lfsserve.lfs.service", "lfsserve.wire.v1.commands", "lfsserve.wire.v1.transport"}
STORES = ("lfsserve.hg", "lfsserve.blobstore")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _is_type_checking(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` blocks import for annotations only: no edge at run time."""
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The lfsserve modules `name` imports (a `from pkg import sub` counts as importing pkg.sub)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    type_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block)
                 for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                out.add(sub if sub in known else module)
    return {m for m in out if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _under(module: str, packages: tuple[str, ...]) -> str | None:
    for p in packages:
        if module == p or module.startswith(p + "."):
            return p
    return None


def _layer_violation(src: str, dst: str) -> str | None:
    """Why src must not import dst, or None when it may."""
    if src in TOP:
        return None
    if dst in TOP:
        return "only the top (app, server, cli, admin) may import the top"
    src_fe, dst_fe = _under(src, FRONT_ENDS), _under(dst, FRONT_ENDS)
    if src_fe:
        if dst_fe and dst_fe != src_fe and dst not in SHARED_SERVICES:
            return "a front end never imports another front end (use a kernel interface)"
        return None
    if dst_fe:
        return "only the top composes front ends"
    src_store = _under(src, STORES)
    if src_store or src in UTILS:
        if src_store and _under(dst, STORES) == src_store:
            return None
        if dst in UTILS:
            return None
        return "stores, engine and utils import only themselves and the utils"
    return None  # kernel -> kernel, stores or utils


def test_no_import_points_upward():
    bad = [f"{src} imports {dst}: {why}" for src, deps in sorted(_graph().items()) for dst in sorted(deps)
           if (why := _layer_violation(src, dst))]
    assert bad == []


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep, path)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert [" -> ".join(c) for c in cycles] == []


def test_the_checks_see_an_upward_import():
    # The rules above are only worth something if they would catch the imports they forbid.
    assert _layer_violation("lfsserve.wire.v1", "lfsserve.app")
    assert _layer_violation("lfsserve.wire.v1", "lfsserve.lfs")
    assert _layer_violation("lfsserve.lfs.batch", "lfsserve.wire.v2.http")
    assert _layer_violation("lfsserve.kernel", "lfsserve.lfs")
    assert _layer_violation("lfsserve.health", "lfsserve.app")
    assert _layer_violation("lfsserve.hg.repository", "lfsserve.auth")
    assert _layer_violation("lfsserve.blobstore.local", "lfsserve.kernel")
    assert _layer_violation("lfsserve.sqlitedb", "lfsserve.routing")
    assert _layer_violation("lfsserve.lfs.service", "lfsserve.kernel") is None
    assert _layer_violation("lfsserve.ssh.transfer", "lfsserve.lfs.service") is None
    assert _layer_violation("lfsserve.ssh.transfer", "lfsserve.lfs.batch")
    assert _layer_violation("lfsserve.ssh.session", "lfsserve.app")
    assert _layer_violation("lfsserve.ssh.hg", "lfsserve.wire.v1")
    assert _layer_violation("lfsserve.wire.v1", "lfsserve.ssh.transfer")
    assert _layer_violation("lfsserve.app", "lfsserve.wire.v1") is None
    graph = _graph()
    assert "lfsserve.hg.changegroup" in graph["lfsserve.hg.repository"]  # lazy imports count
