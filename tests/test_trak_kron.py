"""TRAK's Kronecker-factored projection (proj_structure="kronecker"): the features from layer
factors against the explicitly formed P_out ⊗ P_in times autograd gradients; the scores
against unprojected TRAK and against the dense projection; the fallbacks and refusals."""

import numpy as np
import pytest
import torch
from torch import nn

from fimo.data import ArrayDataset
from fimo.errors import InputError
from fimo.experiments.config import TRAK_PROJ_STRUCTURES
from fimo.methods.ghost import capture, ghost_plan, layer_slices
from fimo.methods.kron_projection import PROJ_STRUCTURES, KroneckerProjector, split_proj_dim
from fimo.methods.trak import trak
from fimo.task import Task

DT = torch.float64


def autograd_rows(task, x, y):
    """Per-instance loss gradients (m, P), one autograd call per instance."""
    params = {n: p.detach().requires_grad_(True) for n, p in task.params().items()}
    rows = []
    for i in range(len(y)):
        loss = task.losses(params, x[i : i + 1], y[i : i + 1]).sum()
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1)
                    for g, p in zip(grads, params.values(), strict=True)
                ]
            )
        )
    return torch.stack(rows)


def explicit_matrix(task, proj):
    """The P × k matrix ⊕_l P_out,l ⊗ P_in,l, formed with torch.kron: the row of weight entry
    (o, i) is the Kronecker row (o, i), the row of bias entry o is (o, in) (the input of ones)."""
    where = layer_slices(task, proj.layers)
    M = torch.zeros(task.num_params, proj.dim, dtype=DT)
    col = 0
    for block, (p_out, p_in) in zip(proj.blocks, proj.factors, strict=True):
        K = torch.kron(p_out, p_in)  # rows o·width + i, columns p·k_in + q
        rows_in = block.width - (1 if block.bias else 0)
        for o in range(block.out):
            if block.weight:
                start = where[block.module]["weight"].start + o * rows_in
                M[start : start + rows_in, col : col + block.dim] = K[
                    o * block.width : o * block.width + rows_in
                ]
            if block.bias:
                M[where[block.module]["bias"].start + o, col : col + block.dim] = K[
                    o * block.width + block.width - 1
                ]
        col += block.dim
    return M


def mlp_task(trainable=None, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g, dtype=DT)
    y = torch.randint(0, 3, (n,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)
    ).to(DT)
    data = ArrayDataset(X, y)
    return Task(model, data, data, trainable=trainable)


