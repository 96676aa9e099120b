"""The vectorised engine against plain torch.optim training of each run, one at a time."""

import functools

import numpy as np
import pytest
import torch

from fimo.data import ArrayDataset
from fimo.further.engine import FurtherSettings, further_train_seed
from fimo.models import mlp
from fimo.task import Task


def make_task(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g, dtype=dtype)
    y = (X[:, 0] + 0.5 * torch.randn(n, generator=g, dtype=dtype) > 0).long()
    Xt = torch.randn(6, 5, generator=g, dtype=dtype)
    yt = (Xt[:, 0] > 0).long()
    model = mlp(5, 2, hidden=(8, 8), seed=seed).to(dtype)
    return Task(model, ArrayDataset(X, y), ArrayDataset(Xt, yt))


def torch_optimizer(settings, params):
    s = settings
    if s.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, nesterov=s.nesterov
        )
    cls = torch.optim.Adam if s.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=s.lr, betas=s.betas, eps=s.eps, weight_decay=s.weight_decay)


def reference_run(task, settings, seed, leave_out):
    """One run the way the paper's reference code trains: a loop and torch.optim."""
    model = mlp(5, 2, hidden=(8, 8)).to(torch.float64)
    model.load_state_dict(task.model.state_dict())
    opt = torch_optimizer(settings, model.parameters())
    gen = torch.Generator().manual_seed(seed)
    X, Y = task.train.inputs, task.train.targets
    n, B = len(X), settings.batch_size
    out = []
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=gen).tolist()
        if leave_out is not None and settings.scheme == "drop":
            order.remove(leave_out)
        for start in range(0, len(order), B):
            batch = order[start : start + B]
            if leave_out is not None and settings.scheme == "mask":
                batch = [j for j in batch if j != leave_out]
            losses = torch.nn.functional.cross_entropy(model(X[batch]), Y[batch], reduction="none")
            loss = losses.mean()
            if leave_out is not None and settings.scheme == "downweight":
                extra = torch.nn.functional.cross_entropy(model(X[[leave_out]]), Y[[leave_out]])
                loss = loss - extra / n
            opt.zero_grad()
            loss.backward()
            if settings.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm)
            opt.step()
        with torch.no_grad():
            out.append(
                torch.nn.functional.cross_entropy(
                    model(task.test.inputs), task.test.targets, reduction="none"
                ).numpy()
            )
    return np.stack(out)  # (C, T)


@functools.cache
def shared_reference(n, case_items, scheme, seed, leave_out):
    """`reference_run` on make_task(n) with two epochs of 8, computed once: the auto and the
    generic engine are checked against the same reference (it does not depend on the engine)."""
    settings = FurtherSettings(epochs=2, batch_size=8, scheme=scheme, **dict(case_items))
    losses = reference_run(make_task(n), settings, seed, leave_out)
    losses.flags.writeable = False
    return losses


CASES = [
    dict(optimizer="sgd", lr=0.05),
    dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.01),
    dict(optimizer="sgd", lr=0.05, momentum=0.8, nesterov=True, clip_norm=0.3),
    dict(optimizer="adam", lr=0.01),
    dict(optimizer="adam", lr=0.01, weight_decay=0.1),
    dict(optimizer="adamw", lr=0.01, weight_decay=0.1, clip_norm=0.5),
]


@pytest.mark.parametrize("engine", ["auto", "generic"])  # fused MLP path and vmap(grad)
@pytest.mark.parametrize("n", [37, 33])  # 33 = 4·8 + 1: a left-out run takes one step fewer
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_engine_matches_torch_optim_drop(n, case, engine):
    task = make_task(n)
    settings = FurtherSettings(epochs=2, batch_size=8, scheme="drop", engine=engine, **case)
    left_out = np.array([0, 5, n - 1])
    res = further_train_seed(task, settings, seed=3, left_out=left_out, test=np.arange(6))
    assert res.steps.tolist() == [5, 10]
    key = (n, tuple(case.items()), "drop", 3)
    np.testing.assert_allclose(res.loss_full, shared_reference(*key, None), atol=1e-6)
    for j, i in enumerate(left_out):
        ref = shared_reference(*key, int(i))
        np.testing.assert_allclose(res.loss_without[:, :, j], ref, atol=1e-6)
    # the left-out runs really differ from the full run
    assert np.abs(res.loss_without - res.loss_full[..., None]).max() > 1e-6


@pytest.mark.parametrize("engine", ["auto", "generic"])
@pytest.mark.parametrize("scheme", ["mask", "downweight"])
def test_engine_matches_torch_optim_other_schemes(scheme, engine):
    task = make_task(37)
    case = dict(optimizer="adam", lr=0.01)
    settings = FurtherSettings(epochs=2, batch_size=8, scheme=scheme, engine=engine, **case)
    left_out = np.array([2, 30])
    res = further_train_seed(task, settings, seed=1, left_out=left_out, test=np.arange(6))
    key = (37, tuple(case.items()), scheme, 1)
    np.testing.assert_allclose(res.loss_full, shared_reference(*key, None), atol=1e-6)
    for j, i in enumerate(left_out):
        ref = shared_reference(*key, int(i))
        np.testing.assert_allclose(res.loss_without[:, :, j], ref, atol=1e-6)


def test_record_every_and_max_steps():
    task = make_task(37)
    settings = FurtherSettings(lr=0.05, epochs=3, batch_size=8, record_every=2, max_steps=7)
    res = further_train_seed(task, settings, seed=0, left_out=[1], test=np.arange(6))
    # 5 steps per epoch: every 2 steps, the end of epoch 1 (step 5), and the stop at step 7
    assert res.steps.tolist() == [2, 4, 5, 6, 7]
    np.testing.assert_allclose(res.epochs, np.array([2, 4, 5, 6, 7]) / 5)


def test_engine_leaves_model_untouched():
    task = make_task(20)
    before = {k: v.clone() for k, v in task.params().items()}
    further_train_seed(task, FurtherSettings(lr=0.1, batch_size=4), 0, [1, 2], np.arange(6))
    for k, v in task.params().items():
        assert torch.equal(v, before[k])


def test_memory_budget_decides_the_chunks():
    from fimo.errors import InputError
    from fimo.further.runner import bytes_per_run, runs_per_shard

    task = make_task(40)
    s = FurtherSettings(optimizer="adam", batch_size=8)
    per_run = bytes_per_run(task, s, n_test=6)
    params = task.num_params * 8  # float64
    assert per_run >= 6 * params  # parameters, gradients, updates, scratch and Adam's two moments
    assert runs_per_shard(task, s, 100, 6, budget=11 * per_run) == 10  # the full run + 10
    assert runs_per_shard(task, s, 3, 6, budget=11 * per_run) == 3
    with pytest.raises(InputError, match="memory_budget_mb"):
        runs_per_shard(task, s, 100, 6, budget=per_run)
