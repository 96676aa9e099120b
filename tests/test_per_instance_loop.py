"""Every method on a model that ``torch.func.vmap`` cannot map over instances (it branches on
the values of its inputs): with the task's per-instance loop (``per_instance="auto"`` falls
back to it) the scores equal those of the same weights without the branch through ``vmap``,
float64. The adjoint (``unrolled``) is refused in one line naming the fix."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from fimo import FurtherSettings, Task
from fimo.data import ArrayDataset
from fimo.errors import InputError
from fimo.methods import get_method
from fimo.methods.curvature import CurvatureOperator


class KeywordMLP(nn.Module):
    """An MLP on the field ``x`` whose forward, with ``branch``, first asks whether any
    instance's ``flag`` is negative (never, here): Python control flow on input values,
    which vmap over instances cannot take and a loop can."""

    def __init__(self, branch: bool):
        super().__init__()
        self.branch = branch
        self.hidden, self.out = nn.Linear(3, 4), nn.Linear(4, 3)

    def forward(self, x, flag):
        if self.branch and bool((flag < 0).any()):
            x = torch.zeros_like(x)
        return self.out(torch.tanh(self.hidden(x)))


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    inputs = {"x": torch.randn(n, 3, generator=g, dtype=torch.float64), "flag": torch.ones(n)}
    return ArrayDataset(inputs, torch.randint(0, 3, (n,), generator=g))


@pytest.fixture(scope="module")
def tasks():
    """(looped, mapped): the branching model through the loop, its twin through vmap."""
    train, test = data(14, 0), data(4, 1)
    torch.manual_seed(0)
    twin = KeywordMLP(branch=False).double()
    branching = KeywordMLP(branch=True).double()
    branching.load_state_dict(twin.state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        looped = Task(branching, train, test)
        assert looped.per_instance_path() == "loop"
    assert any("cannot use torch.func.vmap" in str(w.message) for w in caught)
    mapped = Task(twin, train, test, per_instance="vmap")
    assert mapped.per_instance_path() == "vmap"
    return looped, mapped


SETTINGS = [
    ("explicit", {}),
    ("explicit", {"hessian": "hessian"}),
    ("cg", {}),
    ("cg", {"hessian": "hessian", "damping": 1.0}),
    ("lissa", {"depth": 30}),
    ("lissa_hessian", {"depth": 30}),
    ("arnoldi", {"rank": 6}),
    ("generalized", {}),
    ("generalized", {"hessian": "hessian", "damping": 1.0}),
    ("trak", {"proj_dim": 16}),
    ("datainf", {}),
    ("ekfac", {}),
    ("grad_cos", {}),
]


@pytest.mark.parametrize("name, settings", SETTINGS, ids=[f"{n}-{s}" for n, s in SETTINGS])
def test_each_method_through_the_loop_equals_vmap(tasks, name, settings):
    looped, mapped = tasks
    method = get_method(name)
    want = method(mapped, range(4), range(14), **settings).values
    got = method(looped, range(4), range(14), **settings).values
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


def test_unrolled_quadratic_through_the_loop_equals_vmap(tasks):
    looped, mapped = tasks
    method = get_method("unrolled_quadratic")
    further = {"lr": 0.1, "batch_size": 7, "epochs": 1}
    want = method(mapped, range(4), range(14), further=further, steps=[2]).at(2).values
    got = method(looped, range(4), range(14), further=further, steps=[2]).at(2).values
    np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.parametrize("kind", ["gauss_newton", "hessian"])
def test_curvature_products_and_factors_through_the_loop_equal_vmap(tasks, kind):
    looped, mapped = tasks
    V = torch.randn(5, 31, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ops = [CurvatureOperator(task, kind, batch_size=5) for task in (looped, mapped)]
    torch.testing.assert_close(ops[0].matmat(V), ops[1].matmat(V), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ops[0].dense(), ops[1].dense(), rtol=1e-12, atol=1e-14)
    x, y = looped.train.inputs, looped.train.targets
    per = [list(op.per_instance(V[0], x, y, 4)) for op in ops]
    for (rows, G, CU), (rows2, G2, CU2) in zip(*per, strict=True):
        assert rows == rows2
        torch.testing.assert_close(G, G2, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(CU, CU2, rtol=1e-12, atol=1e-14)


def test_the_adjoint_refuses_the_loop_in_one_line_naming_the_fix(tasks):
    looped, _ = tasks
    with pytest.raises(InputError, match=r"^unrolled: .*per_instance='loop'.*use unrolled_quad"):
        get_method("unrolled")(looped, range(4), range(14), further=FurtherSettings(lr=0.1))
