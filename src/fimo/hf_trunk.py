"""The frozen trunk of a Hugging Face encoder computed once: embeddings and lower layers.

For fimo's own ``nn.Sequential`` models :meth:`fimo.Task.with_cached_trunk` runs the leading
modules that hold no trainable parameter once and trains on their outputs. A ``transformers``
model is one module, so the same idea is applied here to a BERT-like encoder (a base model
with ``embeddings`` and ``encoder.layer``, as ``BertModel``, ``RobertaModel``): when the
embeddings and the first k encoder layers hold no trainable parameter (e.g. only the top
layer and the head are trained), the hidden states entering layer k are computed once, and
the task runs on a *head*: the same model with the embeddings replaced by a pass-through and
only layers k, k+1, … kept, fed the cached states as ``inputs_embeds`` (with the other
fields, e.g. ``attention_mask``, unchanged). The head shares its modules with the model, so
training the head trains the model; parameter names are kept.

It applies only when the model's forward takes ``inputs_embeds`` and the data hold
``input_ids``; LoRA on every layer leaves no frozen trunk (docs/own-model.md).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable

import torch
from torch import nn

from fimo.data.base import ArrayDataset, Fields


def encoder_layers(model: nn.Module) -> tuple[str, nn.Module, nn.ModuleList] | None:
    """(prefix of the base model's parameter names, base model, its encoder layers) of a
    BERT-like ``transformers`` model, or None for a model of another shape.

    >>> encoder_layers(nn.Linear(2, 2)) is None
    True
    """
    base = getattr(model, "base_model", None)
    if not isinstance(base, nn.Module):
        return None
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not isinstance(
        getattr(base, "embeddings", None), nn.Module
    ):
        return None
    prefix = "" if base is model else f"{model.base_model_prefix}."
    if prefix and getattr(model, model.base_model_prefix, None) is not base:
        return None
    return prefix, base, layers


def frozen_layers(model: nn.Module, trainable, inputs) -> int:
    """How many leading encoder layers (with the embeddings) hold no trainable parameter, when
    the trunk can be cached: a BERT-like model (:func:`encoder_layers`) whose forward takes
    ``inputs_embeds``, fed ``input_ids``; 0 otherwise.

    >>> frozen_layers(nn.Linear(2, 2), ["weight"], None)
    0
    """
    found = encoder_layers(model)
    if found is None or not isinstance(inputs, Fields) or "input_ids" not in inputs:
        return 0
    if "inputs_embeds" not in inspect.signature(model.forward).parameters:
        return 0
    prefix, _, layers = found
    if any(name.startswith(f"{prefix}embeddings.") for name in trainable):
        return 0
    for k, key in enumerate(layers._modules):
        if any(name.startswith(f"{prefix}encoder.layer.{key}.") for name in trainable):
            return k
    return len(layers)


class PassThrough(nn.Module):
    """Stands in for the embeddings of a head (no parameters).

    >>> list(PassThrough().parameters())
    []
    """

    def forward(self, inputs_embeds=None, **ignored):
        """``inputs_embeds`` (the cached hidden states) as they are; the embeddings' other
        arguments (ids, positions, token types) are ignored.

        >>> PassThrough()(input_ids=None, inputs_embeds=torch.ones(1, 2)).tolist()
        [[1.0, 1.0]]
        """
        return inputs_embeds


def head_model(model: nn.Module, first: int) -> nn.Module:
    """``model`` without its embeddings and its first ``first`` encoder layers: a copy of the
    module tree down to the encoder that shares every other module (and so every parameter)
    with ``model``; the kept layers keep their names (``encoder.layer.5``).

    >>> import transformers
    >>> config = transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2,
    ...     num_attention_heads=2, intermediate_size=16)
    >>> model = transformers.BertForSequenceClassification(config)
    >>> head = head_model(model, 1)
    >>> next(head.named_parameters())[0], type(head.bert.embeddings).__name__
    ('bert.encoder.layer.1.attention.self.query.weight', 'PassThrough')
    >>> head.classifier.weight is model.classifier.weight, len(model.bert.encoder.layer)
    (True, 2)
    """
    prefix, base, layers = encoder_layers(model)
    kept = nn.ModuleList()
    for key in list(layers._modules)[first:]:
        kept.add_module(key, layers[int(key)])
    encoder = _shallow(base.encoder)
    encoder.layer = kept
    new_base = _shallow(base)
    new_base.encoder, new_base.embeddings = encoder, PassThrough()
    if not prefix:
        return new_base
    head = _shallow(model)
    setattr(head, model.base_model_prefix, new_base)
    return head


def _shallow(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with its own table of submodules (the submodules shared)."""
    out = copy.copy(module)
    out._modules = dict(module._modules)
    return out


