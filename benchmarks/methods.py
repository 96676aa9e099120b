"""fimo's attribution methods against the libraries people use, on the same model and data.

Times fimo and the peer libraries (dattri, captum, kronfluence, traker) for the methods they
share (Grad-Dot, explicit influence, CG, LiSSA, Arnoldi, EK-FAC, DataInf, TRAK with one
model), brings every peer's matrix into fimo's contract (rows = test instances, columns = training
instances, positive = helpful, influence on the 1/n scale of the mean training loss) and
checks that the scores agree (cosine of the whole matrices). Prints one table: method,
library, seconds, fimo's seconds, ratio (peer / fimo: above 1 means fimo is faster), cosine
with fimo, and the least-squares scale of the peer's aligned matrix against fimo's (1 when the
conventions have been aligned; TRAK's package normalises its kernel inverse, so its scale is
arbitrary).

Every call (fimo's and each peer's, each repeat) runs in a fresh child process under an
address-space limit and a wall-clock limit; the table gives its time and the child's peak
resident memory, and a library that runs out of memory or time (or fails) is a row that says
so, not the end of the benchmark.

Peers are not dependencies of fimo: run this in their own environment (benchmarks/README.md,
benchmarks/requirements-peers.txt). A peer that cannot be imported is named and skipped.

    /tmp/peers/bin/python benchmarks/methods.py [--repeats 3] [--n-train 2000] [--n-test 20]
        [--hidden 128 128] [--damping 0.2] [--methods grad_dot cg ...]
        [--peers dattri kronfluence ...] [--mem-limit-gb 12] [--time-limit 900]
        [--json out.json]

Set-up (docs/benchmarks.md says why): UCI Adult, a seeded subsample of n training and k test
instances; the paper's MLP 106-128-128-2 (30,466 parameters; ``--hidden`` for others)
trained by SGD for every method
except ``explicit``, which uses a 106-16-16-2 MLP (2,018 parameters) because the peers build
the dense Hessian with autograd (dattri: ``torch.func.hessian``, captum:
``torch.autograd.functional.hessian`` and a full eigendecomposition): at 30k parameters that
is a 3.5 GiB matrix plus vmapped intermediates many times larger, and a 30k eigendecomposition
alone takes about 14 minutes here. The peers' influence functions use the true Hessian, so
fimo runs with ``hessian="hessian"`` in those comparisons (its default is Gauss-Newton), and
one damping λ for everything (default 0.2: the trained MLP's Hessian has eigenvalues down to
about −0.1, so H + λI is positive definite, which CG needs). Every timing is the minimum of
``--repeats`` runs of the whole call (fitting, caching and scoring), with the runs of fimo and
its peers interleaved and the same number of torch threads for all.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib
import importlib.metadata as metadata
import io
import json
import logging
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("TQDM_DISABLE", "1")  # the peers draw progress bars on stderr

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fimo.data import load_adult
from fimo.methods import get_method
from fimo.methods.projection import Projector
from fimo.models import mlp
from fimo.task import Task
from fimo.training import TrainingSettings, train_final

#: Distribution name → module to import, for each peer.
PEERS = {
    "dattri": "dattri.algorithm",
    "captum": "captum.influence",
    "kronfluence": "kronfluence.analyzer",
    "traker": "trak",
}
#: fimo's Grad-Dot through formed per-instance gradients, timed beside its default (ghost) path.
FIMO_FORMED = "fimo ghost=never"
#: fimo's TRAK with the Kronecker-factored projection from layer factors, beside its default.
FIMO_KRON = "fimo kronecker"
METHODS = ("grad_dot", "explicit", "cg", "lissa", "arnoldi", "ekfac", "datainf", "trak")
#: Training instances per batch wherever a peer takes a batch size (fimo chunks by memory).
BATCH = 500


# -- set-up --------------------------------------------------------------------------------------
@dataclass
class Setup:
    """A trained fimo task and the same data as plain tensors for the peers."""

    task: Task
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_seconds: float
    train_loss: float
    checkpoint: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def model(self) -> nn.Module:
        return self.task.model

    @property
    def n(self) -> int:
        return len(self.x_train)

    @property
    def k(self) -> int:
        return len(self.x_test)

    def train_loader(self, batch_size: int = BATCH) -> DataLoader:
        return DataLoader(TensorDataset(self.x_train, self.y_train), batch_size=batch_size)

    def test_loader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x_test, self.y_test), batch_size=self.k)


def make_setup(hidden, n_train, n_test, epochs, seed, workdir) -> Setup:
    """Sample the data, train the model, and save what a child process needs to rebuild it."""
    rng = np.random.default_rng(seed)
    train_all, test_all = load_adult()
    itr = np.sort(rng.choice(len(train_all), n_train, replace=False))
    ite = np.sort(rng.choice(len(test_all), n_test, replace=False))
    setup = build_setup(hidden, itr, ite, seed, None, workdir)
    t0 = time.perf_counter()
    settings = TrainingSettings(lr=0.05, epochs=epochs, batch_size=128, seed=seed)
    history = train_final(setup.task, settings)
    setup.train_seconds, setup.train_loss = time.perf_counter() - t0, history[-1]
    finish_setup(setup)
    torch.save(setup.model.state_dict(), setup.checkpoint)
    setup.extra["file"] = os.path.join(workdir, f"{setup.task.name}.setup.pt")
    torch.save({"hidden": hidden, "itr": itr, "ite": ite, "seed": seed}, setup.extra["file"])
    return setup


def build_setup(hidden, itr, ite, seed, state, workdir) -> Setup:
    """The task on Adult rows ``itr`` (training) and ``ite`` (test), weights ``state`` (or
    untrained when None)."""
    train_all, test_all = load_adult()
    train, test = train_all[itr], test_all[ite]
    model = mlp(train.inputs.shape[1], 2, hidden=hidden, seed=seed)
    if state is not None:
        model.load_state_dict(state)
    task = Task(model, train, test, name=f"adult-{'-'.join(map(str, hidden))}-n{len(itr)}")
    setup = Setup(
        task,
        train.inputs.clone(),
        train.targets.clone(),
        test.inputs.clone(),
        test.targets.clone(),
        0.0,
        math.nan,
    )
    setup.checkpoint = os.path.join(workdir, f"{task.name}.pt")
    return setup


def finish_setup(setup: Setup) -> None:
    """Eval mode, gradients on, and TRAK's per-row factor (1 − p_t) of the test instances."""
    model = setup.model
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        p = torch.softmax(model(setup.x_test), -1)
    # TRAK's τ is in units of the margin; fimo's scores are in test-loss units: row t is
    # τ_t times (1 − p_t) (docs/methods-kfac-datainf-trak.md)
    setup.extra["q_test"] = (1 - p[torch.arange(setup.k), setup.y_test]).double().numpy()


