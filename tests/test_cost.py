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
