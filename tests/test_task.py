"""Task: the loss kind comes from the loss function's identity, and every piece of code that
switches the model's mode gives each module its own flag back (also after an exception)."""

import numpy as np
import pytest
import torch
from torch import nn

from fimo.baselines import baseline
from fimo.data import ArrayDataset
from fimo.further.engine import FurtherSettings, further_train_seed
from fimo.further.fast import fused_mlp_grads
from fimo.methods.ekfac import ekfac, fit_ekfac
from fimo.methods.gradients import gradient_matrix, per_instance_grads
from fimo.methods.influence import cg
from fimo.methods.trak import trak
from fimo.task import LossKind, Task, squared_error
from fimo.training import evaluate_model

DT = torch.float64


def data(n=12, d=4, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=DT)
    return ArrayDataset(x, torch.randint(0, classes, (n,), generator=gen))


def cross_entropy(outputs, targets):  # a user's own loss that happens to share the name
    return nn.functional.cross_entropy(outputs, targets, reduction="none")


def generic_ce(outputs, targets):  # the same loss under another name: surely custom
    return nn.functional.cross_entropy(outputs, targets, reduction="none")


def mlp_task(loss, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    return Task(model, data(), data(6, seed=1), loss=loss)


# -- the loss kind -------------------------------------------------------------------------------
def test_loss_kind_follows_the_function_not_its_name():
    assert mlp_task("cross_entropy").loss_kind == LossKind.CROSS_ENTROPY
    assert mlp_task(cross_entropy).loss_kind == LossKind.CUSTOM
    assert mlp_task(cross_entropy).loss_name == "cross_entropy"  # the display name is kept
    torch.manual_seed(0)
    reg = ArrayDataset(torch.randn(8, 4, dtype=DT), torch.randn(8, 2, dtype=DT))
    for loss in ("mse", squared_error):
        task = Task(nn.Linear(4, 2).double(), reg, reg, loss=loss)
        assert task.loss_kind == LossKind.SQUARED_ERROR
    mse = lambda o, t: squared_error(o, t)  # noqa: E731
    mse.__name__ = "mse"
    task = Task(nn.Linear(4, 2).double(), reg, reg, loss=mse)
    assert (task.loss_kind, task.loss_name) == (LossKind.CUSTOM, "mse")


def test_custom_cross_entropy_takes_no_built_in_shortcut():
    builtin, impostor, generic = (mlp_task(f) for f in ("cross_entropy", cross_entropy, generic_ce))
    assert fused_mlp_grads(builtin) is not None
    assert fused_mlp_grads(impostor) is None
    assert "test_accuracy" in evaluate_model(builtin)
    assert "test_accuracy" not in evaluate_model(impostor)
    assert baseline(builtin) and baseline(impostor) == {}
    test, train = [0, 1, 2], list(range(12))
    # sampled Fisher: the built-in cross-entropy draws labels, a custom loss Gaussian vectors
    kw = dict(sampling="sample", damping=0.1, seed=3)
    e_builtin, e_impostor, e_generic = (
        ekfac(t, test, train, **kw).values for t in (builtin, impostor, generic)
    )
    np.testing.assert_array_equal(e_impostor, e_generic)
    assert np.abs(e_impostor - e_builtin).max() > 1e-3 * np.abs(e_builtin).max()
    # TRAK: the built-in cross-entropy uses the margin, a custom loss the raw outputs
    r = [trak(t, test, train, proj_dim=None) for t in (builtin, impostor, generic)]
    np.testing.assert_array_equal(r[1].values, r[2].values)
    assert r[0].settings["output_function"] == "margin"
    assert r[1].settings["output_function"] == "outputs"
    assert np.abs(r[1].values - r[0].values).max() > 1e-3 * np.abs(r[0].values).max()


def test_cached_trunk_keeps_a_custom_loss_with_a_built_in_name():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    task = Task(model, data(), data(6, seed=1), loss=cross_entropy, trainable=["2.*"])
    head = task.with_cached_trunk()
    assert head is not task and head.loss_fn is cross_entropy
    assert head.loss_kind == LossKind.CUSTOM


# -- modes ---------------------------------------------------------------------------------------
def mixed_model():
    """Dropout and BatchNorm, with flags that differ from their parents'."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3)
    ).double()
    with torch.no_grad():  # running statistics that differ from a batch's own
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.train()
    model[1].training = False
    model[4].training = False
    return model


def flags(model):
    return [m.training for m in model.modules()]


MIXED = [True, True, False, True, True, False]


def mixed_task(**kw):
    return Task(mixed_model(), data(), data(6, seed=1), trainable=["0.*", "4.*"], **kw)


def test_task_construction_and_contexts_restore_each_flag():
    task = mixed_task()
    assert flags(task.model) == MIXED
    with task.eval_mode():
        assert not any(flags(task.model))
    assert flags(task.model) == MIXED
    with task.train_mode():
        assert flags(task.model) == [True, True, False, True, True, True]
    assert flags(task.model) == MIXED
    for context in (task.eval_mode, task.train_mode):
        with pytest.raises(RuntimeError, match="boom"), context():
            raise RuntimeError("boom")
        assert flags(task.model) == MIXED


def test_gradients_are_taken_in_eval_mode_and_flags_restored():
    task = mixed_task()
    G = gradient_matrix(task, task.train, range(5))
    assert flags(task.model) == MIXED
    # independent: autograd through a deep copy of the model in eval mode, one instance at a time
    model = mixed_model().eval()
    for i in range(5):
        loss = nn.functional.cross_entropy(
            model(task.train.inputs[i : i + 1]), task.train.targets[i : i + 1]
        )
        params = [p for n, p in model.named_parameters() if n in task.trainable]
        want = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        torch.testing.assert_close(G[i], want, rtol=1e-12, atol=1e-12)
    chunks = per_instance_grads(task, task.train.inputs, task.train.targets, chunk_size=4)
    next(chunks)
    assert not any(flags(task.model))  # still inside the generator
    chunks.close()  # a consumer that stops early (or raises) closes the generator
    assert flags(task.model) == MIXED


def test_methods_and_training_restore_each_flag():
    task = mixed_task()
    test, train = [0, 1], list(range(12))
    fit_ekfac(task)
    assert flags(task.model) == MIXED
    ekfac(task, test, train)
    assert flags(task.model) == MIXED
    trak(task, test, train, proj_dim=8)
    assert flags(task.model) == MIXED
    cg(task, test, train)
    assert flags(task.model) == MIXED
    evaluate_model(task)
    assert flags(task.model) == MIXED
    settings = FurtherSettings(epochs=1, batch_size=4, lr=0.01)
    further_train_seed(task, settings, 0, np.array([1]), np.array([0, 1]))
    assert flags(task.model) == MIXED

    def stop(steps):
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        further_train_seed(task, settings, 0, np.array([1]), np.array([0]), on_step=stop)
    assert flags(task.model) == MIXED


def test_cached_trunk_restores_each_flag_and_uses_eval_mode():
    model = mixed_model()
    task = Task(model, data(), data(6, seed=1), trainable=["4.*"])
    head = task.with_cached_trunk()
    assert flags(model) == MIXED
    with torch.no_grad():
        want = model[:4].eval()(task.train.inputs)  # the trunk in eval mode: no dropout
    torch.testing.assert_close(head.train.inputs, want, rtol=0, atol=0)