def load_setup(file: str) -> Setup:
    """The setup that :func:`make_setup` saved to ``file`` (in a child process)."""
    saved = torch.load(file, weights_only=False)
    workdir = os.path.dirname(file)
    name = f"adult-{'-'.join(map(str, saved['hidden']))}-n{len(saved['itr'])}"
    state = torch.load(os.path.join(workdir, f"{name}.pt"))
    setup = build_setup(saved["hidden"], saved["itr"], saved["ite"], saved["seed"], state, workdir)
    finish_setup(setup)
    return setup


def fresh_model(setup: Setup) -> nn.Module:
    """A copy of the trained model, for a peer that wraps or re-loads it."""
    model = copy.deepcopy(setup.model)
    model.eval()
    return model


# -- timing and agreement --------------------------------------------------------------------------
def agreement(peer: np.ndarray, ref: np.ndarray) -> dict:
    """Cosine of the flattened matrices, the worst row cosine, and the least-squares scale."""
    a, b = peer.ravel(), ref.ravel()
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    rows = (peer * ref).sum(1) / (np.linalg.norm(peer, axis=1) * np.linalg.norm(ref, axis=1))
    return {"cosine": cos, "min_row_cosine": float(rows.min()), "scale": float(a @ b / (b @ b))}


def quiet():
    """Silence the peers' logging, warnings and prints while they run."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


# -- fimo -----------------------------------------------------------------------------------------
def fimo_call(setup: Setup, name: str, **settings) -> Callable[[], np.ndarray]:
    method = get_method(name)
    test, train = range(setup.k), range(setup.n)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            scores = method(setup.task, test, train, **settings)
        run.settings = scores.settings
        return scores.values

    return run


# -- dattri --------------------------------------------------------------------------------------
def _dattri_loss(model):
    """Mean cross-entropy in dattri's ``f(params, (x, y))`` form (one instance or a batch).

    Labels are cast back to int64: dattri's LiSSA collate function casts them to float, which
    cross-entropy would read as class probabilities.
    """

    def loss(params, data):
        x, y = data
        x = x.reshape(-1, x.shape[-1])
        out = torch.func.functional_call(model, params, (x,))
        return nn.functional.cross_entropy(out, y.reshape(-1).long())

    return loss


def _dattri_task(setup: Setup, loss=None):
    from dattri.task import AttributionTask

    model = fresh_model(setup)
    return AttributionTask(
        loss_func=loss(model) if loss else _dattri_loss(model),
        model=model,
        checkpoints=copy.deepcopy(setup.model.state_dict()),
    )


def dattri_grad_dot(setup: Setup):
    from dattri.algorithm import TracInAttributor

    def run():
        task = _dattri_task(setup)
        att = TracInAttributor(task, weight_list=torch.ones(1), normalized_grad=False)
        att.projector_kwargs = None  # Grad-Dot: no random projection
        with quiet():
            out = att.attribute(setup.train_loader(), setup.test_loader())
        return out.detach().T.numpy()  # (train, test) → (test, train); same sign and scale

    return run


def _dattri_if(setup: Setup, cls, **kw):
    """An influence attributor over the whole training set as ONE batch.

    dattri's explicit/CG/LiSSA attributors sum an inverse-Hessian product per batch of the
    "full" loader (exact only for one batch) and recompute the test side per training batch,
    so one batch of all n is both correct and fastest. Their scores are
    ∇ℓ_iᵀ(H + λI)⁻¹∇g_t with H the Hessian of the mean loss: n × fimo's.
    """

    def run():
        task = _dattri_task(setup)
        att = cls(task, **kw)
        with quiet():
            att.cache(setup.train_loader(setup.n))
            out = att.attribute(setup.train_loader(setup.n), setup.test_loader())
        return out.detach().T.numpy() / setup.n

    return run


def dattri_explicit(setup, lam):
    from dattri.algorithm import IFAttributorExplicit

    return _dattri_if(setup, IFAttributorExplicit, regularization=lam)


def dattri_cg(setup, lam, max_iter):
    from dattri.algorithm import IFAttributorCG

    return _dattri_if(setup, IFAttributorCG, regularization=lam, max_iter=max_iter)


def dattri_lissa(setup, lam, depth, batch_size, scale):
    from dattri.algorithm import IFAttributorLiSSA

    # dattri's recursion h ← v + (1 − d)h − Hh/s solves (H + s·d·I)h/s = v: d = λ/s
    return _dattri_if(
        setup,
        IFAttributorLiSSA,
        batch_size=batch_size,
        num_repeat=1,
        recursion_depth=depth,
        damping=lam / scale,
        scaling=scale,
    )


def dattri_arnoldi(setup, lam, rank, iterations):
    from dattri.algorithm import IFAttributorArnoldi

    return _dattri_if(
        setup, IFAttributorArnoldi, proj_dim=rank, max_iter=iterations, regularization=lam
    )


def dattri_ekfac(setup, lam):
    from dattri.algorithm import IFAttributorEKFAC

    def run():
        task = _dattri_task(setup)
        att = IFAttributorEKFAC(task, damping=lam)
        with quiet():
            att.cache(setup.train_loader())
            out = att.attribute(setup.train_loader(), setup.test_loader())
        return out.detach().T.numpy() / setup.n

    return run


def dattri_datainf(setup, lam):
    from dattri.algorithm import IFAttributorDataInf

    def run():
        task = _dattri_task(setup)
        att = IFAttributorDataInf(task, regularization=lam)
        # under no_grad (torch.func's gradients ignore it): without, its transform of the test
        # side records autograd graphs, 5.5 GB at n = 1,000 and k = 20, beyond 14 GB at 2,000
        with quiet(), torch.no_grad():
            att.cache(setup.train_loader())  # per-instance gradients, vmap'd per batch
            out = att.attribute(setup.train_loader(), setup.test_loader())
        return out.detach().T.numpy() / setup.n

    return run


def _margin(model):
    """TRAK's output function for one instance: logit_y − logsumexp(other logits)."""

    def f(params, data):
        x, y = data
        logits = torch.func.functional_call(model, params, (x.reshape(1, -1),))[0]
        mine = torch.arange(logits.shape[-1]) == y
        return (logits * mine).sum() - logits.masked_fill(mine, -math.inf).logsumexp(-1)

    return f


