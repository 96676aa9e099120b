"""Final training on a parameter subset, sharing the frozen trunk with further training."""

import copy
from types import SimpleNamespace

import torch
from torch import nn

from fimo.data import ArrayDataset
from fimo.experiments.build import final_training_task
from fimo.task import Task
from fimo.training import TrainingSettings, train_final


def sequential_task(trainable):
    g = torch.Generator().manual_seed(0)
    X, Xt = torch.randn(48, 4, generator=g, dtype=torch.float64), torch.randn(8, 4, generator=g)
    y, yt = (X[:, 0] * X[:, 1] > 0).long(), (Xt[:, 0] > 0).long()
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2)
    ).double()
    train, test = ArrayDataset(X, y), ArrayDataset(Xt.double(), yt)
    return Task(model, train, test, trainable=trainable)


def config(trainable):
    return SimpleNamespace(training=SimpleNamespace(trainable=trainable))


def test_trunk_length_counts_the_leading_frozen_modules():
    assert sequential_task(["4.*"]).trunk_length() == 4
    assert sequential_task(["2.weight", "4.*"]).trunk_length() == 2
    assert sequential_task(None).trunk_length() == 0


def test_final_training_beyond_the_trunk_reuses_its_cache_and_trains_the_same_weights():
    task = sequential_task(["4.*"])  # further training: the last layer; trunk = modules 0-3
    calls = []

    def cached(t):
        calls.append(t)
        return t.with_cached_trunk()

    final = final_training_task(config(["4.weight"]), task, cached)
    assert calls == [task]
    assert final.model is task.with_cached_trunk().model and final.trainable == ("4.weight",)
    torch.testing.assert_close(final.train.inputs, task.model[:4](task.train.inputs))

    reference = copy.deepcopy(task.model)
    settings = TrainingSettings(optimizer="adam", lr=0.05, epochs=3, batch_size=16, seed=3)
    train_final(final, settings)
    train_final(Task(reference, task.train, task.test, trainable=["4.weight"]), settings)
    for (name, got), want in zip(
        task.model.named_parameters(), reference.parameters(), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=name)
    assert not torch.equal(task.model[4].weight, sequential_task(["4.*"]).model[4].weight)


def test_final_training_inside_the_trunk_works_on_the_whole_model():
    task = sequential_task(["4.*"])
    final = final_training_task(config(["2.*", "4.*"]), task, lambda t: 1 / 0)  # never called
    assert final.model is task.model and final.trunk_length() == 2
    assert final_training_task(config([]), task) is task
