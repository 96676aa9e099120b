"""DataInf against a direct numpy implementation, the exact Sherman-Morrison case and Grad-Dot."""

import numpy as np
import pytest
import torch

from fimo.data import ArrayDataset
from fimo.errors import InputError
from fimo.methods.datainf import datainf, parameter_blocks
from fimo.methods.first_order import grad_dot
from fimo.methods.gradients import gradient_matrix
from fimo.models import mlp
from fimo.task import Task

DT = torch.float64


def trained_task(n=80, loss="cross_entropy", hidden=(8,), steps=200, seed=0, n_test=10):
    """A small MLP briefly trained with Adam."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n + n_test, 5, generator=g, dtype=DT)
    if loss == "mse":
        Y = torch.sin(X[:, 0]) + X[:, 1] ** 2
    else:
        Y = (X[:, 0] + X[:, 1] ** 2 > 0.5).long()
    Xtr, Ytr = X[:n], Y[:n]
    model = mlp(5, 1 if loss == "mse" else 2, hidden=hidden, seed=1).to(DT)
    task = Task(model, ArrayDataset(Xtr, Ytr), ArrayDataset(X[n:], Y[n:]), loss=loss)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        task.loss_fn(model(Xtr), Ytr).mean().backward()
        opt.step()
    return task


def numpy_datainf(task, test, train, lambda_const=10.0, blocks="module", sample=None):
    """The formula of PAPER.md §3, written out in numpy with explicit loops."""
    G = gradient_matrix(task, task.train, range(len(task.train))).numpy()
    V = gradient_matrix(task, task.test, test, measure=True).numpy()
    n = len(G)
    H = G if sample is None else G[sample]
    out = np.zeros((len(test), len(train)))
    for _, cols in parameter_blocks(task, blocks):
        Hl, Gl, Vl = H[:, cols], G[:, cols], V[:, cols]
        lam = np.mean(Hl**2) / lambda_const
        for r, v in enumerate(Vl):
            hinv_v = np.zeros_like(v)
            for g in Hl:
                hinv_v += v - (v @ g) / (lam + g @ g) * g
            hinv_v /= len(Hl) * lam
            for c, j in enumerate(train):
                out[r, c] += Gl[j] @ hinv_v / n
    return out


@pytest.mark.parametrize(
    ("blocks", "loss", "lambda_const"),
    [("module", "cross_entropy", 10.0), ("tensor", "mse", 0.1)],
)
def test_equals_direct_numpy_formula(blocks, loss, lambda_const):
    task = trained_task(n=50, loss=loss, hidden=(6, 4), steps=50)
    train = [0, 7, 49, 3, 12]
    s = datainf(task, [1, 4, 2], train, lambda_const=lambda_const, blocks=blocks, chunk_size=7)
    ref = numpy_datainf(task, [1, 4, 2], train, lambda_const, blocks)
    np.testing.assert_allclose(s.values, ref, rtol=1e-10, atol=1e-14)
    assert s.settings["blocks"] == blocks and s.settings["lambda_const"] == lambda_const
    assert len(s.settings["layer_damping"]) == (3 if blocks == "module" else 6)


def test_hessian_subsample_is_seeded_and_matches_formula():
    task = trained_task(n=50, steps=50)
    s = datainf(task, [0, 1], range(50), hessian_samples=12, hessian_seed=5)
    rng = np.random.default_rng(5)
    sample = np.sort(rng.choice(50, size=12, replace=False))
    ref = numpy_datainf(task, [0, 1], range(50), sample=sample)
    np.testing.assert_allclose(s.values, ref, rtol=1e-10, atol=1e-14)
    assert np.array_equal(
        s.values, datainf(task, [0, 1], range(50), hessian_samples=12, hessian_seed=5).values
    )
    assert s.settings["n_hessian"] == 12 and s.settings["hessian_samples"] == 12
    assert "subset of 12 of the 50" in s.settings["hessian_data"]
    with pytest.raises(InputError, match=r"hessian_samples: got 51; must be a whole number from 1"):
        datainf(task, [0], [0], hessian_samples=51)


def test_single_training_instance_is_exact_sherman_morrison():
    # with one instance, averaging-then-inverting and inverting-then-averaging coincide:
    # per block, exactly g_jlᵀ (g_l g_lᵀ + λ_l I)⁻¹ ∇g_l(z_t)
    task = trained_task(n=20, steps=50)
    single = Task(task.model, task.train[[3]], task.test)
    s = datainf(single, range(4), [0])
    g = gradient_matrix(single, single.train, [0])[0]
    v = gradient_matrix(single, single.test, range(4), measure=True)
    want = np.zeros(4)
    for _, cols in parameter_blocks(single):
        gl, vl = g[cols], v[:, cols]
        lam = float(gl.pow(2).mean()) / 10
        h = torch.outer(gl, gl) + lam * torch.eye(len(cols), dtype=DT)
        want += (torch.linalg.solve(h, vl.T).T @ gl).numpy()
    np.testing.assert_allclose(s.values[:, 0], want, rtol=1e-10)


def test_absolute_damping_and_progress():
    task = trained_task(n=30, steps=20)
    calls = []
    s = datainf(task, [0], range(30), damping=0.5, progress=calls.append, chunk_size=8)
    assert sum(calls) == 30
    assert set(s.settings["layer_damping"].values()) == {0.5}
    # large damping: (Ĥ + λI)⁻¹ → I/λ, so DataInf → Grad-Dot / (nλ)
    big = datainf(task, [0, 1], range(30), damping=1e8).values
    gd = grad_dot(task, [0, 1], range(30)).values
    np.testing.assert_allclose(big * 30 * 1e8, gd, rtol=1e-6)


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_close_to_grad_dot_on_a_small_mlp():
    # At the default λ_l (0.1 × the mean squared entry) the Sherman-Morrison terms are small
    # when a block has many parameters relative to the spread of its gradients, and DataInf
    # ≈ Σ_l g_tlᵀ g_jl / λ_l: Grad-Dot with the layers reweighted. Measured per test row: this
    # model mean cosine 0.994, min 0.966; the paper's 128-128 MLP (n = 1000, synthetic tabular,
    # SGD-trained) mean 0.978 (cross-entropy) and 0.990 (squared error), min 0.963.
    task = trained_task(n=250, hidden=(8,), steps=300, n_test=20)
    d = datainf(task, range(20), range(250)).values
    gd = grad_dot(task, range(20), range(250)).values
    cos = cosines(d, gd)
    assert cos.mean() > 0.98 and cos.min() > 0.9


def duplicate_task(loss, n=40, steps=150):
    """Test instance 2 copied into training slot 0, an 8-8 MLP trained briefly (Adam).

    Classification labels are noisy so that the model cannot memorise them (a memorised
    duplicate has a vanishing gradient, and every method scores it ≈ 0).
    """
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n + 10, 5, generator=g, dtype=DT)
    if loss == "mse":
        Y = torch.sin(X[:, 0]) + X[:, 1] ** 2
    else:
        Y = (X[:, 0] + X[:, 1] ** 2 + torch.randn(n + 10, generator=g, dtype=DT) > 0.5).long()
    Xtr, Ytr = X[:n].clone(), Y[:n].clone()
    Xtr[0], Ytr[0] = X[n + 2], Y[n + 2]
    model = mlp(5, 1 if loss == "mse" else 2, hidden=(8, 8), seed=1).to(DT)
    task = Task(model, ArrayDataset(Xtr, Ytr), ArrayDataset(X[n:], Y[n:]), loss=loss)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        task.loss_fn(model(Xtr), Ytr).mean().backward()
        opt.step()
    return task


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_duplicate_of_test_instance_is_helpful(loss):
    # measured rank of the duplicate among 40: 2 (classification), 1 (regression)
    row = datainf(duplicate_task(loss), [2], range(40)).values[0]
    assert row[0] > 0
    assert (row > row[0]).sum() < 5  # among the most helpful
    assert (row < 0).any()  # the sign is informative: other instances are harmful


def test_recomputed_gradients_equal_cached(monkeypatch):
    # when n × P does not fit the budget, the gradients are recomputed in each pass
    # (ghost="never": an MLP this size would otherwise be scored from layer factors)
    task = trained_task(n=30, steps=20)
    cached = datainf(task, [0, 3], range(30), chunk_size=8, ghost="never").values
    monkeypatch.setattr("fimo.methods.datainf.DEFAULT_BUDGET", 0)
    recomputed = datainf(task, [0, 3], range(30), chunk_size=8, ghost="never").values
    np.testing.assert_allclose(recomputed, cached, rtol=1e-12)


def lora_task():
    """A 5-8-2 MLP briefly trained, then LoRA (rank 2) on both Linear layers at B = 0: the
    gradients with respect to both A are exactly zero, so those blocks get λ = 0 and are
    skipped."""
    from fimo.lora import with_lora

    task = trained_task(n=23, steps=30)
    return with_lora(task, rank=2, targets=["*"], seed=3)


@pytest.mark.parametrize("cached", [True, False])
def test_chunked_equals_one_chunk_under_lora_with_zero_blocks(monkeypatch, cached):
    """Chunks of 1, 4 or as many as the budget holds give the scores of a single chunk of all
    23 instances, with the gradients kept or recomputed in each pass (float64, 1e-12)."""
    task = lora_task()
    if not cached:
        monkeypatch.setattr("fimo.methods.datainf.DEFAULT_BUDGET", 0)
    test, train = [0, 3, 5], [22, 0, 7, 11]
    whole = datainf(task, test, train, chunk_size=23, hessian_samples=17, hessian_seed=2)
    lam = whole.settings["layer_damping"]
    assert [lam[f"{k}.lora_A"] for k in ("0", "2")] == [0.0, 0.0]  # the skipped blocks
    assert min(lam[f"{k}.lora_B"] for k in ("0", "2")) > 0
    assert np.isfinite(whole.values).all() and np.abs(whole.values).max() > 1e-3
    for chunk in (1, 4, None):
        got = datainf(task, test, train, chunk_size=chunk, hessian_samples=17, hessian_seed=2)
        np.testing.assert_allclose(got.values, whole.values, rtol=1e-12, atol=0)


def test_the_default_chunk_counts_the_activations_of_the_forward_pass():
    """Each instance takes its gradient twice and 4 numbers per number of its forward pass
    (its input and the outputs of the modules without submodules): for 5-8-2 (66 parameters)
    5 inputs, 8 + 8 (Linear, ReLU) and 2 outputs; under LoRA rank 2 on both layers (46
    parameters: 2·5 + 8·2 + 2·8 + 2·2) 5 inputs, 2 + 8 (lora_A, lora_B), 8 (ReLU), 2 + 2."""
    from fimo.methods.gradients import grad_chunk_size

    task = trained_task(n=23, steps=0)
    assert task.num_params == 66
    assert grad_chunk_size(task, task.train.inputs, budget=8 * (2 * 66 + 4 * 23) * 7) == 7
    assert grad_chunk_size(task, task.train.inputs, budget=8 * (2 * 66 + 4 * 23) * 7 - 1) == 6
    lora = lora_task()
    assert lora.num_params == 46
    per_instance = 8 * (2 * 46 + 4 * 27)
    assert grad_chunk_size(lora, lora.train.inputs, budget=per_instance * 5) == 5
    assert grad_chunk_size(lora, lora.train.inputs, budget=1) == 1
