"""`unrolled`: the derivative of the engine's own runs with respect to each training weight.

The reference is the engine itself: its runs with one instance's weight moved by ±ε (central
finite differences, float64), obtained by scaling the weights of the engine's own plan.
"""

import json

import numpy as np
import pytest
import torch
from torch import nn

import fimo.further.engine as engine_module
from fimo.data import ArrayDataset
from fimo.errors import InputError
from fimo.further.adjoint import unrolled_seed
from fimo.further.engine import FurtherSettings, further_train_seed
from fimo.further.plan import schedule
from fimo.models import mlp
from fimo.task import Task

EPS = 1e-5


def make_task(n=29, activation=nn.ReLU, dropout=0.0, seed=0, loss="cross_entropy"):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = (X[:, 0] + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) > 0).long()
    Xt = torch.randn(4, 5, generator=g, dtype=torch.float64)
    yt = (Xt[:, 0] > 0).long()
    if loss == "mse":
        y, yt = X[:, 1] + 0.3 * X[:, 2] ** 2, Xt[:, 1] + 0.3 * Xt[:, 2] ** 2
    model = mlp(5, 2 if loss == "cross_entropy" else 1, hidden=(8, 8), seed=seed)
    layers = [activation() if isinstance(m, nn.ReLU) else m for m in model]
    if dropout:
        layers.insert(2, nn.Dropout(dropout))
    model = nn.Sequential(*layers).to(torch.float64)
    return Task(model, ArrayDataset(X, y), ArrayDataset(Xt, yt), loss=loss)


def weighted_runs(task, settings, seed, instances, eps, monkeypatch):
    """The engine's runs with instance i's weight moved by +eps and by −eps, (C, T, 2, L).

    ``mask``: i's weight in its batch goes from 1 to 1 ∓ eps (the batch mean renormalised);
    ``downweight``: every step's loss minus ±eps·ℓ_i/n. +eps is the direction of removal.
    """
    original = schedule
    L = len(instances)
    signs = torch.tensor([1.0] * L + [-1.0] * L, dtype=torch.float64)

    def scaled(n, left_out, batch_size, epochs, seed, scheme="drop", max_steps=None):
        for step in original(n, left_out, batch_size, epochs, seed, scheme, max_steps):
            w = step.w.clone()
            if scheme == "mask":
                u = (step.w[0] > 0).double().expand_as(w).clone()
                hit = step.idx[1:] == torch.as_tensor(left_out).unsqueeze(1)
                u[1:][hit] -= (signs.unsqueeze(1) * eps).expand_as(hit)[hit]
                w = u / u.sum(1, keepdim=True)
            else:
                w[1:, -1] *= signs * eps
            step.w, step.active = w, None
            yield step

    monkeypatch.setattr(engine_module, "schedule", scaled)
    left = np.concatenate([instances, instances])
    res = further_train_seed(task, settings, seed, left, np.arange(len(task.test)))
    monkeypatch.undo()
    return res.loss_without.reshape(*res.loss_without.shape[:2], 2, L)


def finite_differences(task, settings, seed, instances, monkeypatch, eps=EPS):
    runs = weighted_runs(task, settings, seed, instances, eps, monkeypatch)
    return (runs[:, :, 0] - runs[:, :, 1]) / (2 * eps)  # (C, T, L)


CASES = [
    dict(optimizer="sgd", lr=0.1),
    dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.01),
    dict(optimizer="sgd", lr=0.1, momentum=0.8, nesterov=True),
    dict(optimizer="sgd", lr=0.1, clip_norm=0.2),
    dict(optimizer="adam", lr=0.01),
    dict(optimizer="adam", lr=0.01, weight_decay=0.1),
    dict(optimizer="adamw", lr=0.01, weight_decay=0.1, clip_norm=0.3),
]


