"""score_matrix, the one loop that streams training-side vectors into every method's scores,
against a plain per-pair computation."""

import numpy as np
import torch
from torch import nn

from fimo.data import ArrayDataset
from fimo.methods.common import score_matrix, training_gradients
from fimo.task import Task


def make_task():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(11, 3, generator=gen, dtype=torch.float64)
    data = ArrayDataset(x, torch.randint(0, 2, (11,), generator=gen))
    torch.manual_seed(0)
    return Task(nn.Linear(3, 2).double(), data, data)


def plain_gradient(task, i):
    model = task.model
    loss = task.loss_fn(model(task.train.inputs[i : i + 1]), task.train.targets[i : i + 1]).sum()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


def test_scores_equal_per_pair_products_with_transform_and_progress():
    task = make_task()
    train = [7, 0, 3, 10, 5]
    V = torch.randn(
        4, task.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    ticks = []
    got = score_matrix(
        task, train, V, transform=lambda G: 2 * G, progress=ticks.append, chunk_size=2
    )
    want = np.array([[float(v @ (2 * plain_gradient(task, i))) / 11 for i in train] for v in V])
    assert got.dtype == np.float64 and got.shape == (4, 5)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert ticks == [2, 2, 1]  # one call per chunk, with the instances it scored
    plain = score_matrix(task, train, V, per_n=False, chunk_size=3)
    np.testing.assert_allclose(plain, 11 * got / 2, rtol=1e-12, atol=1e-15)


def test_given_chunks_replace_the_gradients():
    task = make_task()
    rows = torch.arange(10, dtype=torch.float64).reshape(5, 2)
    chunks = [(slice(0, 3), rows[:3]), (slice(3, 5), rows[3:])]
    V = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    got = score_matrix(task, range(5), V, chunks=chunks, per_n=False)
    np.testing.assert_array_equal(got, [[-1.0] * 5])
    G = torch.cat([g for _, g in training_gradients(task, [2, 4], chunk_size=1)])
    torch.testing.assert_close(G[1], plain_gradient(task, 4), rtol=1e-12, atol=1e-14)


def test_the_path_follows_the_cost_and_both_equal_per_pair_products(score_matrix_paths):
    """On an MLP 3 → 8 → 2 the factor path moves k·(min(3, 8) + min(8, 2)) = 5k numbers per
    instance, the formed gradients 3·8 + 8·2 = 40: factors up to k = 8 test vectors, formed
    gradients from k = 9. Either way the scores are the per-pair products of plain gradients."""
    paths = score_matrix_paths
    gen = torch.Generator().manual_seed(3)
    data = ArrayDataset(
        torch.randn(9, 3, generator=gen, dtype=torch.float64),
        torch.randint(0, 2, (9,), generator=gen),
    )
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    task = Task(model, data, data)
    train = [8, 1, 4, 0]
    grads = torch.stack([plain_gradient(task, i) for i in train])
    for k, path in ((8, "ghost_products"), (9, "training_gradients")):
        paths.clear()
        V = torch.randn(k, task.num_params, dtype=torch.float64, generator=gen)
        got = score_matrix(task, train, V, chunk_size=3)
        assert paths == [path]
        np.testing.assert_allclose(got, (V @ grads.T).numpy() / 9, rtol=1e-10, atol=1e-14)
