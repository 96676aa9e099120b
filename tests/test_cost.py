"""Long loops announce their estimated cost once, from a timed probe (issue 17 part 6)."""

import logging
import time

import numpy as np
import pytest
import torch

import fimo.methods.cost as cost
from fimo.data import ArrayDataset
from fimo.methods.cost import CostProbe, announcements, estimate_seconds
from fimo.methods.first_order import grad_dot
from fimo.methods.influence import cg, lissa_hessian
from fimo.models import mlp
from fimo.task import Task


def fake_clock(times):
    values = iter(times)
    return lambda: next(values)


def test_the_estimate_is_the_first_unit_plus_the_probed_rate_times_the_rest(caplog):
    caplog.set_level(logging.INFO, logger="fimo.cost")
    # start at 0; the first unit (with its one-off work) ends at 3 s, the second at 3.5 s
    probe = CostProbe("200 products", 200, "lower depth", clock=fake_clock([0.0, 3.0, 3.5]))
    assert probe.tick() is None
    message = probe.tick()
    assert estimate_seconds(3.0, 0.5, 1, 200) == 3.0 + 0.5 * 199 == 102.5
    assert message == "about 1.7 min for 200 products (0.5 s each); lower depth to cut it"
    assert probe.tick() is None and probe.tick() is None  # said once
    assert [r.getMessage() for r in caplog.records] == [message]
    # units counted in instances: 10 per tick, 0.1 s each after the first chunk's 2 s
    probe = CostProbe("scoring", 1000, "score fewer", clock=fake_clock([0.0, 2.0, 3.0]))
    probe.tick(10)
    assert probe.tick(10).startswith(f"about {cost.duration(2.0 + 0.1 * 990)} for scoring")
    # short work is not announced, and neither is work done by the second tick
    assert CostProbe("x", 20, "y", clock=fake_clock([0, 1, 2])).tick() is None
    quick = CostProbe("x", 20, "y", clock=fake_clock([0, 1, 2]))
    quick.tick()
    assert quick.tick() is None  # 1 + 19 s < 30 s
    done = CostProbe("x", 2, "y", clock=fake_clock([0, 100, 200]), threshold=1)
    done.tick()
    assert done.tick() is None


def small_task(n=60):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n + 5, 4, generator=g, dtype=torch.float64)
    Y = torch.randint(0, 2, (n + 5,), generator=g)
    model = mlp(4, 2, hidden=(8,), seed=0).double()
    return Task(model, ArrayDataset(X[:n], Y[:n]), ArrayDataset(X[n:], Y[n:]))


def test_lissa_hessian_announces_its_series_within_a_sane_factor_of_its_time(monkeypatch):
    monkeypatch.setattr(cost, "ANNOUNCE_AFTER", 0.0)
    estimates = []

    def recording(*args):
        estimates.append(estimate_seconds(*args))
        return estimates[-1]

    monkeypatch.setattr(cost, "estimate_seconds", recording)
    task = small_task()
    shown = []
    started = time.perf_counter()
    with announcements(shown.append):
        lissa_hessian(task, range(5), range(60), depth=40, batch_size=16, damping=1.0, chunk_size=7)
    elapsed = time.perf_counter() - started
    series = [
        m for m in shown if "40 curvature products on minibatches of 16 (depth 40 × repeat 1)" in m
    ]
    assert len(series) == 1 and series[0].endswith(
        "lower depth or hessian_samples or batch_size to cut it"
    )
    assert any(m.startswith("about") and "scoring 60 training instances" in m for m in shown)
    # the series is most of the call: its estimate lies within a loose factor of the call's time
    estimate = estimates[0]
    assert 0.05 * elapsed < estimate < 5 * elapsed
    # outside the block nothing is passed on
    grad_dot(task, range(5), range(60), chunk_size=7)
    assert len(shown) == len(series) + 1


def test_conjugate_gradients_announce_an_upper_bound(monkeypatch):
    monkeypatch.setattr(cost, "ANNOUNCE_AFTER", 0.0)
    shown = []
    with announcements(shown.append):
        scores = cg(small_task(), range(5), range(60), max_iter=50, tol=1e-12)
    assert any("at most 50 conjugate-gradient iterations on 5 systems" in m for m in shown)
    assert np.isfinite(scores.values).all()


@pytest.mark.parametrize("threshold", [1e9])
def test_nothing_is_announced_below_the_threshold(monkeypatch, threshold):
    monkeypatch.setattr(cost, "ANNOUNCE_AFTER", threshold)
    shown = []
    with announcements(shown.append):
        lissa_hessian(small_task(), range(5), range(60), depth=20, damping=1.0)
    assert shown == []


def ticking_clock(monkeypatch):
    """Replace the probes' clock by one that advances 1 s at each reading."""
    readings = iter(range(10**6))
    monkeypatch.setattr(cost, "now", lambda: float(next(readings)))


