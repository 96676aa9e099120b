"""The shape of the source tree: no module reaches into another module's private names.

A name that starts with one underscore is a module's own business; another module that
imports it (``from fimo.x import _y``) or reads it off the module (``x._y``) ties the two
together behind the reader's back. The check reads the source with ``ast``, so it also
sees imports inside functions.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import fimo

SRC = Path(fimo.__file__).resolve().parent.parent


def module_name(path: Path, root: Path = SRC) -> str:
    """'fimo.evaluate.report' for src/fimo/evaluate/report.py; a package is its __init__."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_module(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    """The absolute name of the module a ``from ... import`` reads (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    package = here.split(".") if is_package else here.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def is_module(name: str, root: Path = SRC) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def private_reaches(source: str, here: str, is_package: bool = False, root: Path = SRC):
    """(line, text) for every use in ``source`` (the module ``here``) of another fimo
    module's private name: ``from fimo.x import _y`` and ``x._y`` for a module ``x``."""
    tree = ast.parse(source)
    found = []
    modules: dict[str, str] = {}  # local name -> fimo module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            origin = imported_module(node, here, is_package)
            if origin.split(".")[0] != "fimo" or origin == here:
                continue
            for alias in node.names:
                if is_private(alias.name):
                    found.append((node.lineno, f"from {origin} import {alias.name}"))
                elif is_module(f"{origin}.{alias.name}", root):
                    modules[alias.asname or alias.name] = f"{origin}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "fimo" and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and is_private(node.attr)
            and isinstance(node.value, ast.Name)
            and modules.get(node.value.id, here) != here
        ):
            found.append((node.lineno, f"{modules[node.value.id]}.{node.attr}"))
    return sorted(found)


def test_the_check_sees_private_imports_and_attributes(tmp_path):
    """The checker on a hand-made tree: what it must refuse and what it must let through."""
    pkg = tmp_path / "fimo" / "sub"
    pkg.mkdir(parents=True)
    for name in ("__init__", "a", "b"):
        (pkg / f"{name}.py").write_text("")
    (tmp_path / "fimo" / "__init__.py").write_text("")
    source = textwrap.dedent(
        """
        from fimo.sub.a import public, _hidden
        from fimo.sub import b
        from . import a as alias
        import fimo.sub.a as amod
        from fimo.sub.b import _own  # the module itself: allowed
        from os import _exit  # not fimo: not our business

        def f():
            from .a import _late
            return b._x, alias._y, amod._z, b.__name__, b.fine
        """
    )
    found = private_reaches(source, "fimo.sub.b", root=tmp_path)
    assert [text for _, text in found] == [
        "from fimo.sub.a import _hidden",
        "from fimo.sub.a import _late",
        "fimo.sub.a._y",
        "fimo.sub.a._z",
    ]
    assert [line for line, _ in found] == [2, 10, 11, 11]


def test_no_module_uses_another_modules_private_names():
    offences = []
    for path in sorted((SRC / "fimo").rglob("*.py")):
        here = module_name(path)
        for line, text in private_reaches(
            path.read_text(encoding="utf-8"), here, path.name == "__init__.py"
        ):
            offences.append(f"{path.relative_to(SRC)}:{line}: {text}")
    assert offences == []


def test_every_function_of_src_reads_on_one_screen():
    """ruff's C901 (complexity ≤ 12) and PLR0915 (≤ 50 statements) pass on src/fimo, as
    pyproject.toml's lint settings ask (issue 12); the check runs ruff itself."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        import pytest

        pytest.skip("ruff is not installed (pip install 'fimo[test]')")
    rules = ["--select", "C901,PLR0915", "--config", "lint.mccabe.max-complexity=12"]
    done = subprocess.run(
        [ruff, "check", "--no-cache", *rules, "--output-format", "concise", str(SRC / "fimo")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # and the check bites: a long function is found
    long = "def f(x):\n" + "".join(f"    x = x + {k}\n" for k in range(60)) + "    return x\n"
    caught = subprocess.run(
        [ruff, "check", "--no-cache", *rules, "--stdin-filename", "long.py", "-"],
        input=long,
        capture_output=True,
        text=True,
    )
    assert caught.returncode == 1 and "PLR0915" in caught.stdout
