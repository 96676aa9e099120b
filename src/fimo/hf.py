"""Hugging Face ``transformers`` models as fimo models, without re-implementing them.

A task calls a model through a *model call* (:class:`ModelCall`): how inputs become the
forward's arguments and how the forward's result becomes the outputs the loss reads. For a
``transformers`` model (:class:`HuggingFaceCall`), inputs held in :class:`fimo.data.Fields` go
in as keyword arguments and the outputs are the result's ``.logits``.

``torch.func.vmap`` fails inside transformers' own attention-mask code (it branches on the
mask's values, e.g. "is every token real?"). So the 2-D ``attention_mask`` (1 = token,
0 = padding) is turned into the 4-D additive float mask that the attention layers use,
``(B, 1, T, T)``: 0 where a query may attend to a key, the dtype's most negative number
where not (padding keys; later keys too in a causal model). transformers passes a 4-D mask
through unchanged, so the mask is plain data under ``vmap``. The conversion is checked once
against the model's own 2-D path (:meth:`HuggingFaceCall.verify`); a model for which it does
not agree keeps its own mask and gets per-instance gradients from a loop instead.
"""

from __future__ import annotations

import sys
import warnings

import torch
from torch import nn

from fimo.data.base import Fields


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is a ``transformers`` model (checked without importing transformers:
    if it was never imported, no model of it can exist).

    >>> is_hf_model(nn.Linear(2, 2))
    False
    """
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(model, transformers.PreTrainedModel)


def is_causal(model: nn.Module) -> bool:
    """Whether the model's attention is causal (a decoder such as GPT-2): transformers marks
    each attention module with ``is_causal``.

    >>> is_causal(nn.Linear(2, 2))
    False
    """
    return any(getattr(m, "is_causal", False) is True for m in model.modules())


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype, causal: bool) -> torch.Tensor:
    """The 4-D additive attention mask (B, 1, T, T) of a 2-D ``attention_mask`` (B, T): 0 where
    query t may attend to key s (s is a token, and s ≤ t when ``causal``), else the most
    negative number of ``dtype``.

    >>> additive_mask(torch.tensor([[1, 1, 0]]), torch.float32, causal=True)[0, 0] < 0
    tensor([[False,  True,  True],
            [False, False,  True],
            [False, False,  True]])
    """
    T = attention_mask.shape[-1]
    allowed = (attention_mask != 0)[..., None, None, :].expand(*attention_mask.shape[:-1], 1, T, T)
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=allowed.device).tril()
    return (~allowed).to(dtype) * torch.finfo(dtype).min


class ModelCall:
    """How a task calls a plain torch model: a tensor as the one positional argument, a
    :class:`Fields` as keyword arguments; the outputs are what the forward returns.

    >>> ModelCall().arguments(torch.zeros(2, 3), torch.float32)[0][0].shape
    torch.Size([2, 3])
    """

    def arguments(self, inputs, dtype: torch.dtype) -> tuple[tuple, dict]:
        """(positional, keyword) arguments of the forward for ``inputs``.

        >>> args, kwargs = ModelCall().arguments(Fields({"x": torch.zeros(2, 3)}), torch.float32)
        >>> args, list(kwargs)
        ((), ['x'])
        """
        if isinstance(inputs, Fields):
            return (), inputs.as_dict()
        return (inputs,), {}

    def outputs(self, result) -> torch.Tensor:
        """The tensor the loss reads from the forward's result: here the result itself.

        >>> ModelCall().outputs(torch.ones(1))
        tensor([1.])
        """
        return result

    def verify(self, model: nn.Module, inputs, dtype: torch.dtype) -> str | None:
        """Nothing to check for a plain model (see :meth:`HuggingFaceCall.verify`).

        >>> ModelCall().verify(nn.Linear(2, 2), torch.zeros(1, 2), torch.float32) is None
        True
        """
        return None


class HuggingFaceCall(ModelCall):
    """How a task calls a ``transformers`` model: keyword inputs with the attention mask as a
    4-D float mask (module docstring), outputs ``result.logits``.

    >>> call = HuggingFaceCall(causal=False)
    >>> inputs = Fields({"input_ids": torch.tensor([[7, 8, 0]]), "attention_mask": torch.tensor([[1, 1, 0]])})
    >>> _, kwargs = call.arguments(inputs, torch.float32)
    >>> kwargs["attention_mask"].shape
    torch.Size([1, 1, 3, 3])
    """

    def __init__(self, causal: bool):
        self.causal = causal
        self.mask_as_data = True

    def arguments(self, inputs, dtype: torch.dtype) -> tuple[tuple, dict]:
        """Keyword arguments, the 2-D ``attention_mask`` as a 4-D float mask (while
        ``mask_as_data``).

        >>> mask = torch.tensor([[1, 0]])
        >>> _, kw = HuggingFaceCall(causal=False).arguments(Fields({"attention_mask": mask}), torch.float32)
        >>> (kw["attention_mask"][0, 0] == 0).tolist()  # both queries see the first key only
        [[True, False], [True, False]]
        """
        args, kwargs = super().arguments(inputs, dtype)
        mask = kwargs.get("attention_mask")
        if self.mask_as_data and mask is not None and mask.dim() == 2:
            kwargs["attention_mask"] = additive_mask(mask, dtype, self.causal)
        return args, kwargs

    def outputs(self, result) -> torch.Tensor:
        """The result's ``.logits`` (a model without them: its first output, e.g. the hidden
        states of a bare encoder).

        >>> HuggingFaceCall(causal=False).outputs((torch.zeros(1, 2),)).shape
        torch.Size([1, 2])
        """
        return result.logits if hasattr(result, "logits") else result[0]

    def verify(self, model: nn.Module, inputs, dtype: torch.dtype) -> str | None:
        """Check the 4-D mask against the model's own 2-D path on ``inputs`` (a few
        instances, eval mode); if they disagree, keep the model's own mask from now on and
        return a note saying so (per-instance gradients then come from a loop).

        >>> class Own(nn.Module):  # a model that ignores the mask agrees with either form
        ...     def forward(self, input_ids, attention_mask):
        ...         return (input_ids.double(),)
        >>> inputs = Fields({"input_ids": torch.ones(1, 2), "attention_mask": torch.ones(1, 2)})
        >>> HuggingFaceCall(causal=True).verify(Own(), inputs, torch.float64) is None
        True
        """
        if not (isinstance(inputs, Fields) and "attention_mask" in inputs):
            return None
        with torch.no_grad():
            own = self.outputs(model(**inputs.as_dict()))
            args, kwargs = self.arguments(inputs, dtype)
            ours = self.outputs(model(*args, **kwargs))
        real = inputs["attention_mask"] != 0
        if own.dim() == real.dim() + 1:  # per-token outputs: compare the real tokens only
            own, ours = own[real], ours[real]
        if own.shape == ours.shape and torch.allclose(own, ours, rtol=1e-4, atol=1e-5):
            return None
        self.mask_as_data = False
        return (
            f"{type(model).__name__}: its attention does not take a 4-D float mask as the same "
            "mask (a sliding window, an ALiBi bias, ...); it keeps its own 2-D mask and "
            "per-instance gradients come from a loop"
        )


def eager_attention(model: nn.Module) -> str | None:
    """Switch a ``transformers`` model to its eager (plain torch) attention, which ``vmap``
    maps over with the 4-D mask, and return a note if it was another implementation (SDPA
    works too but falls back to a slow per-instance loop inside ``vmap``).

    >>> eager_attention(nn.Linear(2, 2)) is None
    True
    """
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        return None
    model.set_attn_implementation("eager")
    return f"{type(model).__name__}: attention switched from {current!r} to 'eager' for vmap"


def model_call(model: nn.Module) -> ModelCall:
    """The model call for ``model``: a :class:`HuggingFaceCall` (attention switched to eager,
    :func:`eager_attention`, with a warning saying so) for a ``transformers`` model, else a
    plain :class:`ModelCall`. The task then checks the call on a few instances
    (:meth:`HuggingFaceCall.verify`).

    >>> type(model_call(nn.Linear(2, 2))).__name__
    'ModelCall'
    """
    if not is_hf_model(model):
        return ModelCall()
    note = eager_attention(model)
    if note:
        warnings.warn(f"fimo: {note}", stacklevel=3)
    return HuggingFaceCall(causal=is_causal(model))
