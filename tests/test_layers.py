"""The layers import one way: a module may use its own layer and the ones below, never above,
and no two modules import each other, directly or round a loop (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cachefs"

#: bottom to top; a module may import from its own layer and any layer before it
LAYERS = ["base", "store", "tier", "pack", "remote", "core", "fuse", "daemon", "cli"]
#: top-level modules: the shared vocabulary (base) and the public front ends (cli level)
TOP_LEVEL = {"errors": "base", "config": "base", "metrics": "base", "names": "base",
             "nodes": "base", "attrs": "base", "api": "cli", "__init__": "cli",
             "__main__": "cli"}
#: the only modules that may import these third-party packages
ONLY = {"pyfuse3": {"cachefs.fuse.ops", "cachefs.daemon.run"},
        "boto3": {"cachefs.store.s3"}, "botocore": {"cachefs.store.s3"},
        "zstandard": {"cachefs.pack.codec"}, "httpx": {"cachefs.remote.origin"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "cli"  # the package itself (cachefs/__init__.py)
    if len(parts) == 2 and parts[1] in TOP_LEVEL:
        return TOP_LEVEL[parts[1]]
    assert parts[1] in LAYERS, f"{module}: not in a layer folder (add it to LAYERS)"
    return parts[1]


def imports(path: Path) -> list[tuple[str, int]]:
    """(imported cachefs module, line) for every import in ``path``, lazy ones included."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            for alias in node.names:  # `from . import x` names a module
                candidate = f"{target}.{alias.name}"
                if _exists(candidate):
                    found.append((candidate, node.lineno))
    return found


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def graph() -> dict[str, list[tuple[str, int]]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = []
    for module, targets in graph().items():
        for target, line in targets:
            if not target.startswith("cachefs.") or not _exists(target):
                continue
            if LAYERS.index(layer(target)) > LAYERS.index(layer(module)):
                upward.append(f"{module}:{line} imports {target} ({layer(module)} → "
                              f"{layer(target)})")
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    edges = {m: {t for t, _ in ts if t.startswith("cachefs.") and _exists(t) and t != m}
             for m, ts in graph().items()}
    # A package's __init__ is imported on the way to its modules: no edge of its own.
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" → ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_third_party_clients_stay_in_their_module() -> None:
    stray = []
    for module, targets in graph().items():
        for target, line in targets:
            top = target.split(".")[0]
            if top in ONLY and module not in ONLY[top]:
                stray.append(f"{module}:{line} imports {top}")
    assert not stray, "\n".join(stray)


def test_the_cli_can_take_the_cache_dir_lock_without_pyfuse3() -> None:
    """`cachefs clear` and `verify` lock the cache dir, and every command reads a mount's
    control attributes; they must work where FUSE is absent."""
    reachable = set()
    todo = ["cachefs.daemon.lock", "cachefs.daemon.control"]
    edges = graph()
    while todo:
        module = todo.pop()
        if module in reachable:
            continue
        reachable.add(module)
        todo += [t for t, _ in edges.get(module, ()) if t.startswith("cachefs.")]
        assert not any(t == "pyfuse3" for t, _ in edges.get(module, ())), module