def test_unrolled_announces_every_seed_from_the_first_sweep_steps(monkeypatch):
    """1 s per clock reading: the probe's first unit and every other step take 1 s, so the
    estimate is seeds × the steps of the sweeps, which counts the work."""
    from fimo.further.engine import FurtherSettings
    from fimo.methods.unrolled import unrolled_estimate

    ticking_clock(monkeypatch)
    task = small_task()  # 60 instances, batches of 16: 4 steps per epoch
    further = FurtherSettings(lr=0.1, batch_size=16, epochs=2)  # checkpoints after 4 and 8 steps
    shown = []
    with announcements(shown.append):
        unrolled_estimate(task, range(3), range(60), further=further, seeds=5, mode="reverse")
        unrolled_estimate(task, range(3), range(60), further=further, seeds=5, steps=[4])
        unrolled_estimate(task, range(3), [0, 9], further=further, seeds=4, mode="forward")
    assert shown == [
        "about 40 s for unrolled: 5 seed(s) × 8 reverse steps carrying 6 cotangents "
        "(checkpoint × test) (1 s each); lower the seeds or the steps, or give fewer test "
        "instances to cut it",
        # 4 steps only (below the threshold): not announced
        "about 32 s for unrolled: 4 seed(s) × 8 forward steps carrying 2 tangents (training "
        "instances) (1 s each); lower the seeds or the steps, or score fewer training instances "
        "to cut it",
    ]
    monkeypatch.setattr(cost, "ANNOUNCE_AFTER", 0.0)
    with announcements(shown.append):
        unrolled_estimate(task, range(3), range(60), further=further, seeds=5, steps=[4])
    assert shown[-1].startswith("about 20 s for unrolled: 5 seed(s) × 4 reverse steps carrying 3 ")


def test_unrolled_estimate_is_within_a_sane_factor_of_its_time(monkeypatch):
    from fimo.further.engine import FurtherSettings
    from fimo.methods.unrolled import unrolled_estimate

    monkeypatch.setattr(cost, "ANNOUNCE_AFTER", 0.0)
    per_seed = []

    def recording(*args):
        per_seed.append(estimate_seconds(*args))
        return per_seed[-1]

    monkeypatch.setattr(cost, "estimate_seconds", recording)
    further = FurtherSettings(lr=0.1, batch_size=8, epochs=3)
    started = time.perf_counter()
    unrolled_estimate(small_task(), range(3), range(60), further=further, seeds=3, mode="reverse")
    elapsed = time.perf_counter() - started
    assert len(per_seed) == 1 and 0.2 * elapsed < 3 * per_seed[0] < 5 * elapsed


def test_unrolled_quadratic_announces_its_build_steps_and_scoring(monkeypatch):
    """1 s per clock reading: a probe's first tick comes 1 s after its start, every later
    unit takes (1 s / the units of a tick); work done by the second tick is not announced."""
    from fimo.methods.unrolled_quadratic import unrolled_quadratic

    ticking_clock(monkeypatch)
    monkeypatch.setattr(cost, "ANNOUNCE_AFTER", 0.0)
    task = small_task()  # 58 parameters, 60 training instances
    shown = []
    with announcements(shown.append):
        dense = unrolled_quadratic(task, range(5), range(60), steps=[3, 40], lr=0.1, chunk_size=7)
        assert shown == [  # Gauss-Newton built from one chunk of 60: not announced
            "about 8.6 s for scoring 60 training instances against 5 test vectors at 2 "
            "checkpoints (0.14 s each); score fewer training instances or test instances to "
            "cut it"  # chunks of 7: 1 s + 53 × 1/7 s
        ]
        series = unrolled_quadratic(
            task, range(5), range(60), steps=[3, 40], lr=0.1, solver="series", chunk_size=30
        )
        krylov = unrolled_quadratic(
            task, range(5), range(60), steps=[3, 40], lr=0.1, solver="lanczos", max_iter=25,
            chunk_size=30,
        )  # fmt: skip
        exact = unrolled_quadratic(
            task, range(5), range(60), steps=[3, 40], lr=0.1, hessian="hessian", batch_size=13,
            chunk_size=60,
        )  # fmt: skip
    assert shown[1:] == [
        "about 40 s for 40 series steps on blocks of up to 5 test gradients (1 s each); "
        "lower the steps to cut it",
        "about 25 s for at most 25 lanczos steps on blocks of up to 5 test gradients (1 s "
        "each); lower max_iter or hessian_samples to cut it",
        "about 4.6 s for the dense 58 × 58 hessian matrix from 60 instances (0.077 s each); "
        "lower hessian_samples or dense_max_params (Lanczos instead) to cut it",  # batches of 13
    ]
    np.testing.assert_allclose(series.values, dense.values, rtol=1e-8, atol=1e-14)
    scale = np.abs(dense.values).max()
    np.testing.assert_allclose(krylov.values, dense.values, rtol=1e-4, atol=1e-6 * scale)
    assert max(krylov.settings["iterations"]) <= 25 and np.isfinite(exact.values).all()


def test_explicit_announces_its_dense_build(monkeypatch):
    import fimo.methods.curvature as curvature
    from fimo.methods.influence import explicit

    task = small_task()  # 58 parameters, 2 outputs
    whole = explicit(task, range(5), range(60), damping=0.1)
    ticking_clock(monkeypatch)
    monkeypatch.setattr(cost, "ANNOUNCE_AFTER", 0.0)
    # a memory budget of 20 instances' Jacobians (58 × 2 float64 each): chunks of 20
    monkeypatch.setattr(curvature, "DEFAULT_BUDGET", 20 * 58 * 2 * 8)
    shown = []
    with announcements(shown.append):
        chunked = explicit(task, range(5), range(60), damping=0.1)
        explicit(task, range(5), range(60), damping=50.0, hessian="hessian", batch_size=13)
    build = [m for m in shown if "dense" in m]
    assert build == [
        "about 3 s for the dense 58 × 58 gauss_newton matrix from 60 instances (0.05 s each); "
        "lower hessian_samples (or use cg) to cut it",  # 1 s + 40 × 1/20 s
        "about 4.6 s for the dense 58 × 58 hessian matrix from 60 instances (0.077 s each); "
        "lower hessian_samples (or use cg) to cut it",  # 1 s + 47 × 1/13 s
    ]
    np.testing.assert_allclose(chunked.values, whole.values, rtol=1e-10, atol=1e-16)
