"""Grad-Dot and Grad-Cos from layer factors (the ghost path) against per-instance gradients
taken one instance at a time with torch.autograd, in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fimo.data.base import ArrayDataset
from fimo.errors import InputError
from fimo.methods.first_order import grad_cos, grad_dot
from fimo.methods.ghost import capture, ghost_norms, ghost_plan
from fimo.task import Task

TOL = 1e-10
DT = torch.float64


def loop_gradients(task: Task, data: ArrayDataset, measure: bool) -> np.ndarray:
    """(n, P) per-instance gradients of the loss (or of g) over the trainable parameters, by
    one autograd call per instance on the model itself."""
    named = dict(task.model.named_parameters())
    params = [named[n] for n in task.trainable]
    fn = task.measure_fn if measure else task.loss_fn
    rows = []
    for i in range(len(data)):
        value = fn(task.model(data.inputs[i : i + 1]), data.targets[i : i + 1]).sum()
        grads = torch.autograd.grad(value, params, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
    return torch.stack(rows).detach().numpy()


def reference(task: Task, cosine: bool) -> np.ndarray:
    g_test = loop_gradients(task, task.test, measure=True)
    g_train = loop_gradients(task, task.train, measure=False)
    if cosine:
        g_test = g_test / np.linalg.norm(g_test, axis=1, keepdims=True)
        g_train = g_train / np.linalg.norm(g_train, axis=1, keepdims=True)
    return g_test @ g_train.T


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def mlp_task(trainable=None, classes=3, n=40, k=7, seed=0) -> Task:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, classes)
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.7)
    train = ArrayDataset(
        torch.randn(n, 5, generator=gen, dtype=torch.float64),
        torch.randint(0, classes, (n,), generator=gen),
    )
    test = ArrayDataset(
        torch.randn(k, 5, generator=gen, dtype=torch.float64),
        torch.randint(0, classes, (k,), generator=gen),
    )
    return Task(model, train, test, trainable=trainable)


@pytest.mark.parametrize(
    "trainable",
    [
        None,  # every layer, with biases
        ["0.weight", "2.*", "4.*"],  # the first layer's bias frozen
        ["2.*", "4.weight"],  # the first layer frozen, the last bias frozen
        ["0.bias", "4.bias"],  # biases only
    ],
)
@pytest.mark.parametrize("method", [grad_dot, grad_cos])
def test_ghost_equals_per_instance_gradients(trainable, method):
    task = mlp_task(trainable)
    got = method(task, range(len(task.test)), range(len(task.train)), ghost="always")
    assert got.settings["gradients"] == "ghost (layer factors)"
    want = reference(task, cosine=method is grad_cos)
    assert relative(got.values, want) < TOL
    ordinary = method(task, range(len(task.test)), range(len(task.train)), ghost="never")
    assert ordinary.settings["gradients"] == "per-instance"
    assert relative(ordinary.values, want) < TOL


def test_ghost_norms_equal_gradient_norms():
    task = mlp_task(["0.weight", "2.*", "4.*"])
    layers, _ = ghost_plan(task)
    factors = capture(task, layers, task.train.inputs, task.train.targets)
    want = np.linalg.norm(loop_gradients(task, task.train, measure=False), axis=1)
    assert relative(ghost_norms(factors).numpy(), want) < TOL


def test_chunks_and_index_order_do_not_change_scores():
    task = mlp_task()
    test, train = [6, 0, 3], [39, 2, 17, 5, 30, 11, 8]
    got = grad_dot(task, test, train, ghost="always", chunk_size=3).values
    want = reference(task, cosine=False)[np.ix_(test, train)]
    assert relative(got, want) < TOL


class Positions(nn.Module):
    """A Linear layer over T positions of each instance, a shared second layer called on two
    halves, and a mean over positions: the position sums of the ghost dot product."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 6)
        self.shared = nn.Linear(6, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):  # x: (B, T, 3)
        h = torch.tanh(self.embed(x))
        first, second = self.shared(h[:, :2]), self.shared(h[:, 2:])
        return self.head(torch.cat([first, second], 1).tanh().mean(1))


def test_positions_and_a_shared_layer():
    gen = torch.Generator().manual_seed(1)
    model = Positions().double()
    data = ArrayDataset(
        torch.randn(12, 5, 3, generator=gen, dtype=torch.float64),
        torch.randint(0, 2, (12,), generator=gen),
    )
    task = Task(model, data, ArrayDataset(data.inputs[:4], data.targets[:4]))
    for method in (grad_dot, grad_cos):
        got = method(task, range(4), range(12), ghost="always").values
        assert relative(got, reference(task, cosine=method is grad_cos)) < TOL


def test_other_parameters_fall_back_to_per_instance_gradients():
    gen = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 2)).double()
    data = ArrayDataset(
        torch.randn(15, 4, generator=gen, dtype=torch.float64),
        torch.randint(0, 2, (15,), generator=gen),
    )
    task = Task(model, data, data)
    assert ghost_plan(task)[0] is None
    got = grad_dot(task, range(5), range(15))  # ghost="auto"
    assert got.settings["gradients"] == "per-instance"
    assert relative(got.values, reference(task, cosine=False)[:5]) < TOL
    with pytest.raises(InputError, match="LayerNorm"):
        grad_dot(task, range(5), range(15), ghost="always")
    # with the LayerNorm frozen, every trainable parameter is a Linear layer's again
    frozen = Task(model, data, data, trainable=["0.*", "3.*"])
    got = grad_cos(frozen, range(5), range(15))
    assert got.settings["gradients"] == "ghost (layer factors)"
    assert relative(got.values, reference(frozen, cosine=True)[:5]) < TOL


