"""The package's import graph (every ``import`` statement, also those inside functions) has no
circle, and no module imports another module's private (``_name``) names.

The graph is built from the source with :mod:`ast` (nothing is imported). Importing ``a.b.c``
also runs the ``__init__`` of ``a`` and ``a.b``, so those packages are edges too (unless they
contain the importing module): that is how ``lcm_core/lora/io.py`` → ``architecture.py`` →
``lcm_core.lora`` (whose ``__init__`` imports ``io``) was a circle.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lcm_lora"
FOLDERS = ("lcm_core", "training", "cli", "nodes", "demo")
SCRIPTS = {"nodes/trainer_launch.py"}  # run as a script (python trainer_launch.py), not imported


def modules() -> dict[str, Path]:
    out = {PACKAGE: ROOT / "__init__.py"}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel.as_posix() in SCRIPTS:
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([PACKAGE, *parts])] = path
    return out


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str | None:
    if level == 0:
        return module if module and (module == PACKAGE or module.startswith(PACKAGE + ".")) else None
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """({module: modules it imports}, [(importer, imported module, private name)])."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith(PACKAGE)]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                if base is None:
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in mods:
                        targets.append(sub)
                    else:
                        targets.append(base)
                        if alias.name.startswith("_") and base != name:
                            private.append((name, base, alias.name))
            for target in targets:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):  # the packages on the way run their __init__ too
                    dep = ".".join(parts[:i])
                    if dep in mods and dep != name and not name.startswith(dep + "."):
                        graph[name].add(dep)
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_package_inits_and_lazy_imports():
    graph, _ = import_graph()
    assert f"{PACKAGE}.lcm_core.lora.io" in graph[f"{PACKAGE}.lcm_core.lora"]  # __init__ imports io
    assert f"{PACKAGE}.training.single_file" in graph[f"{PACKAGE}.training.teacher"]  # a lazy import inside load_teacher
    assert f"{PACKAGE}.lcm_core.lora" in graph[f"{PACKAGE}.training.single_file"] or \
        f"{PACKAGE}.lcm_core" in graph[f"{PACKAGE}.training.single_file"]


def test_no_import_circles():
    graph, _ = import_graph()
    assert len(graph) > 50
    assert cycles(graph) == []


def test_no_private_names_imported_across_modules():
    _, private = import_graph()
    assert private == []