def dattri_trak(setup, proj_dim):
    from dattri.algorithm import TRAKAttributor

    def run():
        task = _dattri_task(setup, loss=_margin)
        model = task.get_model()

        # dattri 0.3.0 passes this function the parameters as a dict (its docstring's
        # example decorates it with flatten_func, which then fails on that dict)
        def correct_probability(params, data):
            x, y = data
            logits = torch.func.functional_call(model, params, (x.reshape(1, -1),))[0]
            return torch.softmax(logits, -1)[y]

        att = TRAKAttributor(
            task,
            correct_probability_func=correct_probability,
            projector_kwargs={"proj_dim": proj_dim, "proj_max_batch_size": 32, "proj_seed": 0},
            device="cpu",
        )
        with quiet():
            att.cache(setup.train_loader())
            out = att.attribute(setup.test_loader())
        return out.detach().T.numpy() * setup.extra["q_test"][:, None]

    return run


# -- captum --------------------------------------------------------------------------------------
def _captum_data(setup: Setup):
    return TensorDataset(setup.x_train, setup.y_train)


def captum_grad_dot(setup: Setup):
    from captum.influence import TracInCP

    def run():
        with quiet():
            tracin = TracInCP(
                fresh_model(setup),
                _captum_data(setup),
                checkpoints=[setup.checkpoint],
                loss_fn=nn.CrossEntropyLoss(reduction="sum"),
                batch_size=BATCH,
                sample_wise_grads_per_batch=True,
            )
            # one checkpoint, learning rate 1 (none saved): Σ lr·∇g·∇ℓ = Grad-Dot, (test, train)
            return tracin.influence((setup.x_test, setup.y_test)).numpy()

    return run


def captum_explicit(setup: Setup, lam):
    from captum.influence import NaiveInfluenceFunction

    P = setup.task.num_params

    def run():
        with quiet():
            naive = NaiveInfluenceFunction(
                fresh_model(setup),
                _captum_data(setup),
                checkpoint=setup.checkpoint,
                loss_fn=nn.CrossEntropyLoss(reduction="sum"),
                batch_size=BATCH,
                sample_wise_grads_per_batch=True,
                projection_dim=P,  # every eigenpair: the exact inverse
                hessian_reg=setup.n * lam,
                hessian_inverse_tol=1e-12,
            )
            # captum's H is the Hessian of the SUMMED loss, nH: with regulariser nλ its score
            # ∇gᵀ(nH + nλI)⁻¹∇ℓ is fimo's (1/n)∇gᵀ(H + λI)⁻¹∇ℓ, (test, train)
            return naive.influence((setup.x_test, setup.y_test)).numpy()

    return run


def captum_arnoldi(setup: Setup, lam, rank, iterations):
    from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction

    def run():
        with quiet():
            arnoldi = ArnoldiInfluenceFunction(
                fresh_model(setup),
                _captum_data(setup),
                checkpoint=setup.checkpoint,
                loss_fn=nn.CrossEntropyLoss(reduction="sum"),
                batch_size=BATCH,
                sample_wise_grads_per_batch=True,
                projection_dim=rank,
                arnoldi_dim=iterations,
                hessian_reg=setup.n * lam,  # on the summed-loss Hessian nH, as above
                seed=0,
            )
            return arnoldi.influence((setup.x_test, setup.y_test)).numpy()

    return run


# -- kronfluence ----------------------------------------------------------------------------------
def _kronfluence_task():
    from kronfluence.task import Task as KronTask

    class Classification(KronTask):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            if not sample:
                return nn.functional.cross_entropy(logits, y, reduction="sum")
            # kronfluence fits its factors on pseudo-gradients of this "sampled" loss (one
            # label drawn from the model: the true Fisher, a Monte Carlo estimate). For a
            # 2-class softmax the loss Hessian diag(p) − ppᵀ = p₀p₁(1, −1)(1, −1)ᵀ has rank 1,
            # so the single output vector u = √(p₀p₁)(1, −1) gives the exact Gauss-Newton
            # factors, which is what fimo's ekfac (sampling="exact") computes
            with torch.no_grad():
                p = torch.softmax(logits, -1)
                u = (p[:, 0] * p[:, 1]).sqrt()[:, None] * torch.tensor([1.0, -1.0])
            return (logits * u).sum()

        def compute_measurement(self, batch, model):
            x, y = batch
            return nn.functional.cross_entropy(model(x), y, reduction="sum")

    return Classification()