def test_auto_takes_the_ghost_path_for_an_mlp_and_not_for_long_sequences():
    task = mlp_task()
    assert grad_dot(task, range(3), range(10)).settings["gradients"] == "ghost (layer factors)"
    gen = torch.Generator().manual_seed(3)
    long = ArrayDataset(
        torch.randn(6, 64, 3, generator=gen, dtype=torch.float64), torch.randint(0, 2, (6,))
    )
    seq = Task(Positions().double(), long, long)
    got = grad_dot(seq, range(6), range(6))
    assert got.settings["gradients"] == "per-instance"  # 64² position pairs: formed is cheaper
    want = grad_dot(seq, range(6), range(6), ghost="always").values
    assert relative(got.values, want) < TOL


def test_settings_are_checked():
    task = mlp_task()
    with pytest.raises(InputError, match="ghost: got 'yes'"):
        grad_dot(task, range(2), range(4), ghost="yes")
    with pytest.raises(InputError, match="proj_dim"):
        grad_cos(task, range(2), range(4), ghost="always", proj_dim=8)
    projected = grad_dot(task, range(2), range(4), proj_dim=8)  # auto: projection as before
    assert projected.settings["gradients"] == "per-instance"
    assert projected.settings["projected_dim"] == 8


@pytest.mark.parametrize(
    "trainable", [None, ["0.weight", "2.*", "4.*"], ["2.*", "4.weight"], ["0.bias", "4.bias"]]
)
@pytest.mark.parametrize("budget", [2**30, 1])  # one block of test vectors, or one at a time
def test_a_dense_test_side_against_factors_equals_formed_gradients(trainable, budget):
    """Any (k, P) test side times the training gradients, from factors (both sides of each
    layer: 5 → 12 narrows through the input, 12 → 9 through the output), equals the product
    with per-instance gradients taken one instance at a time."""
    from fimo.methods.ghost import dense_ghost_plan, ghost_products

    task = mlp_task(trainable, n=23)
    V = torch.randn(6, task.num_params, generator=torch.Generator().manual_seed(1), dtype=DT)
    want = V.numpy() @ loop_gradients(task, task.train, measure=False).T
    layers = dense_ghost_plan(task)
    blocks = list(ghost_products(task, layers, V, np.arange(23), chunk_size=10, budget=budget))
    assert [rows.stop for rows, _ in blocks] == [10, 20, 23]
    got = torch.cat([block for _, block in blocks]).T.numpy()
    assert relative(got, want) < TOL


def test_score_matrix_takes_factors_for_an_mlp_and_formed_gradients_otherwise(
    score_matrix_paths,
):
    """score_matrix multiplies from factors by default on an MLP (and forms no gradients),
    from formed gradients with ghost="never", the same scores either way; a model whose
    layers meet an instance at several positions has no dense factor plan."""
    from fimo.methods.common import score_matrix
    from fimo.methods.ghost import dense_ghost_plan

    paths = score_matrix_paths
    task = mlp_task()
    V = torch.randn(4, task.num_params, generator=torch.Generator().manual_seed(2), dtype=DT)
    train = np.array([5, 0, 17, 3, 39])
    auto = score_matrix(task, train, V, chunk_size=2)
    assert paths == ["ghost_products"]
    never = score_matrix(task, train, V, chunk_size=2, ghost="never")
    assert paths == ["ghost_products", "training_gradients"]
    assert relative(auto, never) < TOL
    assert relative(never, V.numpy() @ loop_gradients(task, task.train, False)[train].T / 40) < TOL
    assert dense_ghost_plan(task) is not None
    seq = Task(
        nn.Sequential(nn.Linear(3, 4), nn.Flatten(), nn.Linear(8, 2)).double(),
        ArrayDataset(torch.randn(6, 2, 3, dtype=DT), torch.randint(0, 2, (6,))),
        ArrayDataset(torch.randn(2, 2, 3, dtype=DT), torch.randint(0, 2, (2,))),
    )
    assert dense_ghost_plan(seq) is None  # the first layer sees two positions per instance
    with pytest.raises(InputError, match="score_matrix ghost: got 'always'"):
        score_matrix(task, train, V, ghost="always")


class ReadsItsWeight(nn.Module):
    """A Linear layer whose weight the forward also reads directly (as a penalty would)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 3)

    def forward(self, x):
        return self.linear(x) * (1 + 0.3 * self.linear.weight[0, 0])


def test_a_weight_used_outside_its_layer_is_scored_from_formed_gradients():
    """The structural plan accepts this model, the check on two instances does not: Grad-Dot
    (auto) and a dense test side give the true gradients' products, and ``always`` refuses."""
    from fimo.methods.common import score_matrix
    from fimo.methods.ghost import checked_plan

    base = mlp_task()
    model = ReadsItsWeight().double()
    task = Task(model, base.train, base.test)
    assert ghost_plan(task)[0] is not None
    assert checked_plan(task) == (None, "a trainable parameter is used outside its nn.Linear call")
    got = grad_dot(task, range(len(task.test)), range(len(task.train)))
    assert got.settings["gradients"] == "per-instance"
    assert relative(got.values, reference(task, cosine=False)) < TOL
    V = torch.randn(3, task.num_params, generator=torch.Generator().manual_seed(4), dtype=DT)
    want = V.numpy() @ loop_gradients(task, task.train, measure=False).T / len(task.train)
    assert relative(score_matrix(task, range(len(task.train)), V), want) < TOL
    with pytest.raises(InputError, match=r"used outside its nn.Linear call\); use ghost='auto'"):
        grad_dot(task, [0], [0, 1], ghost="always")