class Pooled(nn.Module):
    """A Linear layer met at every position of a sequence, mean-pooled, then a Linear head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.embed(x)).mean(1))


def sequence_task(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, 3, generator=g, dtype=DT)
    y = torch.randint(0, 2, (n,), generator=g)
    torch.manual_seed(seed)
    data = ArrayDataset(X, y)
    return Task(Pooled().to(DT), data, data)


@pytest.mark.parametrize(
    ("make", "proj_dim"),
    [
        (lambda: mlp_task(), 30),
        (lambda: mlp_task(trainable=["0.weight", "2.*", "4.bias"]), 20),  # bias-only, frozen
        (lambda: mlp_task(trainable=["0.*", "4.*"]), 17),  # a frozen middle layer
        (lambda: sequence_task(), 12),  # 5 positions per instance
    ],
)
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_factored_features_equal_the_kronecker_matrix_times_the_gradients(make, proj_dim, kind):
    task = make()
    layers = ghost_plan(task)[0]
    proj = KroneckerProjector(task, layers, proj_dim, seed=3, kind=kind, dtype=DT)
    x, y = task.train.inputs, task.train.targets
    G = autograd_rows(task, x, y)
    expected = G @ explicit_matrix(task, proj)
    from_factors = proj.project_factors(capture(task, layers, x, y), len(y))
    scale = float(expected.abs().max())
    assert proj.dim <= proj_dim and from_factors.shape == expected.shape
    assert float((from_factors - expected).abs().max()) <= 1e-10 * scale
    assert float((proj.project(G) - expected).abs().max()) <= 1e-10 * scale


def test_the_factors_have_unit_expected_gram_and_are_seeded():
    """E[P Pᵀ] = I: the mean of the explicit P Pᵀ over 400 seeds is within 4 standard errors
    of I (entries of P Pᵀ off the diagonal have variance 1/k_out·1/k_in-ish ≤ 1, the diagonal
    is exactly 1 for Rademacher); the same seed gives the same matrices."""
    task = mlp_task(trainable=["2.*"])
    layers = ghost_plan(task)[0]
    mats = [
        explicit_matrix(task, KroneckerProjector(task, layers, 12, s, dtype=DT)) for s in range(400)
    ]
    mean = torch.stack([M @ M.T for M in mats]).mean(0)
    assert torch.allclose(torch.diagonal(mean), torch.ones(task.num_params, dtype=DT))
    assert float((mean - torch.eye(task.num_params, dtype=DT)).abs().max()) < 4 / 400**0.5
    again = explicit_matrix(task, KroneckerProjector(task, layers, 12, 0, dtype=DT))
    assert torch.equal(again, mats[0]) and not torch.equal(mats[0], mats[1])


def test_split_stays_within_the_budget_and_the_layers():
    shapes = [(128, 107), (128, 129), (2, 129)]
    for k in (3, 10, 100, 512, 5000):
        dims = split_proj_dim(shapes, k)
        assert sum(a * b for a, b in dims) <= k
        assert all(1 <= a <= o and 1 <= b <= w for (a, b), (o, w) in zip(dims, shapes, strict=True))
    assert sum(a * b for a, b in split_proj_dim(shapes, 512)) >= 0.95 * 512
    assert split_proj_dim([(2, 3), (4, 5)], 26) == [(2, 3), (4, 5)]  # all of each layer
    with pytest.raises(ValueError, match="below the number of layers"):
        split_proj_dim(shapes, 2)


def classifier(n=600, hidden=12, seed=0, steps=100, loss="cross_entropy"):
    """A 6-h-h-2 MLP (P = 266 at h = 12; 6-h-h-1 for ``loss="mse"``) trained for ``steps`` Adam
    steps on n instances; 20 test instances."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n + 20, 6, generator=g, dtype=DT)
    if loss == "mse":
        y = torch.sin(X[:, 0]) + X[:, 1] ** 2
    else:
        y = (X[:, 0] + X[:, 1] ** 2 > 0.5).long()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(6, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, 1 if loss == "mse" else 2),
    ).to(DT)
    task = Task(model, ArrayDataset(X[:n], y[:n]), ArrayDataset(X[n:], y[n:]), loss=loss)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        task.loss_fn(model(X[:n]), y[:n]).mean().backward()
        opt.step()
    return task


def cosine(a, b):
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def test_kronecker_at_k_equal_p_is_unprojected_trak():
    """With every layer kept whole, P_out ⊗ P_in is square and (Gaussian) invertible, and
    TRAK's (PᵀKP)⁻¹ is P⁻¹K⁻¹P⁻ᵀ: the scores are the unprojected ones. A regression model
    (f the output): a classifier's margin is unchanged by adding the same to every logit, so
    its kernel is singular, and a pseudo-inverse is not invariant under a non-orthogonal P;
    and small (P = 53, n = 400), so that K is full rank and conditioned well enough (about
    3e8, 9e9 in the projected basis) that no direction is cut off in either basis."""
    task = classifier(n=400, loss="mse", hidden=4)
    exact = trak(task, range(20), range(400), proj_dim=None)
    full = trak(
        task,
        range(20),
        range(400),
        proj_dim=task.num_params,
        proj_structure="kronecker",
        projection="gaussian",
        seed=2,
    )
    assert full.settings["projected_dim"] == task.num_params
    assert full.settings["projection_path"] == "kronecker"
    assert exact.settings["kernel_rank"] == full.settings["kernel_rank"] == task.num_params
    scale = np.abs(exact.values).max()
    assert np.abs(full.values - exact.values).max() <= 1e-7 * scale  # measured 6e-10