def kronfluence_scores(setup: Setup, strategy: str, lam: float | None):
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    logging.getLogger("kronfluence").setLevel(logging.ERROR)

    def run():
        ktask = _kronfluence_task()
        model = prepare_model(fresh_model(setup), ktask)  # wraps the Linear layers in place
        train = TensorDataset(setup.x_train, setup.y_train)
        query = TensorDataset(setup.x_test, setup.y_test)
        with tempfile.TemporaryDirectory() as out, quiet():
            analyzer = Analyzer(
                analysis_name="bench",
                model=model,
                task=ktask,
                cpu=True,
                disable_tqdm=True,
                disable_model_save=True,
                output_dir=out,
            )
            analyzer.fit_all_factors(
                factors_name=strategy,
                dataset=train,
                per_device_batch_size=BATCH,
                factor_args=FactorArguments(strategy=strategy),
                overwrite_output_dir=True,
            )
            analyzer.compute_pairwise_scores(
                scores_name="scores",
                factors_name=strategy,
                query_dataset=query,
                train_dataset=train,
                per_device_query_batch_size=setup.k,
                per_device_train_batch_size=BATCH,
                score_args=ScoreArguments(damping_factor=lam),
                overwrite_output_dir=True,
            )
            values = analyzer.load_pairwise_scores("scores")["all_modules"]
        # (query, train) = fimo's orientation; same sign; no 1/n (identity: Grad-Dot itself)
        return values.numpy() / (setup.n if strategy != "identity" else 1)

    return run


# -- traker --------------------------------------------------------------------------------------
def _traker_projector(matrix: torch.Tensor):
    """A traker projector that applies a given matrix (fimo's P), for an exact comparison."""
    from trak.projectors import AbstractProjector, ProjectionType
    from trak.utils import vectorize

    class Fixed(AbstractProjector):
        def __init__(self):
            super().__init__(matrix.shape[0], matrix.shape[1], 0, ProjectionType.rademacher, "cpu")

        def project(self, grads, model_id):
            if isinstance(grads, dict):
                grads = vectorize(grads, device="cpu")
            return grads @ matrix

        def free_memory(self):
            pass

    return Fixed()


def traker_scores(setup: Setup, proj_dim: int, fimo_projection: bool):
    from trak import TRAKer

    logging.getLogger("TRAK").setLevel(logging.ERROR)

    def run():
        model = fresh_model(setup)
        projector = None
        if fimo_projection:
            P = Projector(setup.task.num_params, proj_dim, seed=0).matrix
            projector = _traker_projector(P)
        with tempfile.TemporaryDirectory() as out, quiet():
            traker = TRAKer(
                model=model,
                task="image_classification",  # the margin log(p_y / (1 − p_y)) of any classifier
                train_set_size=setup.n,
                save_dir=out,
                device="cpu",
                proj_dim=proj_dim,
                projector=projector,
                use_half_precision=False,
                logging_level=logging.ERROR,
            )
            state = model.state_dict()
            traker.load_checkpoint(state, model_id=0)
            for x, y in setup.train_loader():
                traker.featurize(batch=(x, y), num_samples=len(x))
            traker.finalize_features()
            traker.start_scoring_checkpoint(
                exp_name="bench", checkpoint=state, model_id=0, num_targets=setup.k
            )
            traker.score(batch=(setup.x_test, setup.y_test), num_samples=setup.k)
            values = np.array(traker.finalize_scores(exp_name="bench"))
        # (train, target) → (target, train); τ → test-loss units by (1 − p_t) per row; the
        # package divides (ΦᵀΦ)⁻¹ by its mean |entry|, so the overall scale stays arbitrary
        return values.T * setup.extra["q_test"][:, None]

    return run


def trak_reference(setup: Setup, proj_dim: int) -> np.ndarray:
    """TRAK with one model in float64 from its definition, with fimo's projection matrix P.

    τ_ti = φ_tᵀ(ΦᵀΦ)⁻¹φ_i·(1 − p_i) with φ = Pᵀ∇(margin), then × (1 − p_t) per row
    (fimo's loss units); an independent check of the float32 implementations.
    """
    model = fresh_model(setup)
    params = {k: v.detach() for k, v in model.named_parameters()}
    margin = torch.func.vmap(torch.func.grad(_margin(model)), in_dims=(None, (0, 0)))
    P = Projector(setup.task.num_params, proj_dim, seed=0).matrix.double()

    def features(x, y):
        g = margin(params, (x, y))
        return torch.cat([v.reshape(len(x), -1) for v in g.values()], 1).double() @ P

    phi = torch.cat([features(x, y) for x, y in setup.train_loader()])
    with torch.no_grad():
        p = torch.softmax(model(setup.x_train).double(), -1)[torch.arange(setup.n), setup.y_train]
    tau = features(setup.x_test, setup.y_test) @ torch.linalg.solve(phi.T @ phi, phi.T)
    return (tau * (1 - p)[None]).numpy() * setup.extra["q_test"][:, None]


# -- the comparisons -------------------------------------------------------------------------------
#: What a comparison can promise: "same" computes fimo's quantity (cosine ≥ 0.99 expected);
#: "stochastic" differs by random draws (LiSSA minibatches, another projection matrix);
#: "different" approximates something else (its cosine is reported and explained).
KINDS = ("same", "stochastic", "different")


@dataclass
class Row:
    method: str
    library: str
    seconds: float | None
    fimo_seconds: float
    kind: str
    agreement: dict | None = None
    note: str = ""
    peak_gb: float | None = None
    fimo_peak_gb: float | None = None

    @property
    def check(self) -> str:
        if self.kind == "same":
            return "ok (≥ 0.99)" if self.agreement["cosine"] >= 0.99 else "BELOW 0.99"
        return f"{self.kind}: reported"


def fimo_settings(name: str, args) -> tuple[str, str, dict]:
    """(model, fimo method, settings) for a method of the benchmark."""
    lam = args.damping
    return {
        "grad_dot": ("big", "grad_dot", {}),
        "explicit": ("small", "explicit", {"damping": lam, "hessian": "hessian"}),
        "cg": ("big", "cg", {"damping": lam, "hessian": "hessian", "tol": 1e-6, "max_iter": 200}),
        "lissa": (
            "big",
            "lissa_hessian",
            {
                "damping": lam,
                "depth": args.lissa_depth,
                "batch_size": args.lissa_batch,
                "scale": args.lissa_scale,
                "seed": 0,
            },
        ),
        "arnoldi": (
            "big",
            "arnoldi",
            {
                "damping": lam,
                "hessian": "hessian",
                "rank": args.rank,
                "iterations": args.iterations,
            },
        ),
        "ekfac": ("big", "ekfac", {"damping": lam, "sampling": "exact"}),
        "datainf": ("big", "datainf", {"damping": lam, "blocks": "module"}),
        "trak": (
            "big",
            "trak",
            {
                "proj_dim": args.proj_dim,
                "damping": 0.0,
                "seed": 0,
                "proj_structure": args.trak_structure,
            },
        ),
    }[name]


