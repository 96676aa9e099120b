"""The docstring examples of the run directory, the pipeline and their neighbours run."""

import doctest
import importlib

import pytest

MODULES = [
    "fimo",
    "fimo.cli",
    "fimo.evaluate",
    "fimo.evaluate.core",
    "fimo.experiments.config",
    "fimo.experiments.outputs",
    "fimo.experiments.pipeline",
    "fimo.experiments.rundir",
    "fimo.further.runner",
    "fimo.further.store",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
