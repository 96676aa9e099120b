"""fimo's attribution methods against the libraries people use, on the same model and data.

Times fimo and the peer libraries (dattri, captum, kronfluence, traker) for the methods they
share (Grad-Dot, explicit influence, CG, LiSSA, Arnoldi, EK-FAC, TRAK with one model), brings
every peer's matrix into fimo's contract (rows = test instances, columns = training
instances, positive = helpful, influence on the 1/n scale of the mean training loss) and
checks that the scores agree (cosine of the whole matrices). Prints one table: method,
library, seconds, fimo's seconds, ratio (peer / fimo: above 1 means fimo is faster), cosine
with fimo, and the least-squares scale of the peer's aligned matrix against fimo's (1 when the
conventions have been aligned; TRAK's package normalises its kernel inverse, so its scale is
arbitrary).

Peers are not dependencies of fimo: run this in their own environment (benchmarks/README.md,
benchmarks/requirements-peers.txt). A peer that cannot be imported is named and skipped.

    /tmp/peers/bin/python benchmarks/methods.py [--repeats 3] [--n-train 2000] [--n-test 20]
        [--damping 0.2] [--methods grad_dot cg ...] [--peers dattri kronfluence ...]
        [--json out.json]

Set-up (docs/benchmarks.md says why): UCI Adult, a seeded subsample of n training and k test
instances; the paper's MLP 106-128-128-2 (30,466 parameters) trained by SGD for every method
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
METHODS = ("grad_dot", "explicit", "cg", "lissa", "arnoldi", "ekfac", "trak")
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
    train_all, test_all = load_adult()
    rng = np.random.default_rng(seed)
    itr = np.sort(rng.choice(len(train_all), n_train, replace=False))
    ite = np.sort(rng.choice(len(test_all), n_test, replace=False))
    train, test = train_all[itr], test_all[ite]
    model = mlp(train.inputs.shape[1], 2, hidden=hidden, seed=seed)
    task = Task(model, train, test, name=f"adult-{'-'.join(map(str, hidden))}")
    t0 = time.perf_counter()
    history = train_final(task, TrainingSettings(lr=0.05, epochs=epochs, batch_size=128, seed=seed))
    seconds = time.perf_counter() - t0
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    setup = Setup(
        task,
        train.inputs.clone(),
        train.targets.clone(),
        test.inputs.clone(),
        test.targets.clone(),
        seconds,
        history[-1],
    )
    setup.checkpoint = os.path.join(workdir, f"{task.name}.pt")
    torch.save(model.state_dict(), setup.checkpoint)
    with torch.no_grad():
        p = torch.softmax(model(setup.x_test), -1)
    # TRAK's τ is in units of the margin; fimo's scores are in test-loss units: row t is
    # τ_t times (1 − p_t) (docs/methods-kfac-datainf-trak.md)
    setup.extra["q_test"] = (1 - p[torch.arange(setup.k), setup.y_test]).double().numpy()
    return setup


def fresh_model(setup: Setup) -> nn.Module:
    """A copy of the trained model, for a peer that wraps or re-loads it."""
    model = copy.deepcopy(setup.model)
    model.eval()
    return model


# -- timing and agreement --------------------------------------------------------------------------
def timed(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    """The minimum wall time of ``repeats`` calls, and the last result."""
    best, out = math.inf, None
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, np.asarray(out, dtype=np.float64)


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
        "trak": ("big", "trak", {"proj_dim": args.proj_dim, "damping": 0.0, "seed": 0}),
    }[name]


def peer_calls(name, setups, args, fimo_record) -> list[tuple[str, Callable, str, str]]:
    """(library, factory of the call, kind, note) for each peer of a method."""
    big, small, lam = setups["big"], setups.get("small"), args.damping
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


def run_method(name, setups, args, available, rows, extra):
    """Time fimo and the peers for one method, interleaved, and check their agreement.

    The runs are interleaved (fimo, peer 1, peer 2, fimo, ...) so that a burst of load from
    other jobs on a shared machine is less likely to fall on one library only; each library's
    time is its minimum over the repeats.
    """
    which, fimo_name, settings = fimo_settings(name, args)
    setup = setups[which]
    fimo_fn = fimo_call(setup, fimo_name, **settings)
    label = fimo_name if fimo_name == name else f"{name} ({fimo_name})"
    info = extra.setdefault(name, {"fimo_method": fimo_name, "fimo_settings": dict(settings)})
    try:  # the first fimo run also sets up the peers' settings (CG's iteration count)
        t0 = time.perf_counter()
        ref = np.asarray(fimo_fn(), dtype=np.float64)
        times = {"fimo": [time.perf_counter() - t0]}
    except Exception as exc:  # e.g. H + λI indefinite for this damping: say so, go on
        print(f"  fimo {label}: FAILED {type(exc).__name__}: {exc}", flush=True)
        return
    record = fimo_fn.settings
    for key in ("iterations", "converged", "scale", "kernel_rank", "truncation_bound"):
        if key in record:
            info[f"fimo_{key}"] = record[key]

    calls = {"fimo": fimo_fn}
    meta, missing = {}, []
    for lib, make, kind, note in peer_calls(name, setups, args, record):
        base = lib.split("+")[0]
        if lib not in args.peers and base not in args.peers:
            continue
        if base not in available:
            missing.append((lib, kind))
            continue
        calls[lib] = make()
        meta[lib] = (kind, note)
        times[lib] = []
    results, failed = {"fimo": ref}, {}
    for r in range(args.repeats):
        for lib, fn in calls.items():
            if lib in failed or (lib == "fimo" and r == 0):
                continue
            gc.collect()
            try:
                t0 = time.perf_counter()
                out = fn()
                times[lib].append(time.perf_counter() - t0)
                results[lib] = np.asarray(out, dtype=np.float64)
            except Exception as exc:  # a peer that fails here is reported, not fatal
                failed[lib] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    fimo_s = min(times["fimo"])
    print(f"  fimo {label}: {fimo_s:.2f} s", flush=True)
    for lib, kind in missing:
        print(f"  {lib}: not installed, skipped", flush=True)
        rows.append(Row(name, lib, None, fimo_s, kind, None, "not installed"))

    if name == "lissa":  # how close is each stochastic estimate to the exact solve?
        exact = fimo_call(
            setup, "cg", damping=args.damping, hessian="hessian", tol=1e-8, max_iter=500
        )()
        info["fimo_vs_exact"] = agreement(ref, exact)["cosine"]
    if name == "trak":
        # the spread between two projections: fimo itself with another seed
        other = fimo_call(setup, "trak", proj_dim=args.proj_dim, damping=0.0, seed=1)()
        info["fimo_seed1_cosine"] = agreement(other, ref)["cosine"]
        # TRAK's formula in float64 with fimo's projection matrix, computed here from scratch
        exact = trak_reference(setup, args.proj_dim)
        info["fimo_vs_float64_reference"] = agreement(ref, exact)["cosine"]
    for lib, (kind, note) in meta.items():
        if lib in failed:
            print(f"  {lib}: FAILED {failed[lib]}", flush=True)
            rows.append(Row(name, lib, None, fimo_s, kind, None, f"failed: {failed[lib]}"))
            continue
        values = results[lib]
        if values.shape != ref.shape:
            rows.append(Row(name, lib, None, fimo_s, kind, None, f"shape {values.shape}"))
            continue
        agree = agreement(values, ref)
        if name == "lissa":
            agree["vs_exact"] = agreement(values, exact)["cosine"]
        if name == "trak":
            agree["vs_float64_reference"] = agreement(values, exact)["cosine"]
        seconds = min(times[lib])
        rows.append(Row(name, lib, seconds, fimo_s, kind, agree, note))
        print(f"  {lib}: {seconds:.2f} s, cosine {agree['cosine']:.4f}", flush=True)


def print_table(rows: list[Row]) -> None:
    head = (
        "method",
        "library",
        "seconds",
        "fimo s",
        "ratio",
        "cosine",
        "min row cos",
        "scale",
        "check",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        if r.seconds is None:
            print(
                f"| {r.method} | {r.library} | – | {r.fimo_seconds:.2f} | – | – | – | – | {r.note} |"
            )
            continue
        a = r.agreement
        print(
            f"| {r.method} | {r.library} | {r.seconds:.2f} | {r.fimo_seconds:.2f} | "
            f"{r.seconds / r.fimo_seconds:.2f} | {a['cosine']:.4f} | {a['min_row_cosine']:.4f} | "
            f"{a['scale']:.3g} | {r.check} |"
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
    parser.add_argument("--proj-dim", type=int, default=512)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--peers", nargs="+", default=[*list(PEERS), "traker+fimo P"])
    parser.add_argument("--json", default=None, help="also write the rows and settings here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    print(
        f"python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, fimo {metadata.version('fimo')}"
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
        setups = {}
        for key, hidden in (("big", (128, 128)), ("small", (16, 16))):
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
        for name in args.methods:
            print(f"{name}:", flush=True)
            run_method(name, setups, args, available, rows, extra)

    print()
    print_table(rows)
    print()
    print_notes(rows, extra, args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "args": vars(args),
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


def print_notes(rows: list[Row], extra: dict, args) -> None:
    """What the table's cosines mean, and the verdict per method."""
    for r in rows:
        if r.agreement and "vs_exact" in r.agreement:
            print(
                f"{r.method}: {r.library} against the exact solve (CG, tol 1e-8): cosine "
                f"{r.agreement['vs_exact']:.4f}"
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
    print()
    for name in args.methods:
        timed_rows = [
            r
            for r in rows
            if r.method == name and r.seconds is not None and r.library != "traker+fimo P"
        ]
        if not timed_rows:
            continue
        fastest = min(timed_rows, key=lambda r: r.seconds)
        verdict = "fimo is faster" if fastest.seconds >= fastest.fimo_seconds else "fimo is SLOWER"
        print(
            f"{name}: fastest peer {fastest.library} {fastest.seconds:.2f} s, fimo "
            f"{fastest.fimo_seconds:.2f} s: {verdict} (peer / fimo = "
            f"{fastest.seconds / fastest.fimo_seconds:.2f})"
        )


if __name__ == "__main__":
    main()