def peer_calls(name, setups, args, fimo_record) -> list[tuple[str, Callable, str, str]]:
    """(library, factory of the call, kind, note) for each peer of a method."""
    big, small, lam = setups.get("big"), setups.get("small"), args.damping
    if name == "grad_dot":
        return [
            (
                "dattri",
                lambda: dattri_grad_dot(big),
                "same",
                "TracInAttributor, 1 checkpoint, no projection",
            ),
            ("captum", lambda: captum_grad_dot(big), "same", "TracInCP, 1 checkpoint, lr 1"),
            (
                "kronfluence",
                lambda: kronfluence_scores(big, "identity", None),
                "same",
                "strategy 'identity'",
            ),
        ]
    if name == "explicit":
        return [
            (
                "dattri",
                lambda: dattri_explicit(small, lam),
                "same",
                "IFAttributorExplicit: torch.func.hessian + solve",
            ),
            (
                "captum",
                lambda: captum_explicit(small, lam),
                "same",
                "NaiveInfluenceFunction, all P eigenpairs, hessian_reg = nλ",
            ),
        ]
    if name == "cg":
        iters = max(fimo_record.get("iterations", [100]))
        return [
            (
                "dattri",
                lambda: dattri_cg(big, lam, iters),
                "same",
                f"IFAttributorCG, max_iter = {iters} (fimo's most)",
            ),
        ]
    if name == "lissa":
        return [
            (
                "dattri",
                lambda: dattri_lissa(
                    big, lam, args.lissa_depth, args.lissa_batch, args.lissa_scale
                ),
                "stochastic",
                f"IFAttributorLiSSA, damping = λ/scale = {lam / args.lissa_scale:g}",
            ),
        ]
    if name == "arnoldi":
        return [
            (
                "dattri",
                lambda: dattri_arnoldi(big, lam, args.rank, args.iterations),
                "same",
                "IFAttributorArnoldi",
            ),
            (
                "captum",
                lambda: captum_arnoldi(big, lam, args.rank, args.iterations),
                "same",
                "ArnoldiInfluenceFunction, hessian_reg = nλ",
            ),
        ]
    if name == "ekfac":
        return [
            (
                "kronfluence",
                lambda: kronfluence_scores(big, "ekfac", lam),
                "same",
                "strategy 'ekfac', exact 2-class GN",
            ),
            (
                "dattri",
                lambda: dattri_ekfac(big, lam),
                "different",
                "IFAttributorEKFAC: empirical Fisher",
            ),
        ]
    if name == "datainf":
        return [
            (
                "dattri",
                lambda: dattri_datainf(big, lam),
                "same",
                "IFAttributorDataInf, regularization = λ per layer, no_grad",
            ),
        ]
    if name == "trak":
        return [
            (
                "traker",
                lambda: traker_scores(big, args.proj_dim, False),
                "stochastic",
                "BasicProjector (its own P)",
            ),
            (
                "traker+fimo P",
                lambda: traker_scores(big, args.proj_dim, True),
                "same",
                "fimo's projection matrix",
            ),
            (
                "dattri",
                lambda: dattri_trak(big, args.proj_dim),
                "stochastic",
                "TRAKAttributor (its own P)",
            ),
        ]
    raise KeyError(name)


# -- one call in a child process ----------------------------------------------------------------
@dataclass
class Outcome:
    """What a child process reported: its call's seconds, the child's peak resident memory,
    the scores and fimo's settings record, or why it failed."""

    seconds: float | None
    peak_gb: float
    values: np.ndarray | None = None
    settings: dict = field(default_factory=dict)
    failure: str = ""


def run_child(job: dict, args) -> Outcome:
    """Run one library's call (``job``) in a fresh Python process under an address-space
    limit of ``--mem-limit-gb`` and a wall-clock limit of ``--time-limit`` seconds.

    The child times the call alone (imports and loading the model are outside the timing);
    its peak memory is the kernel's ``ru_maxrss`` of that child (imports included: see the
    ``idle`` row). Out of memory, out of time or an exception is an Outcome with a failure.
    """
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        out = os.path.join(tmp, "out")
        limit = int(args.mem_limit_gb * 2**30)

        def limits():
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            json.dumps({**job, "out": out}),
        ]
        with open(out + ".stderr", "w") as err:
            proc = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=limits,
                start_new_session=True,
            )  # fmt: skip
            deadline, timed_out = time.monotonic() + args.time_limit, False
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
                    pid, status, usage = os.wait4(proc.pid, 0)
                    timed_out = True
                    break
                time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        peak = usage.ru_maxrss / 2**20  # kB → GiB
        report = {}
        if os.path.exists(out + ".json"):
            with open(out + ".json") as fh:
                report = json.load(fh)
        if timed_out:
            return Outcome(None, peak, failure=f"timeout after {args.time_limit:g} s")
        if report.get("oom"):
            return Outcome(None, peak, failure=f"out of memory at {args.mem_limit_gb:g} GB")
        if proc.returncode < 0:
            return Outcome(
                None, peak, failure=f"killed by signal {-proc.returncode} at {peak:.1f} GB"
            )
        if "error" in report or proc.returncode != 0:
            with open(out + ".stderr") as fh:
                tail = fh.read().strip().splitlines()[-1:] or ["no message"]
            return Outcome(None, peak, failure=report.get("error", tail[0])[:160])
        values = np.load(out + ".npy")
        return Outcome(report["seconds"], peak, values, report.get("settings", {}))