@pytest.mark.parametrize("scheme", ["mask", "downweight"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_unrolled_equals_finite_differences_of_the_engine(case, scheme, monkeypatch):
    task = make_task()
    settings = FurtherSettings(epochs=2, batch_size=8, scheme=scheme, record_every=3, **case)
    got = unrolled_seed(task, settings, seed=2, test=np.arange(4))
    instances = np.array([0, 7, 28])
    ref = finite_differences(task, settings, 2, instances, monkeypatch)
    assert got.steps.tolist() == [3, 4, 6, 8]
    values = got.values[:, :, instances]
    assert np.abs(ref).min() > 1e-6  # every pair moves: the comparison is not of zeros
    np.testing.assert_allclose(values, ref, rtol=1e-5, atol=1e-7 * np.abs(ref).max())


def test_forward_is_the_gold_standards_run_zero():
    task = make_task(dropout=0.3)
    settings = FurtherSettings(lr=0.1, epochs=2, batch_size=8, scheme="mask", record_every=2)
    got = unrolled_seed(task, settings, seed=5, test=np.arange(4))
    gold = further_train_seed(task, settings, 5, [3, 9], np.arange(4))
    assert got.steps.tolist() == gold.steps.tolist()
    np.testing.assert_allclose(got.loss_full, gold.loss_full, rtol=0, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_dropout_replayed_in_the_derivative(optimizer, monkeypatch):
    task = make_task(dropout=0.3)
    settings = FurtherSettings(optimizer=optimizer, lr=0.05, epochs=2, batch_size=8, scheme="mask")
    got = unrolled_seed(task, settings, seed=1, test=np.arange(4))
    instances = np.array([1, 14, 20])
    ref = finite_differences(task, settings, 1, instances, monkeypatch)
    np.testing.assert_allclose(got.values[:, :, instances], ref, rtol=1e-5, atol=1e-9)


def test_recomputed_segments_give_the_stored_trajectorys_answer():
    task = make_task(n=45, loss="mse")
    settings = FurtherSettings(optimizer="adam", lr=0.01, epochs=3, batch_size=8, scheme="mask")
    stored = unrolled_seed(task, settings, seed=0, test=np.arange(4))
    one_state = sum(p.numel() for p in task.params().values()) * 8 * 3 + 5056
    small = unrolled_seed(task, settings, seed=0, test=np.arange(4), budget_bytes=26 * one_state)
    assert stored.segment == 1 and small.segment == 4  # 18 steps: segments of 4 recomputed
    np.testing.assert_allclose(small.values, stored.values, rtol=1e-12, atol=1e-15)


def test_smooth_model_matches_real_removal():
    """Under ``mask`` with a smooth model and a small step, the derivative is the removal."""
    task = make_task(n=64, activation=nn.Tanh)
    settings = FurtherSettings(lr=0.02, epochs=2, batch_size=16, scheme="mask")
    got = unrolled_seed(task, settings, seed=4, test=np.arange(4))
    left_out = np.arange(64)
    gold = further_train_seed(task, settings, 4, left_out, np.arange(4))
    removal = gold.loss_without - gold.loss_full[..., None]
    for c in range(len(gold.steps)):
        a, b = got.values[c].ravel(), removal[c].ravel()
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99


def test_sign_helpful_duplicate_is_positive():
    """A training copy of the test instance helps it: removing it raises its loss."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(24, 5, generator=g, dtype=torch.float64)
    y = (X[:, 0] > 0).long()
    y[5] = 1 - y[5]  # its label fights the rule: its own copy is what helps it
    test = ArrayDataset(X[[3, 5]], y[[3, 5]])
    model = mlp(5, 2, hidden=(8,)).to(torch.float64)
    task = Task(model, ArrayDataset(X, y), test)
    for scheme in ("mask", "downweight"):
        settings = FurtherSettings(lr=0.1, epochs=3, batch_size=8, scheme=scheme)
        got = unrolled_seed(task, settings, seed=0, test=[0, 1])
        assert got.values[-1, 0, 3] > 0 and got.values[-1, 1, 5] > 0
        assert got.values[-1, 0, 3] == got.values[-1, 0].max()


def test_downweight_with_dropout_is_refused():
    task = make_task(dropout=0.2)
    with pytest.raises(InputError, match="downweight"):
        unrolled_seed(task, FurtherSettings(batch_size=8, scheme="downweight"), 0, [0])


@pytest.mark.parametrize("scheme", ["mask", "downweight"])
def test_forward_and_reverse_modes_agree(scheme):
    """One tangent per training instance or one cotangent per (checkpoint, test): the same."""
    task = make_task(dropout=0.0 if scheme == "downweight" else 0.3)
    settings = FurtherSettings(
        optimizer="adamw", lr=0.01, weight_decay=0.1, clip_norm=0.3, epochs=2, batch_size=8,
        scheme=scheme, record_every=3,
    )  # fmt: skip
    train = [28, 0, 5, 3]
    reverse = unrolled_seed(task, settings, 2, np.arange(4), mode="reverse")
    forward = unrolled_seed(task, settings, 2, np.arange(4), train, mode="forward")
    np.testing.assert_allclose(forward.values, reverse.values[:, :, train], rtol=1e-10, atol=1e-15)
    np.testing.assert_array_equal(forward.loss_full, reverse.loss_full)


def test_method_is_the_seed_mean_with_its_standard_error():
    from fimo.methods import get_method
    from fimo.methods.unrolled import unrolled_estimate

    task = make_task(n=24)
    settings = FurtherSettings(lr=0.1, epochs=2, batch_size=8, scheme="mask")
    per_seed = np.stack(
        [unrolled_seed(task, settings, s, [1, 3]).values[:, :, [2, 9, 17]] for s in (4, 0, 7)]
    )
    est = unrolled_estimate(
        task, [1, 3], [2, 9, 17], further=settings.as_dict(), seeds=[4, 0, 7], keep=[17, 2]
    )
    np.testing.assert_allclose(est.mean, per_seed.mean(0), rtol=1e-12)
    np.testing.assert_allclose(est.sem, per_seed.std(0, ddof=1) / np.sqrt(3), rtol=1e-9)
    np.testing.assert_allclose(est.per_seed, per_seed[..., [2, 0]], rtol=1e-10)  # other mode
    done = []
    scores = get_method("unrolled")(
        task, [1, 3], [2, 9, 17], further=settings, seeds=[4, 0, 7], progress=done.append
    )
    assert done == [1, 1, 1]  # progress in training instances, as the pipeline's bar counts
    assert scores.shape == (2, 2, 3) and scores.steps.tolist() == [3, 6]
    np.testing.assert_allclose(scores.values, est.mean, rtol=1e-12)
    only_last = unrolled_estimate(task, [1], [2], further=settings, seeds=1, steps=[6])
    np.testing.assert_allclose(only_last.mean[0], per_seed[1, 1, :1, :1], rtol=1e-12)
    assert np.isnan(only_last.sem).all()


def test_method_settings_are_checked():
    from fimo.methods.unrolled import unrolled

    task = make_task(n=24)
    for bad, match in (
        (dict(seeds=[1, 1]), "more than once"),
        (dict(seeds=-2), "seeds"),
        (dict(steps=[5]), "not checkpoints"),
        (dict(further=3), "further"),
        (dict(mode="sideways"), "mode"),
    ):
        with pytest.raises(InputError, match=match):
            unrolled(task, [0], [1], **{"further": FurtherSettings(batch_size=8), **bad})


def test_drop_is_computed_as_mask():
    task = make_task(n=20)
    got = {
        scheme: unrolled_seed(task, FurtherSettings(lr=0.1, batch_size=8, scheme=scheme), 3, [0])
        for scheme in ("drop", "mask")
    }
    np.testing.assert_array_equal(got["drop"].values, got["mask"].values)
    assert np.abs(got["drop"].values).max() > 0


def _counting(monkeypatch, name, size):
    """Wrap ``fimo.further.adjoint.<name>`` to record ``size(args)`` at every call."""
    import fimo.further.adjoint as adjoint

    original, calls = getattr(adjoint, name), []

    def counted(*args):
        calls.append(size(args))
        return original(*args)

    monkeypatch.setattr(adjoint, name, counted)
    return calls


def test_reverse_sweeps_only_to_the_last_wanted_checkpoint(monkeypatch):
    """Subsets of the checkpoints are slices of the full answer, for less work: the sweep
    starts at the last wanted checkpoint and carries cotangents of the wanted ones only."""
    task = make_task(dropout=0.3)  # 29 instances, batches of 8: 4 steps per epoch
    settings = FurtherSettings(
        optimizer="adam", lr=0.01, epochs=2, batch_size=8, record_every=2, scheme="mask"
    )  # checkpoints after 2, 4, 6 and 8 steps
    vectors = _counting(monkeypatch, "_optimizer_vjp", lambda a: len(next(iter(a[-2].values()))))
    advanced = []
    full = unrolled_seed(task, settings, 1, np.arange(4), mode="reverse", on_step=advanced.append)
    assert full.steps.tolist() == [2, 4, 6, 8] and len(vectors) == 8 and len(advanced) == 8
    # 4 test instances per checkpoint, each live from its checkpoint back to step 1
    assert sum(vectors) == 4 * (2 * 4 + 2 * 3 + 2 * 2 + 2 * 1)
    for wanted, rows in (([4, 2, 4], [0, 1]), ([6], [2]), ([2, 8], [0, 3])):
        vectors.clear()
        advanced.clear()
        part = unrolled_seed(
            task, settings, 1, np.arange(4), steps=wanted, mode="reverse", on_step=advanced.append
        )
        assert part.steps.tolist() == full.steps[rows].tolist()
        np.testing.assert_allclose(part.values, full.values[rows], rtol=1e-12, atol=1e-16)
        np.testing.assert_array_equal(part.loss_full, full.loss_full[rows])
        last = max(wanted)
        assert len(vectors) == last and len(advanced) == last  # steps swept, steps run
        assert sum(vectors) == 4 * sum(sum(1 for s in part.steps if s > t) for t in range(last))


def test_forward_stops_at_the_last_wanted_checkpoint(monkeypatch):
    task = make_task()
    settings = FurtherSettings(
        optimizer="sgd", lr=0.1, momentum=0.9, epochs=2, batch_size=8, record_every=2,
        scheme="downweight",
    )  # fmt: skip
    train = [28, 0, 5]
    pushed = _counting(monkeypatch, "_push_tangents", lambda a: 1)
    read = _counting(monkeypatch, "_along_tangents", lambda a: 1)
    full = unrolled_seed(task, settings, 3, np.arange(4), train, mode="forward")
    assert (len(pushed), len(read)) == (8, 4)
    pushed.clear()
    read.clear()
    part = unrolled_seed(task, settings, 3, np.arange(4), train, steps=[4], mode="forward")
    assert (len(pushed), len(read)) == (4, 1)
    assert part.steps.tolist() == [4] and part.epochs.tolist() == [1.0]
    np.testing.assert_allclose(part.values, full.values[[1]], rtol=1e-12, atol=1e-16)
    np.testing.assert_array_equal(part.loss_full, full.loss_full[[1]])


def test_wanted_checkpoints_are_checked():
    task = make_task(n=24)
    settings = FurtherSettings(batch_size=8, epochs=2)  # checkpoints after 3 and 6 steps
    with pytest.raises(InputError, match=r"steps \[4\] are not checkpoints .* \[3, 6\]"):
        unrolled_seed(task, settings, 0, [0], steps=[3, 4])
    with pytest.raises(InputError, match="got none"):
        unrolled_seed(task, settings, 0, [0], steps=[])


def test_an_interrupted_estimate_resumes_at_the_next_seed(tmp_path, unrolled_seeds):
    """Seeds done before an interruption are read back (not computed again) and the numbers
    are exactly those of an uninterrupted call; a deleted, damaged or foreign state is
    ignored (every seed computed)."""
    from fimo.methods.unrolled import unrolled_estimate

    task = make_task(n=24)
    settings = FurtherSettings(lr=0.1, epochs=2, batch_size=8, scheme="mask")
    call = dict(test=[1, 3], train=range(24), further=settings, seeds=[4, 0, 7, 2], keep=[5, 17])
    whole = unrolled_estimate(task, **call)
    computed, stop_at = unrolled_seeds.computed, unrolled_seeds.stop_at
    stop_at[:] = []
    folder = tmp_path / "unrolled.partial"

    def resumed(stop, damage=None):
        computed.clear()
        stop_at[:] = [stop]
        with pytest.raises(KeyboardInterrupt):
            unrolled_estimate(task, **call, partial_dir=folder)
        if damage is not None:
            damage(folder / "state.npz")
        before, done = list(computed), []
        computed.clear()
        unrolled_seeds.announced.clear()
        again = unrolled_estimate(task, **call, partial_dir=folder, progress=done.append)
        assert sum(done) == 24 and not folder.exists()  # every instance counted; state removed
        # the cost announcement covers only the seeds still to do, made once, by the first
        assert unrolled_seeds.announced == [
            (seed, len(computed) if k == 0 else 0) for k, seed in enumerate(computed)
        ]
        for name in ("mean", "sem", "per_seed", "loss_full", "steps", "epochs"):
            np.testing.assert_array_equal(getattr(again, name), getattr(whole, name))
        return before, list(computed)

    assert resumed(stop=7) == ([4, 0], [7, 2])
    assert resumed(stop=2) == ([4, 0, 7], [2])
    assert resumed(stop=7, damage=lambda p: p.unlink()) == ([4, 0], [4, 0, 7, 2])
    assert resumed(stop=0, damage=lambda p: p.write_bytes(b"cut")) == ([4], [4, 0, 7, 2])
    # a state saved for other test instances is not used
    stop_at[:] = [7]
    with pytest.raises(KeyboardInterrupt):
        unrolled_estimate(task, **{**call, "test": [1]}, partial_dir=folder)
    computed.clear()
    unrolled_estimate(task, **call, partial_dir=folder)
    assert computed == [4, 0, 7, 2]


def test_fimo_run_resumes_unrolled_at_the_next_seed(tmp_path, unrolled_seeds):
    from fimo.experiments.config import from_dict
    from fimo.experiments.pipeline import run
    from fimo.io import read_npz

    config = from_dict(
        {
            "name": "tiny",
            "data": {"dataset": "concrete", "n_train": 40, "n_test": 3},
            "model": {"hidden": [6]},
            "training": {"epochs": 5, "batch_size": 16, "lr": 0.1},
            "further": {"epochs": 1, "batch_size": 16, "lr": 0.05, "seeds": 1, "left_out": 4},
            "methods": {"names": ["unrolled"], "train": "left_out", "unrolled": {"seeds": 3}},
        }
    )
    computed, stop_at = unrolled_seeds.computed, unrolled_seeds.stop_at
    stop_at[:] = [1]
    unrolled_seeds.sleep = 0.5  # each seed takes at least this long
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "a", quiet=True)
    assert computed == [0] and (tmp_path / "a/scores/unrolled.partial/state.npz").is_file()
    computed.clear()
    run(config, tmp_path / "a", quiet=True)
    assert computed == [1, 2] and not (tmp_path / "a/scores/unrolled.partial").exists()
    # the recorded time counts the seed of the interrupted invocation too
    settings = json.loads(str(read_npz(tmp_path / "a/scores/unrolled.npz")["settings"]))
    before = settings["resumed_seconds"]
    assert (before["seeds"], before["seeds_without_time"]) == (1, 0)
    assert 0.5 <= before["wall"] < settings["seconds"] - 2 * 0.5
    assert 0 <= before["cpu"] <= settings["cpu_seconds"]
    unrolled_seeds.sleep = 0.0
    computed.clear()
    run(config, tmp_path / "b", quiet=True)  # uninterrupted
    assert computed == [0, 1, 2]
    resumed, whole = (read_npz(tmp_path / d / "scores/unrolled.npz") for d in ("a", "b"))
    np.testing.assert_array_equal(resumed["scores"], whole["scores"])
    assert np.abs(whole["scores"]).max() > 0