def test_kronecker_agreement_is_comparable_to_dense_at_equal_k():
    """Cosine with unprojected TRAK over 5 seeds, P = 266, k = 200: measured (float64) dense
    0.948-0.962 (mean 0.956), Kronecker 0.918-0.954 (mean 0.932, sd 0.014; its estimate is a
    product of two with about √k numbers each, so noisier). Asserted: each Kronecker seed
    ≥ 0.86 (mean − 5 sd), its mean within 0.06 of dense's, and well above k = 20's (0.55)."""
    task = classifier()
    exact = trak(task, range(20), range(600), proj_dim=None).values
    cos = {}
    for structure in ("dense", "kronecker"):
        for k in (20, 200):
            cos[structure, k] = [
                cosine(
                    trak(
                        task, range(20), range(600), proj_dim=k, proj_structure=structure, seed=s
                    ).values,
                    exact,
                )
                for s in range(5)
            ]
    kron, dense = np.array(cos["kronecker", 200]), np.array(cos["dense", 200])
    assert kron.min() >= 0.86, cos
    assert kron.mean() >= dense.mean() - 0.06, cos
    assert kron.mean() >= np.mean(cos["kronecker", 20]) + 0.2, cos


def test_auto_takes_the_factored_path_on_an_mlp_and_records_it():
    task = classifier(n=100)
    auto = trak(task, range(5), range(100), proj_dim=64, proj_structure="auto", seed=1)
    kron = trak(task, range(5), range(100), proj_dim=64, proj_structure="kronecker", seed=1)
    assert auto.settings["projection_path"] == "kronecker"
    assert auto.settings["kronecker_split"] == kron.settings["kronecker_split"]
    assert (
        sum(a * b for a, b in auto.settings["kronecker_split"].values())
        == (auto.settings["projected_dim"])
    )
    assert np.array_equal(auto.values, kron.values)
    default = trak(task, range(5), range(100), proj_dim=64, seed=1)
    assert default.settings["projection_path"] == "dense"
    assert default.settings["kronecker_split"] is None


def normed_task():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 4, generator=g, dtype=DT)
    y = torch.randint(0, 2, (30,), generator=g)
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 2)).to(DT)
    return Task(model, ArrayDataset(X, y), ArrayDataset(X, y))


def conv_task():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 1, 6, generator=g, dtype=DT)
    y = torch.randint(0, 2, (30,), generator=g)
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)).to(DT)
    return Task(model, ArrayDataset(X, y), ArrayDataset(X, y))


@pytest.mark.parametrize(("make", "owner"), [(normed_task, "LayerNorm"), (conv_task, "Conv1d")])
def test_auto_falls_back_to_dense_and_kronecker_refuses(make, owner):
    task = make()
    auto = trak(task, range(4), range(30), proj_dim=8, proj_structure="auto")
    dense = trak(task, range(4), range(30), proj_dim=8, proj_structure="dense")
    assert auto.settings["projection_path"] == "dense"
    assert np.array_equal(auto.values, dense.values)
    with pytest.raises(InputError, match=rf"trak proj_structure: 'kronecker' .*{owner}") as err:
        trak(task, range(4), range(30), proj_dim=8, proj_structure="kronecker")
    assert "'1.weight'" in str(err.value) or "'0.weight'" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_bad_settings_are_refused_at_the_door():
    task = classifier(n=40)
    with pytest.raises(InputError, match=r"trak proj_structure: got 'kron' .*'kronecker'"):
        trak(task, range(2), range(40), proj_structure="kron")
    with pytest.raises(InputError, match="proj_dim is None"):
        trak(task, range(2), range(40), proj_dim=None, proj_structure="kronecker")
    with pytest.raises(InputError, match="below the number of Linear layers, 3"):
        trak(task, range(2), range(40), proj_dim=2, proj_structure="kronecker")
    low = trak(task, range(2), range(40), proj_dim=2, proj_structure="auto")
    assert low.settings["projection_path"] == "dense"


def test_config_checks_the_same_choices_without_torch():
    from fimo.experiments.config import _check_method_setting

    assert TRAK_PROJ_STRUCTURES == PROJ_STRUCTURES
    _check_method_setting("methods.trak.proj_structure", "proj_structure", "auto")
    with pytest.raises(InputError, match=r"methods\.trak\.proj_structure: got 'dens'"):
        _check_method_setting("methods.trak.proj_structure", "proj_structure", "dens")
