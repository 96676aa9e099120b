"""EK-FAC influence (George et al. 2018; Grosse et al. 2023): the Gauss-Newton Hessian of the
mean training loss, block-diagonal over layers, each block in an eigenvalue-corrected
Kronecker-factored eigenbasis (paper §3: "GN + layer-block-diagonal + Kronecker eigenbasis").

For a layer with input a (a constant 1 appended when its bias is trainable) and output s, the
per-instance gradient is G = δ ãᵀ with δ = ∂ℓ/∂s. The Gauss-Newton block is
E_i[Σ_c vec(δ_ic ã_iᵀ) vec(δ_ic ã_iᵀ)ᵀ], where δ_ic = J_sᵀ u_ic are pseudo-gradients: the
output-space vectors u_ic factor the loss Hessian, Σ_c u_ic u_icᵀ = H_ℓ(z_i). K-FAC
approximates the block by S ⊗ A with A = E[ã ãᵀ], S = E[Σ_c δ δᵀ]; EK-FAC keeps the
eigenvectors Q_S, Q_A and replaces the eigenvalues by the exact second moments in that basis,
Λ = E[Σ_c (Q_Sᵀ G_c Q_A)²], so that Ĥ and the Gauss-Newton block have the same diagonal in
the Kronecker eigenbasis. Then per layer

    (Ĥ + λI)⁻¹ V = Q_S [(Q_Sᵀ V Q_A) / (Λ + λ)] Q_Aᵀ,
    score[t, i] = (1/n) Σ_layers ⟨(Ĥ + λI)⁻¹ ∇g(z_t), ∇ℓ(z_i)⟩,

which estimates g(z_t) after further training without z_i minus with it (positive = helpful;
kronfluence's pairwise scores have the same sign, without the 1/n).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import hessian, vmap

from fimo.errors import InputError, check_choice
from fimo.methods.common import (
    hessian_subset,
    score_matrix,
    seed_value,
    subset_record,
    test_and_train,
)
from fimo.methods.cost import CostProbe
from fimo.methods.damping import resolve_damping
from fimo.methods.gradients import grad_chunk_size, gradient_matrix
from fimo.scores import Scores
from fimo.task import LossKind, Task

#: Layer types EK-FAC factors; a trainable parameter anywhere else is an error. Also
#: transformers' ``Conv1D`` (GPT-2's attention and MLP), a Linear layer with its weight stored
#: transposed (:func:`is_transposed_linear`).
SUPPORTED = (nn.Linear, nn.Conv2d)
SAMPLING = ("auto", "exact", "sample")
#: With ``sampling="auto"``, exact pseudo-gradients are used up to this many model outputs.
MAX_EXACT_OUTPUTS = 10


@dataclass
class LayerFactors:
    """The EK-FAC factors of one layer.

    The layer gradient is viewed as a matrix (d_out, d_a): the weight gradient reshaped to
    (d_out, -1) (for a weight stored transposed, ``transposed``: (d_in, d_out), transposed
    first), then the bias gradient as a last column. ``A`` (d_a, d_a) and ``S``
    (d_out, d_out) are the Kronecker factors, ``QA``/``QS`` their eigenvectors and ``eigen``
    (d_out, d_a) the corrected eigenvalues Λ.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    >>> task = Task(model, data, data)
    >>> layer = fit_ekfac(task)[0][1]  # the last Linear: d_out = 2, d_a = 4 + 1 (bias)
    >>> G = torch.randn(3, task.num_params, dtype=torch.float64)
    >>> mats = layer.gather(G)
    >>> mats.shape
    torch.Size([3, 2, 5])
    >>> flat = torch.zeros_like(G); layer.scatter(mats, flat)
    >>> torch.equal(flat[:, 16:], G[:, 16:])
    True
    >>> H = layer.hessian()  # (Ĥ + λI)⁻¹ by the eigenbasis equals the dense solve
    >>> dense = torch.linalg.solve(H + 0.1 * torch.eye(10, dtype=H.dtype), mats.reshape(3, 10).T).T
    >>> torch.allclose(layer.precondition(mats, 0.1).reshape(3, 10), dense)
    True
    """

    name: str
    module: nn.Module
    weight: slice | None
    bias: slice | None
    d_out: int
    A: torch.Tensor | None = None
    S: torch.Tensor | None = None
    QA: torch.Tensor | None = None
    QS: torch.Tensor | None = None
    eigen: torch.Tensor | None = None
    transposed: bool = False

    def gather(self, flat: torch.Tensor) -> torch.Tensor:
        """This layer's part of flattened gradients (k, P), as matrices (k, d_out, d_a).

        A Linear(2, 1) whose weight takes columns 0–1 of the flat vector and its bias column 2:

        >>> layer = LayerFactors("0", nn.Linear(2, 1), slice(0, 2), slice(2, 3), d_out=1)
        >>> layer.gather(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])).tolist()
        [[[1.0, 2.0, 3.0]], [[4.0, 5.0, 6.0]]]
        """
        parts = []
        if self.weight is not None and self.transposed:
            parts.append(flat[:, self.weight].reshape(len(flat), -1, self.d_out).mT)
        elif self.weight is not None:
            parts.append(flat[:, self.weight].reshape(len(flat), self.d_out, -1))
        if self.bias is not None:
            parts.append(flat[:, self.bias].reshape(len(flat), self.d_out, 1))
        return torch.cat(parts, dim=-1)

    def scatter(self, mats: torch.Tensor, flat: torch.Tensor) -> None:
        """Write matrices (k, d_out, d_a) into this layer's part of ``flat`` (k, P).

        >>> layer = LayerFactors("0", nn.Linear(2, 1), slice(1, 3), slice(3, 4), d_out=1)
        >>> flat = torch.zeros(1, 4)
        >>> layer.scatter(torch.tensor([[[7.0, 8.0, 9.0]]]), flat)
        >>> flat.tolist()  # column 0 belongs to another layer
        [[0.0, 7.0, 8.0, 9.0]]
        """
        if self.weight is not None:
            width = mats.shape[-1] - (self.bias is not None)
            weight = mats[..., :width].mT if self.transposed else mats[..., :width]
            flat[:, self.weight] = weight.reshape(len(mats), -1)
        if self.bias is not None:
            flat[:, self.bias] = mats[..., -1]

    def precondition(self, mats: torch.Tensor, damping: float) -> torch.Tensor:
        """(Ĥ + λI)⁻¹ applied to matrices (k, d_out, d_a); directions with Λ + λ = 0 give 0.

        With identity eigenvectors Ĥ is diag(Λ), so each entry is divided by Λ + λ:

        >>> layer = LayerFactors("0", nn.Linear(2, 1), slice(0, 2), slice(2, 3), d_out=1,
        ...                      QA=torch.eye(3), QS=torch.eye(1),
        ...                      eigen=torch.tensor([[1.0, 3.0, -1.0]]))
        >>> layer.precondition(torch.ones(1, 1, 3), damping=1.0).tolist()  # 1/2, 1/4, Λ + λ = 0
        [[[0.5, 0.25, 0.0]]]
        """
        rotated = self.QS.T @ mats @ self.QA
        denom = self.eigen + damping
        inverse = torch.where(denom > 0, 1 / denom.clamp_min(1e-300), torch.zeros_like(denom))
        return self.QS @ (rotated * inverse) @ self.QA.T

    def hessian(self) -> torch.Tensor:
        """Ĥ of this layer as a dense (d_out·d_a)² matrix, in the row-major layout of ``gather``.

        >>> layer = LayerFactors("0", nn.Linear(1, 2, bias=False), slice(0, 2), None, d_out=2,
        ...                      QA=torch.eye(1), QS=torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
        ...                      eigen=torch.tensor([[2.0], [5.0]]))
        >>> layer.hessian().tolist()  # the eigenvalues swapped by QS
        [[5.0, 0.0], [0.0, 2.0]]
        """
        basis = torch.kron(self.QS, self.QA)
        return basis @ torch.diag(self.eigen.reshape(-1)) @ basis.T


def _offsets(task: Task) -> dict[str, slice]:
    offsets, start = {}, 0
    for name, p in task.params().items():
        offsets[name] = slice(start, start + p.numel())
        start += p.numel()
    return offsets


def find_layers(task: Task) -> list[LayerFactors]:
    """The layers with trainable parameters (empty factors); InputError for unsupported ones.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    >>> task = Task(model, data, data)
    >>> [(layer.name, layer.d_out, layer.A) for layer in find_layers(task)]
    [('0', 4, None), ('2', 2, None)]
    """
    offsets = _offsets(task)
    covered, layers = set(), []
    for prefix, module in task.model.named_modules():
        own = {
            f"{prefix}.{n}" if prefix else n: n
            for n, _ in module.named_parameters(recurse=False)
            if (f"{prefix}.{n}" if prefix else n) in offsets
        }
        if not own:
            continue
        transposed = is_transposed_linear(module)
        if not (isinstance(module, SUPPORTED) or transposed):
            raise InputError(
                f"ekfac: layer {prefix or '<root>'!r} of type {type(module).__name__} has "
                f"trainable parameters {sorted(own)}, but EK-FAC supports only "
                f"{', '.join(t.__name__ for t in SUPPORTED)} and transformers' Conv1D; freeze "
                "it (Task(trainable=...)) or use another method (datainf, trak, grad_dot, cg)"
            )
        if isinstance(module, nn.Conv2d):
            _check_conv(prefix, module)
        names = {short: full for full, short in own.items()}
        layers.append(
            LayerFactors(
                prefix,
                module,
                offsets.get(names.get("weight")),
                offsets.get(names.get("bias")),
                module.weight.shape[1 if transposed else 0],
                transposed=transposed,
            )
        )
        covered.update(own)
    missing = sorted(set(offsets) - covered)
    if missing:  # a trainable tensor that no module owns directly (e.g. a shared parameter)
        raise InputError(f"ekfac: trainable parameters {missing} belong to no supported layer")
    return layers


def is_transposed_linear(module: nn.Module) -> bool:
    """Whether ``module`` is transformers' ``Conv1D`` (GPT-2's layers): y = x W + b with the
    weight W stored as (d_in, d_out), a Linear layer whose weight is transposed. Told without
    importing transformers: if its module is not loaded, no model holds one.

    >>> is_transposed_linear(nn.Linear(2, 3))
    False
    """
    loaded = sys.modules.get("transformers.pytorch_utils")
    return loaded is not None and isinstance(module, loaded.Conv1D)


def _check_conv(name: str, conv: nn.Conv2d) -> None:
    problem = None
    if conv.groups != 1:
        problem = f"groups={conv.groups}"
    elif conv.padding_mode != "zeros":
        problem = f"padding_mode={conv.padding_mode!r}"
    elif isinstance(conv.padding, str) and conv.padding == "same":
        if any(d * (k - 1) % 2 for d, k in zip(conv.dilation, conv.kernel_size, strict=True)):
            problem = "padding='same' with an even kernel (asymmetric padding)"
    if problem:
        raise InputError(
            f"ekfac: Conv2d layer {name!r} has {problem}; EK-FAC supports groups=1, zero "
            "padding; use another method (datainf, trak, grad_dot, cg)"
        )


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0)
        return tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size, strict=True))
    return tuple(conv.padding)


def _layer_inputs(layer: LayerFactors, a: torch.Tensor) -> torch.Tensor:
    """Layer inputs as (B, T, d_a): T positions (1 for a Linear on vectors), bias 1 appended."""
    module = layer.module
    if isinstance(module, nn.Conv2d):
        cols = nn.functional.unfold(
            a, module.kernel_size, module.dilation, _conv_padding(module), module.stride
        )
        a = cols.transpose(1, 2)
    else:
        a = a.reshape(a.shape[0], -1, a.shape[-1])
    parts = [a] if layer.weight is not None else []
    if layer.bias is not None:
        parts.append(torch.ones_like(a[..., :1]))
    return torch.cat(parts, dim=-1)


def _layer_deltas(layer: LayerFactors, d: torch.Tensor) -> torch.Tensor:
    """Gradients w.r.t. the layer output as (B, T, d_out)."""
    if isinstance(layer.module, nn.Conv2d):
        return d.reshape(d.shape[0], d.shape[1], -1).transpose(1, 2)
    return d.reshape(d.shape[0], -1, d.shape[-1])


class _Capture:
    """Forward hooks that record each layer's input and add a zero tensor to its output.

    The gradient of the model output w.r.t. that zero tensor is δ, the backpropagated vector
    at the layer's pre-activations, for every instance of the batch at once.
    """

    def __init__(self, layers: list[LayerFactors]):
        self.layers = layers
        self.records: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __enter__(self):
        self.handles = [
            layer.module.register_forward_hook(self._hook(layer.name)) for layer in self.layers
        ]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def _hook(self, name):
        def hook(module, args, output):
            if name in self.records:
                raise InputError(
                    f"ekfac: layer {name!r} is called more than once in a forward pass; "
                    "EK-FAC needs each layer used once (use another method)"
                )
            zero = torch.zeros_like(output, requires_grad=True)
            self.records[name] = (args[0].detach(), zero)
            return output + zero

        return hook


def _output_vectors(task: Task, out: torch.Tensor, y: torch.Tensor, mode: str, noise):
    """Vectors u (C, B, d_o) with Σ_c u_c u_cᵀ = H_ℓ (exact) or E[u uᵀ] = H_ℓ (sample)."""
    tail = out.shape[1:]  # the loss takes the outputs in their own shape (B, T, V) for tokens
    out = out.detach().reshape(out.shape[0], -1)
    batch, d_o = out.shape
    if task.loss_kind == LossKind.CROSS_ENTROPY:
        p = torch.softmax(out, dim=-1)
        if mode == "exact":
            # diag(p) − ppᵀ has rank C − 1 (its null space is the all-ones direction), so C − 1
            # vectors suffice: half the work for binary classification. Two classes in closed
            # form, u = √(p₀p₁)·(1, −1); more through the eigenvectors of each instance's matrix.
            if d_o == 2:
                sign = torch.tensor([1.0, -1.0], dtype=out.dtype)
                return ((p[:, 0] * p[:, 1]).sqrt()[:, None] * sign)[None]
            h = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
            w, v = torch.linalg.eigh(h)  # ascending: the zero eigenvalue comes first
            u = v[:, :, 1:] * w[:, 1:].clamp_min(0).sqrt()[:, None, :]  # (B, C, C − 1)
            return u.permute(2, 0, 1)
        # a label drawn from the model's own predictive distribution (inverse CDF of a uniform)
        label = (p.cumsum(-1) < noise[:, :1]).sum(-1).clamp(max=d_o - 1)
        return (nn.functional.one_hot(label, d_o).to(out.dtype) - p)[None]
    if task.loss_kind == LossKind.SQUARED_ERROR:  # fimo's squared error Σ(out − y)² has H_ℓ = 2I
        if mode == "exact":
            eye = torch.eye(d_o, dtype=out.dtype) * 2**0.5
            return eye[:, None, :].expand(d_o, batch, d_o)
        return (2**0.5 * noise)[None]

    # any other loss: factor its output-space Hessian (negative curvature clipped to 0)
    def one(o, t):
        return task.loss_fn(o.reshape(1, *tail), t[None])[0]

    h = vmap(hessian(one))(out, y).reshape(batch, d_o, d_o)
    w, v = torch.linalg.eigh((h + h.transpose(1, 2)) / 2)
    root = v * w.clamp_min(0).sqrt()[:, None, :]  # (B, d_o, C): columns are u_c
    if mode == "exact":
        return root.permute(2, 0, 1)
    return torch.einsum("boc,bc->bo", root, noise)[None]


def _pseudo_gradients(task, layers, x, y, mode, noise):
    """Per layer: inputs ã (B, T, d_a) and pseudo-gradients δ (C, B, T, d_out)."""
    with torch.enable_grad(), _Capture(layers) as cap:
        out = task.outputs(task.params(), x)
        u = _output_vectors(task, out, y, mode, noise)
        zeros = [cap.records[layer.name][1] for layer in layers if layer.name in cap.records]
        missing = [layer.name for layer in layers if layer.name not in cap.records]
        if missing:
            raise InputError(f"ekfac: layers {missing} are not used in the forward pass")
        deltas = [[] for _ in layers]
        for c in range(len(u)):
            grads = torch.autograd.grad(
                out,
                zeros,
                grad_outputs=u[c].reshape(out.shape),
                retain_graph=c < len(u) - 1,
                allow_unused=True,
            )
            for k, (layer, g) in enumerate(zip(layers, grads, strict=True)):
                g = torch.zeros_like(zeros[k]) if g is None else g
                deltas[k].append(_layer_deltas(layer, g))
    return [
        (_layer_inputs(layer, cap.records[layer.name][0]), torch.stack(d))
        for layer, d in zip(layers, deltas, strict=True)
    ]


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def fit_ekfac(
    task: Task,
    *,
    sampling: str = "auto",
    seed: int = 0,
    chunk_size: int | None = None,
    indices=None,
) -> tuple[list[LayerFactors], str]:
    """Fit the EK-FAC factors over the training instances ``indices`` (default: all);
    returns (layers, resolved sampling).

    Two passes over the training data: A, S and their eigenvectors, then the eigenvalue
    correction Λ (with the same sampled labels, if sampling).

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    >>> task = Task(model, data, data)
    >>> layers, mode = fit_ekfac(task)
    >>> [(layer.name, tuple(layer.eigen.shape)) for layer in layers], mode
    ([('0', (4, 4)), ('2', (2, 5))], 'exact')
    """
    check_choice("ekfac sampling", sampling, SAMPLING)
    layers = find_layers(task)
    x_all, y_all = task.train.inputs, task.train.targets
    if indices is not None:
        sel = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        x_all, y_all = x_all[sel], y_all[sel]
    n = len(x_all)
    params = task.params()
    dtype = next(iter(params.values())).dtype
    with torch.no_grad():
        d_o = task.outputs(params, x_all[:1]).reshape(1, -1).shape[1]
    mode = sampling if sampling != "auto" else ("exact" if d_o <= MAX_EXACT_OUTPUTS else "sample")
    noise = None
    if mode == "sample":  # drawn once, so that both passes see the same labels
        gen = torch.Generator().manual_seed(int(seed))
        if task.loss_kind == LossKind.CROSS_ENTROPY:
            noise = torch.rand(n, 1, generator=gen, dtype=dtype)
        else:
            noise = torch.randn(n, d_o, generator=gen, dtype=dtype)
    vectors = d_o if mode == "exact" else 1  # an upper bound (cross-entropy needs C − 1)
    size = chunk_size or grad_chunk_size(task, x_all, params, outputs=vectors)
    probe = CostProbe(f"two passes over {n} training instances", 2 * n, "lower hessian_samples")
    with task.eval_mode():
        for layer in layers:
            layer.A, layer.S = 0, 0
        for rows in _chunks(n, size):
            got = _pseudo_gradients(
                task, layers, x_all[rows], y_all[rows], mode, None if noise is None else noise[rows]
            )
            for layer, (a, d) in zip(layers, got, strict=True):
                layer.A = layer.A + torch.einsum("btd,bte->de", a, a) / n
                layer.S = layer.S + torch.einsum("cbto,cbtp->op", d, d) / n
            probe.tick(rows.stop - rows.start)
        for layer in layers:
            layer.QA = torch.linalg.eigh(layer.A)[1]
            layer.QS = torch.linalg.eigh(layer.S)[1]
            layer.eigen = 0
        for rows in _chunks(n, size):
            got = _pseudo_gradients(
                task, layers, x_all[rows], y_all[rows], mode, None if noise is None else noise[rows]
            )
            for layer, (a, d) in zip(layers, got, strict=True):
                a_rot, d_rot = a @ layer.QA, d @ layer.QS
                if a.shape[1] == 1:  # (Q_Sᵀ δ ãᵀ Q_A)² factorises for a single position
                    lam = torch.einsum("cbo,bd->od", d_rot[:, :, 0] ** 2, a_rot[:, 0] ** 2)
                else:
                    g = torch.einsum("cbto,btd->cbod", d_rot, a_rot)
                    lam = (g**2).sum(dim=(0, 1))
                layer.eigen = layer.eigen + lam / n
            probe.tick(rows.stop - rows.start)
    return layers, mode


def ekfac(
    task: Task,
    test,
    train,
    *,
    progress=None,
    damping: float | None = None,
    damping_factor: float = 100.0,
    sampling: str = "auto",
    chunk_size: int | None = None,
    seed: int = 0,
    hessian_samples: int | None = None,
    hessian_seed: int = 0,
) -> Scores:
    """EK-FAC influence: (1/n)·∇g(z_t)ᵀ(Ĥ_EKFAC + λI)⁻¹∇ℓ(z_i), positive = helpful.

    Ĥ is fitted on all training instances, or on ``hessian_samples`` of them drawn with
    ``hessian_seed`` (:func:`fimo.methods.common.hessian_subset`, the draw of the influence
    family and DataInf), which then also give the damping base. ``damping`` is an absolute λ;
    otherwise λ = ``damping_factor`` × the mean squared per-instance gradient entry (paper §4;
    kronfluence uses 0.1 × the mean corrected eigenvalue instead, recorded as
    ``mean_eigenvalue``).
    ``sampling``: ``"exact"`` expands the loss Hessian over all outputs (the exact Gauss-Newton
    moments), ``"sample"`` draws one label per instance from the model (the true Fisher),
    ``"auto"`` is exact up to 10 outputs. Supports trainable ``nn.Linear``, ``nn.Conv2d``
    and transformers' ``Conv1D`` (GPT-2's layers, a Linear layer with its weight transposed).

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    >>> task = Task(torch.nn.Linear(3, 2).double(), data, data)
    >>> scores = ekfac(task, test=range(4), train=range(20))
    >>> scores.values.shape, scores.settings["layers"], scores.settings["sampling"]
    ((4, 20), [''], 'exact')
    """
    test, train = test_and_train(task, test, train, "ekfac")
    n = len(task.train)
    hessian_seed = seed_value("hessian_seed", hessian_seed)
    subset = hessian_subset(n, hessian_samples, hessian_seed)
    fit_on = None if len(subset) == n else subset
    layers, mode = fit_ekfac(
        task, sampling=sampling, seed=seed, chunk_size=chunk_size, indices=fit_on
    )
    lam, record = resolve_damping(task, damping, damping_factor, indices=fit_on)
    g_test = gradient_matrix(task, task.test, test, measure=True, chunk_size=chunk_size)
    pre = torch.zeros_like(g_test)
    for layer in layers:
        layer.scatter(layer.precondition(layer.gather(g_test), lam), pre)
    out = score_matrix(task, train, pre, progress=progress, chunk_size=chunk_size)
    eigen = torch.cat([layer.eigen.reshape(-1) for layer in layers])
    settings = {
        **record,
        "damping_factor": damping_factor if damping is None else None,
        "sampling": mode,
        "seed": seed,
        "chunk_size": chunk_size,
        "layers": [layer.name for layer in layers],
        "mean_eigenvalue": float(eigen.mean()),
        "zero_curvature_directions": int(((eigen + lam) <= 0).sum()),
        "n_hessian": len(subset),
        **subset_record(n, hessian_samples, hessian_seed, subset),
    }
    return Scores(out, test, train, "ekfac", settings, units="test-loss change (1/n scale)")
