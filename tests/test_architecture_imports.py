"""The shape of the code: no import cycles among fimo's modules.

The import graph is read from the source with ``ast`` (every ``import`` statement, at module
level or inside a function, so that a cycle hidden in a function still counts). Importing
``a.b.c`` also runs the ``__init__`` of ``a.b``: that edge counts too, except towards the
packages the importing module itself lives in (they are already being imported when it runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_names(src: Path = SRC, root: str = "fimo") -> dict[str, Path]:
    """Every module of the package ``root`` under ``src``: dotted name -> file."""
    names = {}
    for file in sorted((src / root).rglob("*.py")):
        parts = list(file.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = file
    return names


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def _imported(module: str, file: Path, modules: dict[str, Path]) -> set[str]:
    """The modules ``module`` names in its import statements (explicit targets only)."""
    is_package = file.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, *([base] if base else [])])
            for alias in node.names:  # a submodule by name, else a name defined in ``base``
                name = f"{base}.{alias.name}"
                found.add(name if name in modules else base)
    return {name for name in found if name in modules}


def import_graph(src: Path = SRC, root: str = "fimo") -> dict[str, set[str]]:
    """module -> the fimo modules whose code runs when it imports (see the module docstring)."""
    modules = module_names(src, root)
    graph = {}
    for module, file in modules.items():
        own = set(_ancestors(module))
        edges = set()
        for target in _imported(module, file, modules):
            edges.add(target)
            edges.update(p for p in _ancestors(target) if p not in own and p in modules)
        edges.discard(module)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert found == [], (
        "import cycles (each line one group of modules that import each other):\n"
        + ("\n".join(" <-> ".join(c) for c in found))
    )


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_cycle_finder_sees_function_level_and_package_imports(tmp_path):
    # a -> b at module level, b -> a inside a function: one cycle
    src = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "def f():\n    from pkg.a import x\n    return x\n",
            "pkg/sub/__init__.py": "from pkg.sub.inner import y\n",
            "pkg/sub/inner.py": "from . import other\n",
            "pkg/sub/other.py": "import pkg.c\n",
            "pkg/c.py": "def g():\n    import pkg.sub.other\n",
            "pkg/d.py": "from .e import z\n",
            "pkg/e.py": "z = 1\n",
        },
    )
    graph = import_graph(src, "pkg")
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.a"}
    # a module inside pkg.sub does not count the package it lives in; pkg.c importing
    # pkg.sub.other runs pkg.sub's __init__ first, so that edge counts
    assert graph["pkg.sub.inner"] == {"pkg.sub.other"}
    assert graph["pkg.c"] == {"pkg.sub", "pkg.sub.other"}
    assert graph["pkg.d"] == {"pkg.e"}
    assert cycles(graph) == [
        ["pkg.a", "pkg.b"],
        ["pkg.c", "pkg.sub", "pkg.sub.inner", "pkg.sub.other"],
    ]


@pytest.mark.parametrize("acyclic", [True, False])
def test_cycle_finder_on_a_chain(tmp_path, acyclic):
    last = "" if acyclic else "import pkg.m0\n"
    files = {"pkg/__init__.py": ""}
    files.update({f"pkg/m{k}.py": f"import pkg.m{k + 1}\n" for k in range(4)})
    files["pkg/m4.py"] = last
    graph = import_graph(_write(tmp_path, files), "pkg")
    assert cycles(graph) == ([] if acyclic else [[f"pkg.m{k}" for k in range(5)]])