def make_call(job: dict, setup: Setup, args) -> Callable[[], np.ndarray]:
    """The call a child runs: fimo's method, a reference computation, or a peer's call."""
    name, lib = job["method"], job["lib"]
    if lib == "fimo":
        _, fimo_name, settings = fimo_settings(name, args)
        return fimo_call(setup, fimo_name, **settings)
    if lib == "idle":  # the child's own footprint: imports, data, model
        return lambda: np.zeros((1, 1))
    if lib == "fimo exact cg":
        lam = args.damping
        return fimo_call(setup, "cg", damping=lam, hessian="hessian", tol=1e-8, max_iter=500)
    if lib == FIMO_FORMED:
        return fimo_call(setup, "grad_dot", ghost="never")
    if lib == "fimo seed 1":
        return fimo_call(setup, "trak", proj_dim=args.proj_dim, damping=0.0, seed=1)
    if lib == FIMO_KRON:
        return fimo_call(
            setup, "trak", proj_dim=args.proj_dim, damping=0.0, seed=0, proj_structure="kronecker"
        )
    if lib == "fimo large k":
        return fimo_call(setup, "trak", proj_dim=args.trak_large_k, damping=0.0, seed=2)
    if lib == "trak reference":
        return lambda: trak_reference(setup, args.proj_dim)
    which = fimo_settings(name, args)[0]
    for peer, make, _, _ in peer_calls(name, {which: setup}, args, job["record"]):
        if peer == lib:
            return make()
    raise KeyError(lib)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception says that an allocation failed (under the address-space limit)."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(
        s in text for s in ("can't allocate memory", "not enough memory", "out of memory")
    )


def child_main(spec: str) -> None:
    """The child process: rebuild the setup, time the call once, write scores and a report."""
    job = json.loads(spec)
    args = argparse.Namespace(**job["args"])
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    out = job["out"]
    try:
        setup = load_setup(job["setup"])
        fn = make_call(job, setup, args)
        # torch.func's first call imports torch._dynamo (about 2 CPU-seconds): dattri imports
        # it with itself, outside the timing, so import it here for every library alike
        importlib.import_module("torch._dynamo")
        gc.collect()
        t0 = time.perf_counter()
        values = np.asarray(fn(), dtype=np.float64)
        seconds = time.perf_counter() - t0
        np.save(out + ".npy", values)
        report = {"seconds": seconds, "settings": getattr(fn, "settings", {})}
        code = 0
    except BaseException as exc:  # report every failure to the parent, which goes on
        report = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        report["oom"] = is_out_of_memory(exc)
        code = 3 if report["oom"] else 1
    with open(out + ".json", "w") as fh:
        json.dump(report, fh, default=str)
    sys.exit(code)


def run_method(name, setups, args, available, rows, extra):
    """Time fimo and the peers for one method, each call in its own child process,
    interleaved, and check their agreement.

    The runs are interleaved (fimo, peer 1, peer 2, fimo, ...) so that a burst of load from
    other jobs on a shared machine is less likely to fall on one library only; each library's
    time is its minimum over the repeats, its memory the largest peak. A library that fails
    (out of memory, out of time, an exception) is not run again and gets a row saying so.
    """
    which, fimo_name, settings = fimo_settings(name, args)
    setup = setups[which]
    base = {"setup": setup.extra["file"], "method": name, "args": child_args(args), "record": {}}
    label = fimo_name if fimo_name == name else f"{name} ({fimo_name})"
    info = extra.setdefault(name, {"fimo_method": fimo_name, "fimo_settings": dict(settings)})
    info["load_before"] = os.getloadavg()
    first = run_child({**base, "lib": "fimo"}, args)
    if first.failure:  # e.g. H + λI indefinite for this damping: say so, go on
        print(f"  fimo {label}: FAILED {first.failure}", flush=True)
        rows.append(Row(name, "fimo", None, math.nan, "same", None, first.failure, first.peak_gb))
        return
    record = first.settings
    for key in ("iterations", "converged", "scale", "kernel_rank", "truncation_bound", "gradients"):
        if key in record:
            info[f"fimo_{key}"] = record[key]
    base["record"] = record
    ref = first.values
    outcomes = {"fimo": [first]}
    meta, missing = {}, []
    for lib, _, kind, note in peer_calls(name, setups, args, record):
        stem = lib.split("+")[0]
        if lib not in args.peers and stem not in args.peers:
            continue
        if stem not in available:
            missing.append((lib, kind))
            continue
        meta[lib] = (kind, note)
        outcomes[lib] = []
    if name == "grad_dot":  # the ghost path's gain, and its rounding against formed gradients
        meta[FIMO_FORMED] = ("same", "fimo's per-instance gradients (vmap), not a peer")
        outcomes[FIMO_FORMED] = []
    if name == "trak" and args.trak_structure == "dense":  # the factored projection's gain
        meta[FIMO_KRON] = ("stochastic", "P_out ⊗ P_in per layer from factors, not a peer")
        outcomes[FIMO_KRON] = []
    failed = {}
    for r in range(args.repeats):
        for lib in outcomes:
            if lib in failed or (lib == "fimo" and r == 0):
                continue
            outcome = run_child({**base, "lib": lib}, args)
            outcomes[lib].append(outcome)
            if outcome.failure:
                failed[lib] = outcome
    info["load_after"] = os.getloadavg()
    fimo_s = min(o.seconds for o in outcomes["fimo"] if o.seconds is not None)
    fimo_gb = max(o.peak_gb for o in outcomes["fimo"])
    print(f"  fimo {label}: {fimo_s:.2f} s, {fimo_gb:.2f} GB", flush=True)
    for lib, kind in missing:
        print(f"  {lib}: not installed, skipped", flush=True)
        rows.append(Row(name, lib, None, fimo_s, kind, None, "not installed"))

    exact = large = None
    if name == "lissa" and args.lissa_exact:  # how close is each estimate to the exact solve?
        exact = reference_values(base, "fimo exact cg", args, info)
        if exact is not None:
            info["fimo_vs_exact"] = agreement(ref, exact)["cosine"]
    if name == "trak" and not args.trak_no_references:
        # the spread between two projections: fimo itself with another seed
        other = reference_values(base, "fimo seed 1", args, info)
        if other is not None:
            info["fimo_seed1_cosine"] = agreement(other, ref)["cosine"]
        # TRAK's formula in float64 with fimo's projection matrix, computed here from scratch
        exact = reference_values(base, "trak reference", args, info)
        if exact is not None:
            info["fimo_vs_float64_reference"] = agreement(ref, exact)["cosine"]
        if args.trak_large_k:  # a proxy for unprojected TRAK: dense P with many more columns
            large = reference_values(base, "fimo large k", args, info)
            if large is not None:
                info["fimo_vs_large_k"] = agreement(ref, large)["cosine"]
        if FIMO_KRON in outcomes and outcomes[FIMO_KRON] and not outcomes[FIMO_KRON][0].failure:
            kron = outcomes[FIMO_KRON][0].settings
            info["kron_projected_dim"] = kron.get("projected_dim")
            info["kron_split"] = kron.get("kronecker_split")
    for lib, (kind, note) in meta.items():
        done = [o for o in outcomes[lib] if not o.failure]
        peak = max(o.peak_gb for o in outcomes[lib])
        if lib in failed:
            why = failed[lib].failure
            print(f"  {lib}: FAILED {why} ({peak:.2f} GB)", flush=True)
            rows.append(Row(name, lib, None, fimo_s, kind, None, why, peak, fimo_gb))
            continue
        values = done[-1].values
        if values.shape != ref.shape:
            note = f"shape {values.shape}"
            rows.append(Row(name, lib, None, fimo_s, kind, None, note, peak, fimo_gb))
            continue
        agree = agreement(values, ref)
        agree["max_rel_diff"] = float(np.abs(values - ref).max() / np.abs(ref).max())
        if name == "lissa" and exact is not None:
            agree["vs_exact"] = agreement(values, exact)["cosine"]
        if name == "trak" and exact is not None:
            agree["vs_float64_reference"] = agreement(values, exact)["cosine"]
        if name == "trak" and large is not None:
            agree["vs_large_k"] = agreement(values, large)["cosine"]
        seconds = min(o.seconds for o in done)
        rows.append(Row(name, lib, seconds, fimo_s, kind, agree, note, peak, fimo_gb))
        print(f"  {lib}: {seconds:.2f} s, {peak:.2f} GB, cosine {agree['cosine']:.4f}", flush=True)


