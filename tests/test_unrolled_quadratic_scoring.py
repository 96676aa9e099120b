"""How ``unrolled_quadratic`` meets the training gradients after Lanczos: through the vectors
F_c(H) v (fewer checkpoints than Lanczos steps) or through the Lanczos bases (more), with the
blocks of test gradients joined or not; every way against the closed form
H⁻¹(I − (I − ηH)^T) of the Gauss-Newton matrix from autograd, in float64."""

import numpy as np
import pytest
import torch

import fimo.methods.unrolled_quadratic as uq_module
from fimo.methods.unrolled_quadratic import unrolled_quadratic
from test_unrolled_quadratic import reference_scores, regression_task, rel

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

LR = 0.5  # lr × the largest eigenvalue 1.56: every Lanczos vector counts
FEW = [3, 10]  # 2 checkpoints, Lanczos exact at 10 steps: scored through F_c(H) v
MANY = list(range(1, 41))  # 40 checkpoints, at most P = 21 Lanczos steps: through the bases


def spied(monkeypatch):
    """Record what each block was scored through: "vectors" or "bases"."""
    forms = []
    original = uq_module._krylov_vectors

    def spy(coef, Q, used):
        out = original(coef, Q, used)
        forms.append("vectors" if torch.is_tensor(out) else "bases")
        return out

    monkeypatch.setattr(uq_module, "_krylov_vectors", spy)
    return forms


@pytest.mark.parametrize("steps,form", [(FEW, "vectors"), (MANY, "bases")])
def test_either_form_equals_the_closed_form(steps, form, monkeypatch):
    task = regression_task()
    forms = spied(monkeypatch)
    s = unrolled_quadratic(task, range(5), range(60), steps=steps, lr=LR, solver="lanczos", tol=0)
    assert set(forms) == {form}
    assert task.num_params == 21 and max(s.settings["iterations"]) <= 21
    want = reference_scores(task, steps, LR)
    assert rel(s.values, want) < 1e-8, rel(s.values, want)
    for c in range(len(steps)):  # every checkpoint, not only the largest
        assert rel(s.values[c], want[c]) < 1e-8, steps[c]


def test_the_two_forms_agree_where_both_apply():
    """The checkpoints 3 and 10 scored with 2 checkpoints (vectors) and among 40 (bases)."""
    task = regression_task(seed=1)
    few = unrolled_quadratic(task, range(5), range(60), steps=FEW, lr=LR, solver="lanczos", tol=0)
    many = unrolled_quadratic(task, range(5), range(60), steps=MANY, lr=LR, solver="lanczos", tol=0)
    both = many.values[[MANY.index(T) for T in FEW]]
    assert rel(few.values, both) < 1e-9, rel(few.values, both)
    np.testing.assert_allclose(few.values, both, rtol=1e-7, atol=1e-12 * np.abs(both).max())


@pytest.mark.parametrize("steps", [FEW, MANY])
def test_one_test_gradient_per_block_joined_or_not(steps, monkeypatch):
    """A memory budget that holds one test gradient's vectors: five blocks, joined into one
    matrix (FEW) or scored block by block (MANY), against every chunk of 7 training gradients."""
    task = regression_task(seed=2)
    monkeypatch.setattr(uq_module, "DEFAULT_BUDGET", 1)
    forms = spied(monkeypatch)
    s = unrolled_quadratic(
        task, range(5), range(60), steps=steps, lr=LR, solver="lanczos", tol=0, chunk_size=7
    )
    assert len(forms) == 5
    want = reference_scores(task, steps, LR)
    assert rel(s.values, want) < 1e-8, rel(s.values, want)


def test_blocks_scored_through_vectors_and_through_bases_together(monkeypatch):
    """One test gradient per block; test instance 2 fitted exactly (a zero gradient: no Lanczos
    step, scored through its empty basis), the others through F_c(H) v: one matrix of scores."""
    task = regression_task()
    with torch.no_grad():
        task.test.targets[2] = task.model(task.test.inputs[2:3])[0]
    monkeypatch.setattr(uq_module, "DEFAULT_BUDGET", 1)
    forms = spied(monkeypatch)
    s = unrolled_quadratic(
        task, range(5), range(60), steps=FEW, lr=LR, solver="lanczos", tol=0, chunk_size=7
    )
    assert forms == ["vectors", "vectors", "bases", "vectors", "vectors"]
    assert s.settings["iterations"][2] == 0 and np.all(s.values[:, 2] == 0)
    want = reference_scores(task, FEW, LR)
    assert rel(s.values, want) < 1e-8, rel(s.values, want)
