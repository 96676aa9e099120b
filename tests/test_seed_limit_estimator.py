"""benchmarks/unrolled_agreement.py's seed-limit (disattenuated) cosine: the pair sums against a
double loop, and the estimate against a known infinite-seed cosine under independent and
shared seed noise, where the cosine of the seed means is off."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from unrolled_agreement import cross_sum, seed_limit_per_test


def test_cross_sum_is_the_sum_over_distinct_seed_pairs():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3, 7)), rng.normal(size=(5, 3, 7))
    loop = sum((x[s] * y[t]).sum(-1) for s in range(5) for t in range(5) if s != t)
    np.testing.assert_allclose(cross_sum(x, y), loop, rtol=1e-12)
    np.testing.assert_allclose(cross_sum(x), cross_sum(x, x), rtol=1e-12)


def cosine(a, b):
    return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


@pytest.mark.parametrize("shared", [0.0, 0.8])
def test_seed_limit_recovers_the_infinite_seed_cosine(shared):
    """u_s = a + shared·e_s + f_s, g_s = b + e_s: the cosine of the 32-seed means is pulled
    below cos(a, b) by the noise (less so when the paired seeds share part of it, shared =
    0.8, which a cross-seed estimate must not count as agreement); the estimate stays at
    cos(a, b) within its sampling error, with or without unpaired seeds of u."""
    rng = np.random.default_rng(1)
    T, L, S, extra = 400, 40, 32, 32
    a = rng.normal(size=(1, T, L))
    b = 0.9 * a + np.sqrt(1 - 0.81) * rng.normal(size=(1, T, L))
    truth = cosine(a, b).mean()
    e = 2.0 * rng.normal(size=(S, 1, T, L))
    g = b + e
    u = a + shared * e + 2.0 * rng.normal(size=(S, 1, T, L))
    unpaired = a + 2.0 * rng.normal(size=(extra, 1, T, L))
    naive = cosine(u.mean(0), g.mean(0)).mean()
    estimate = np.nanmean(seed_limit_per_test(g, u, unpaired))
    assert abs(estimate - truth) < 0.02, (estimate, truth)
    assert abs(naive - truth) > 0.03, (naive, truth)  # the naive figure is off either way
    paired_only = np.nanmean(seed_limit_per_test(g, u, unpaired[:0]))
    assert abs(paired_only - truth) < 0.03
