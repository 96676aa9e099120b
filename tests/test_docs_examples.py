"""Every public function carries a docstring example that runs (DESIGN.md; issue 12).

The examples run as doctests with the suite (``--doctest-modules`` over ``src/fimo`` in
pyproject.toml); this file counts them and holds the finished modules to the rule.
"""

import ast
import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fimo"

#: Every module of src/fimo: each public function, class and method has an example that runs
#: (issue 12 finished the last ones; a new module joins by being there).
DONE = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))


def public_definitions(source):
    """(qualified name, docstring) of the public functions and classes of a module's source,
    and of the public methods of its public classes; a name starting with ``_`` is private."""
    found = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        if node.name.startswith("_"):
            continue
        found.append((node.name, ast.get_docstring(node)))
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef):
                    if not member.name.startswith("_"):
                        qualname = f"{node.name}.{member.name}"
                        found.append((qualname, ast.get_docstring(member)))
    return found


def has_runnable_example(docstring):
    """Whether a docstring has a ``>>>`` line with code on it (not only a ``# comment``)."""
    for line in (docstring or "").splitlines():
        stripped = line.strip()
        if stripped.startswith(">>>"):
            code = stripped[3:].strip()
            if code and not code.startswith("#"):
                return True
    return False


def census():
    """{module path: [(name, documented, runnable)]} over every module of src/fimo."""
    table = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rows = [
            (name, doc is not None, has_runnable_example(doc))
            for name, doc in public_definitions(path.read_text())
        ]
        table[path.relative_to(PACKAGE).as_posix()] = rows
    return table


def test_public_definitions_and_runnable_examples_on_a_small_source():
    source = '''
def shown():
    """Adds.

    >>> 1 + 1
    2
    """

def commented():
    """Only a comment.

    >>> # commented(x)
    """

def _private():
    """>>> 1"""

class Thing:
    """No example."""

    def method(self):
        """>>> Thing().method()"""

    def _helper(self):
        pass

    def __call__(self):
        pass

async def waits():
    pass
'''
    rows = [(name, has_runnable_example(doc)) for name, doc in public_definitions(source)]
    assert rows == [
        ("shown", True),
        ("commented", False),
        ("Thing", False),
        ("Thing.method", True),
        ("waits", False),
    ]
    assert not has_runnable_example(None)
    assert not has_runnable_example(">>>\n>>>   # only a comment")


def test_census_counts_examples(capsys):
    table = census()
    rows = [row for module_rows in table.values() for row in module_rows]
    documented = sum(documented for _, documented, _ in rows)
    runnable = sum(runnable for _, _, runnable in rows)
    with capsys.disabled():
        print(
            f"\nfimo public functions, classes and methods: {len(rows)}, "
            f"documented {documented}, with a runnable example {runnable}"
        )
    assert runnable <= documented <= len(rows)
    assert len(table) > 40 and len(rows) > 200  # the walk found the package


@pytest.mark.parametrize("module", DONE)
def test_done_modules_have_an_example_on_every_public_function(module):
    path = PACKAGE / module
    assert path.is_file(), f"{module} is not a module of src/fimo"
    definitions = public_definitions(path.read_text())
    missing = [name for name, doc in definitions if not has_runnable_example(doc)]
    assert missing == [], f"{module}: no runnable example on {missing}"
    # and doctest finds each of them (an example it cannot see would never run)
    name = "fimo." + module.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
    found = doctest.DocTestFinder().find(importlib.import_module(name))
    with_examples = {test.name.removeprefix(name + ".") for test in found if test.examples}
    unseen = [qualname for qualname, _ in definitions if qualname not in with_examples]
    assert unseen == [], f"{module}: doctest finds no example on {unseen}"


def test_the_suite_runs_the_examples_of_the_package(request):
    assert request.config.option.doctestmodules  # from addopts in pyproject.toml
    assert "src/fimo" in request.config.getini("testpaths")