def reference_values(base: dict, lib: str, args, info: dict) -> np.ndarray | None:
    """A reference computation in a child (not timed against the peers), or None with a note."""
    outcome = run_child({**base, "lib": lib}, args)
    if outcome.failure:
        info[f"{lib} failed"] = outcome.failure
        print(f"  {lib}: FAILED {outcome.failure}", flush=True)
        return None
    return outcome.values


def child_args(args) -> dict:
    """The options a child needs (everything but the output file)."""
    return {k: v for k, v in vars(args).items() if k != "json"}


def print_table(rows: list[Row]) -> None:
    head = (
        "method",
        "library",
        "seconds",
        "fimo s",
        "ratio",
        "GB",
        "fimo GB",
        "cosine",
        "min row cos",
        "scale",
        "check",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        gb = "–" if r.peak_gb is None else f"{r.peak_gb:.2f}"
        fimo_gb = "–" if r.fimo_peak_gb is None else f"{r.fimo_peak_gb:.2f}"
        if r.seconds is None:
            print(
                f"| {r.method} | {r.library} | – | {r.fimo_seconds:.2f} | – | {gb} | {fimo_gb} "
                f"| – | – | – | {r.note} |"
            )
            continue
        a = r.agreement
        print(
            f"| {r.method} | {r.library} | {r.seconds:.2f} | {r.fimo_seconds:.2f} | "
            f"{r.seconds / r.fimo_seconds:.2f} | {gb} | {fimo_gb} | {a['cosine']:.4f} | "
            f"{a['min_row_cosine']:.4f} | {a['scale']:.3g} | {r.check} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--damping", type=float, default=0.2)
    parser.add_argument("--rank", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--lissa-depth", type=int, default=250)
    parser.add_argument("--lissa-batch", type=int, default=128)
    parser.add_argument("--lissa-scale", type=float, default=5.0)
    parser.add_argument(
        "--no-lissa-exact",
        dest="lissa_exact",
        action="store_false",
        help="skip LiSSA's reference solve (CG to tol 1e-8): at the large sizes it takes "
        "longer than the time limit",
    )
    parser.add_argument("--proj-dim", type=int, default=512)
    parser.add_argument(
        "--trak-structure",
        default="dense",
        choices=("dense", "kronecker"),
        help="fimo TRAK's proj_structure in its main row (with 'dense', a 'fimo kronecker' "
        "row is timed beside it)",
    )
    parser.add_argument(
        "--trak-no-references",
        action="store_true",
        help="skip TRAK's reference calls (fimo with seed 1, the float64 formula): at a "
        "million parameters each takes as long as fimo's own call",
    )
    parser.add_argument(
        "--trak-large-k",
        type=int,
        default=0,
        help="also score TRAK with a dense projection to this many dimensions (seed 2) and "
        "give every TRAK row's cosine with it (a proxy for unprojected TRAK; 0: skip)",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--peers", nargs="+", default=[*list(PEERS), "traker+fimo P"])
    parser.add_argument("--hidden", nargs="+", type=int, default=[128, 128])
    parser.add_argument("--small-hidden", nargs="+", type=int, default=[16, 16])
    parser.add_argument("--mem-limit-gb", type=float, default=12.0)
    parser.add_argument("--time-limit", type=float, default=900.0)
    parser.add_argument("--json", default=None, help="also write the rows and settings here")
    if sys.argv[1:2] == ["--child"]:
        child_main(sys.argv[2])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    print(
        f"python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, fimo {metadata.version('fimo')}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, load average {load_text()}; every call in a "
        f"child process limited to {args.mem_limit_gb:g} GB and {args.time_limit:g} s"
    )
    available = {}
    for dist, module in PEERS.items():
        try:
            with quiet():
                importlib.import_module(module)
            available[dist] = metadata.version(dist)
            print(f"  peer {dist} {available[dist]}: available")
        except Exception as exc:
            print(f"  peer {dist}: MISSING ({type(exc).__name__}: {exc}); its rows are skipped")
    if not available:
        print(
            "  no peer library is installed here: benchmarks/README.md says how to make their "
            "environment; timing fimo alone"
        )

    with tempfile.TemporaryDirectory() as workdir:
        args.workdir = workdir
        setups = {}
        for key, hidden in (("big", tuple(args.hidden)), ("small", tuple(args.small_hidden))):
            if key == "small" and "explicit" not in args.methods:
                continue
            s = make_setup(hidden, args.n_train, args.n_test, args.epochs, 0, workdir)
            setups[key] = s
            print(
                f"model {s.task.name}: {s.task.num_params:,} parameters, n_train={s.n}, "
                f"n_test={s.k}, trained {args.epochs} epochs in {s.train_seconds:.1f} s "
                f"(last epoch loss {s.train_loss:.3f})",
                flush=True,
            )
        rows: list[Row] = []
        extra: dict = {}
        idle = run_child(
            {"setup": setups["big"].extra["file"], "method": "", "lib": "idle",
             "args": child_args(args), "record": {}},
            args,
        )  # fmt: skip
        extra["idle_child_gb"] = idle.peak_gb
        print(f"a child that only loads the model and data: {idle.peak_gb:.2f} GB", flush=True)
        for name in args.methods:
            print(f"{name}:", flush=True)
            run_method(name, setups, args, available, rows, extra)

    print()
    print_table(rows)
    print()
    print_notes(rows, extra, args)
    extra["load_at_end"] = os.getloadavg()
    print(f"load average at the end: {load_text()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "args": child_args(args),
                    "peers": available,
                    "rows": [
                        {**r.__dict__, "check": r.check if r.agreement else None} for r in rows
                    ],
                    "extra": extra,
                },
                fh,
                indent=1,
                default=str,
            )


def load_text() -> str:
    """The 1-, 5- and 15-minute load averages, as ``uptime`` prints them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def print_notes(rows: list[Row], extra: dict, args) -> None:
    """What the table's cosines mean, and the verdict per method."""
    for r in rows:
        if r.agreement and "vs_exact" in r.agreement:
            print(
                f"{r.method}: {r.library} against the exact solve (CG, tol 1e-8): cosine "
                f"{r.agreement['vs_exact']:.4f}"
            )
    for r in rows:
        if r.library == FIMO_FORMED and r.agreement:
            print(
                f"grad_dot: fimo's default path ({extra['grad_dot'].get('fimo_gradients')}) "
                f"against formed per-instance gradients: max relative difference "
                f"{r.agreement['max_rel_diff']:.2g}, {r.seconds / r.fimo_seconds:.1f}× faster"
            )
    info = extra.get("lissa", {})
    if "fimo_vs_exact" in info:
        print(f"lissa: fimo against the exact solve: cosine {info['fimo_vs_exact']:.4f}")
    info = extra.get("trak", {})
    if "fimo_seed1_cosine" in info:
        print(
            f"trak: fimo with projection seed 1 against seed 0: cosine "
            f"{info['fimo_seed1_cosine']:.4f} (the spread between two projections)"
        )
        print(
            f"trak: fimo kept {info.get('fimo_kernel_rank')} of the {args.proj_dim} kernel "
            f"directions; fimo against TRAK's formula in float64 with fimo's P: cosine "
            f"{info['fimo_vs_float64_reference']:.4f}"
        )
        for r in rows:
            if r.method == "trak" and r.agreement:
                print(
                    f"trak: {r.library} against that float64 reference: cosine "
                    f"{r.agreement['vs_float64_reference']:.4f}"
                )
    if "fimo_vs_large_k" in info:
        print(
            f"trak: against dense TRAK at k = {args.trak_large_k} (seed 2): fimo "
            f"{info['fimo_vs_large_k']:.4f}, "
            + ", ".join(
                f"{r.library} {r.agreement['vs_large_k']:.4f}"
                for r in rows
                if r.method == "trak" and r.agreement and "vs_large_k" in r.agreement
            )
        )
    if "kron_projected_dim" in info:
        print(
            f"trak: {FIMO_KRON} used k = {info['kron_projected_dim']} of {args.proj_dim} "
            f"(k_out × k_in per layer: {info['kron_split']})"
        )
        kron = next((r for r in rows if r.library == FIMO_KRON and r.seconds), None)
        peers = [
            r
            for r in rows
            if r.method == "trak"
            and r.seconds is not None
            and r.library not in ("traker+fimo P", FIMO_KRON)
        ]
        if kron is not None and peers:
            fastest = min(peers, key=lambda r: r.seconds)
            ratio = fastest.seconds / kron.seconds
            print(
                f"trak: {FIMO_KRON} {kron.seconds:.2f} s against the fastest peer "
                f"{fastest.library} {fastest.seconds:.2f} s: peer / fimo = {ratio:.2f} "
                f"(target ≥ 2: {'met' if ratio >= 2 else 'NOT met'})"
            )
    print()
    for name in args.methods:
        timed_rows = [
            r
            for r in rows
            if r.method == name
            and r.seconds is not None
            and r.library not in ("traker+fimo P", FIMO_FORMED, FIMO_KRON)
        ]
        if not timed_rows:
            continue
        fastest = min(timed_rows, key=lambda r: r.seconds)
        ratio = fastest.seconds / fastest.fimo_seconds
        verdict = "fimo is faster" if ratio >= 1 else "fimo is SLOWER"
        target = "met" if ratio >= 2 else "NOT met"
        print(
            f"{name}: fastest peer {fastest.library} {fastest.seconds:.2f} s, fimo "
            f"{fastest.fimo_seconds:.2f} s: {verdict} (peer / fimo = {ratio:.2f}; "
            f"target ≥ 2: {target})"
        )


if __name__ == "__main__":
    main()
