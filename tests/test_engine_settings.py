"""Engine settings beyond the optimizers: checkpoints, dropout pairing, BatchNorm, frozen trunks."""

import numpy as np
import pytest
import torch
from torch import nn

from fimo.data import ArrayDataset
from fimo.errors import InputError
from fimo.further.engine import FurtherSettings, further_train_seed
from fimo.task import Task


def data(n=40, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    return ArrayDataset(X, (X[:, 0] > 0).long())


def test_explicit_checkpoint_steps():
    task = Task(nn.Sequential(nn.Linear(5, 2)).double(), data(), data(seed=1))
    s = FurtherSettings(lr=0.1, epochs=2, batch_size=8, record_steps=[7, 1, 3, 5])
    res = further_train_seed(task, s, 0, [1, 2], np.arange(5))
    assert res.steps.tolist() == [1, 3, 5, 7, 10]  # the steps asked for and the epoch ends
    with pytest.raises(InputError, match="record_steps"):
        FurtherSettings(record_steps=[0, 4])
    beyond = FurtherSettings(lr=0.1, epochs=2, batch_size=8, record_steps=[12])
    with pytest.raises(InputError, match=r"step 12 is beyond the last step \(10 = 2 epochs"):
        further_train_seed(task, beyond, 0, [1, 2], np.arange(5))


def dropout_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2)).double()


def test_dropout_draws_are_shared_by_all_runs_of_a_seed():
    train, test = data(), data(seed=1)
    task = Task(dropout_model(), train, test)
    s = FurtherSettings(lr=0.1, epochs=2, batch_size=8, scheme="mask")
    res = further_train_seed(task, s, 3, [7, 7, 11], np.arange(10))
    # two runs without the same instance saw the same batches and the same dropout masks
    np.testing.assert_array_equal(res.loss_without[..., 0], res.loss_without[..., 1])
    assert not np.allclose(res.loss_without[..., 0], res.loss_without[..., 2])
    # and the full run equals a plain loop whose dropout draws come from torch.manual_seed(seed)
    model = dropout_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(3)
    expected = []
    with torch.random.fork_rng():
        torch.manual_seed(3)
        for _ in range(2):
            perm = torch.randperm(40, generator=gen)
            for b in range(5):
                batch = perm[b * 8 : (b + 1) * 8]
                model.train()
                loss = nn.functional.cross_entropy(model(train.inputs[batch]), train.targets[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                out = nn.functional.cross_entropy(
                    model(test.inputs[:10]), test.targets[:10], reduction="none"
                )
            expected.append(out.numpy())
    np.testing.assert_allclose(res.loss_full, np.stack(expected), atol=1e-10)
    # another seed draws other masks
    other = further_train_seed(task, s, 4, [7], np.arange(10))
    assert not np.allclose(other.loss_full, res.loss_full)


def test_batchnorm_stays_in_eval_mode_during_further_training():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).double()
    model.train()
    model(data().inputs)  # give the running statistics non-trivial values
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    task = Task(model, data(), data(seed=1))
    s = FurtherSettings(lr=0.1, epochs=1, batch_size=8, scheme="mask")
    res = further_train_seed(task, s, 0, [3], np.arange(10))
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    # the same as a torch loop with the BatchNorm layer in eval mode
    ref = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).double()
    ref.load_state_dict(model.state_dict())
    ref.eval()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(40, generator=gen)
    X, Y = task.train.inputs, task.train.targets
    for b in range(5):
        batch = perm[b * 8 : (b + 1) * 8]
        loss = nn.functional.cross_entropy(ref(X[batch]), Y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = nn.functional.cross_entropy(
            ref(task.test.inputs[:10]), task.test.targets[:10], reduction="none"
        )
    np.testing.assert_allclose(res.loss_full[-1], out.numpy(), atol=1e-10)


def test_frozen_trunk_is_cached_and_changes_nothing():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 16), nn.Tanh(), nn.Identity(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)
    ).double()
    head = ["3.weight", "3.bias", "5.weight", "5.bias"]
    task = Task(model, data(), data(seed=1), trainable=head)
    cached = task.with_cached_trunk()
    assert cached is not task and cached.train.inputs.shape == (40, 16)
    assert [n for n, _ in cached.model.named_parameters()] == head
    assert task.with_cached_trunk() is cached  # memoised
    s = FurtherSettings(lr=0.1, epochs=2, batch_size=8, engine="generic")
    fast = further_train_seed(task, s, 0, [2, 9], np.arange(10))

    class NoCache(Task):  # the same task, computing the trunk at every step
        def with_cached_trunk(self):
            return self

    slow = further_train_seed(
        NoCache(model, data(), data(seed=1), trainable=head), s, 0, [2, 9], np.arange(10)
    )
    np.testing.assert_allclose(fast.loss_without, slow.loss_without, rtol=1e-12)
    np.testing.assert_allclose(fast.loss_full, slow.loss_full, rtol=1e-12)


def test_building_a_task_leaves_the_model_state_alone():
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Task(model, data().to(dtype=torch.float32), data(seed=1).to(dtype=torch.float32))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_dropout_inside_a_frozen_trunk_is_off():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.9), nn.Linear(16, 2)).double()
    model.train()
    task = Task(model, data(), data(seed=1), trainable=["2.weight", "2.bias"])
    cached = task.with_cached_trunk()
    torch.testing.assert_close(cached.train.inputs, model[0](data().inputs).detach())


def test_diverging_further_training_names_the_run_the_step_and_the_fix():
    from fimo.errors import NumericalError

    X = data().inputs
    regression = ArrayDataset(X, X.sum(1))
    task = Task(nn.Sequential(nn.Linear(5, 1)).double(), regression, regression, loss="mse")
    s = FurtherSettings(lr=1e3, epochs=100, batch_size=8, record_every=1)
    with pytest.raises(
        NumericalError,
        match=r"seed 0\) produced NaN or infinite test losses at step \d+ in the .*lower further\.lr",
    ):
        further_train_seed(task, s, 0, [1, 2], np.arange(5))


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(lr=0.0), "further.lr"),
        (dict(lr=float("nan")), "further.lr"),
        (dict(lr=float("inf")), "further.lr"),
        (dict(optimizer="rmsprop"), "further.optimizer"),
    ],
)
def test_optimizer_settings_are_checked_at_the_door(bad, match):
    with pytest.raises(InputError, match=match):
        FurtherSettings(**bad)