class _Stop(Exception):
    """Raised by the capture hook: the hidden states are taken, the rest is not computed."""


def trunk_states(model: nn.Module, first: int, inputs: Fields, batch: int = 256, progress=None):
    """The hidden states entering encoder layer ``first`` (the encoder's output when
    ``first`` is the number of layers) for every instance of ``inputs``, in batches of
    ``batch``, without gradients (the caller sets eval mode); ``progress(done)`` after each
    batch. The layers above ``first`` are not run.

    >>> import transformers
    >>> config = transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2,
    ...     num_attention_heads=2, intermediate_size=16)
    >>> model = transformers.BertModel(config).eval()
    >>> ids = torch.tensor([[2, 5, 7], [3, 4, 0]])
    >>> inputs = Fields({"input_ids": ids, "attention_mask": (ids > 0).long()})
    >>> states = trunk_states(model, 2, inputs, batch=1)
    >>> torch.allclose(states, model(**inputs).last_hidden_state)
    True
    """
    _, base, layers = encoder_layers(model)
    taken: list[torch.Tensor] = []

    def before(module, args):
        taken.append(args[0])
        raise _Stop

    def after(module, args, output):
        taken.append(output[0])
        raise _Stop

    if first < len(layers):
        handle = layers[first].register_forward_pre_hook(before)
    else:
        handle = base.encoder.register_forward_hook(after)
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), batch):
                part = {k: v[start : start + batch] for k, v in inputs.items()}
                try:
                    base(**part)
                except _Stop:
                    pass
                if progress is not None:
                    progress(min(start + batch, len(inputs)))
    finally:
        handle.remove()
    return torch.cat(taken)


def cached_datasets(
    model: nn.Module,
    first: int,
    train: ArrayDataset,
    test: ArrayDataset,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ArrayDataset, ArrayDataset]:
    """``train`` and ``test`` with ``input_ids`` replaced by the trunk's hidden states
    (``inputs_embeds``, :func:`trunk_states`), the other fields, targets and info kept;
    ``progress(done, total)`` over both.

    >>> import transformers
    >>> config = transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2,
    ...     num_attention_heads=2, intermediate_size=16)
    >>> model = transformers.BertModel(config).eval()
    >>> ids = torch.tensor([[2, 5, 7], [3, 4, 0]])
    >>> data = ArrayDataset({"input_ids": ids, "attention_mask": (ids > 0).long()},
    ...                     torch.tensor([0, 1]))
    >>> train, test = cached_datasets(model, 1, data, data)
    >>> list(train.inputs.keys()), tuple(train.inputs["inputs_embeds"].shape)
    (['inputs_embeds', 'attention_mask'], (2, 3, 8))
    """
    total = len(train) + len(test)
    out = []
    for offset, data in ((0, train), (len(train), test)):
        tick = None if progress is None else (lambda done, o=offset: progress(o + done, total))
        states = trunk_states(model, first, data.inputs, progress=tick)
        fields = {k: v for k, v in data.inputs.items() if k != "input_ids"}
        out.append(ArrayDataset(Fields({"inputs_embeds": states, **fields}), data.targets,
                                None, data.info))  # fmt: skip
    return out[0], out[1]
