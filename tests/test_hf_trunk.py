"""A frozen trunk of a transformers encoder computed once (fimo.hf_trunk): on a tiny random
BERT built from a config (float64, offline), the cached head gives the losses, per-instance
gradients and final training of the whole model run by transformers itself."""

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from fimo.lora import with_lora
from fimo.methods.gradients import gradient_matrix
from fimo.training import TrainingSettings, train_final
from test_hf_models import loop_gradients, make_task, tiny_bert, token_data

TOP = ["bert.encoder.layer.1.*", "classifier.*"]


def own_losses(model, data):
    """Each instance's cross-entropy from transformers' own forward of the whole model (its
    2-D mask path), in eval mode."""
    model.eval()
    with torch.no_grad():
        logits = model(**data.inputs.as_dict()).logits
    return torch.nn.functional.cross_entropy(logits, data.targets, reduction="none")


def test_the_head_on_the_cached_trunk_gives_the_whole_models_losses_and_gradients():
    train, test = token_data(9, seed=1), token_data(4, seed=2)
    task = make_task(tiny_bert(), train, test, trainable=TOP)
    assert task.trunk_length() == 1  # the embeddings and layer 0 are frozen
    head = task.with_cached_trunk()
    assert head is not task and head.trainable == task.trainable
    assert sorted(head.train.inputs.keys()) == ["attention_mask", "inputs_embeds", "token_type_ids"]
    assert head.train.inputs["inputs_embeds"].shape == (9, 9, 16)  # (n, T, hidden)
    names = [n for n, _ in head.model.named_parameters()]
    assert not any(n.startswith(("bert.embeddings.", "bert.encoder.layer.0.")) for n in names)
    named = dict(task.model.named_parameters())
    for n, p in head.model.named_parameters():  # shared, not copied: training the head trains
        assert p is named[n]
    for data, cached in ((train, head.train), (test, head.test)):
        with head.eval_mode():
            got = head.losses(head.params(), cached.inputs, cached.targets)
        expected = own_losses(task.model, data)
        np.testing.assert_allclose(got.detach().numpy(), expected.numpy(), rtol=1e-12)
    G = gradient_matrix(head, head.train, range(9), chunk_size=4)
    expected = loop_gradients(task, train)
    assert float(expected.norm()) > 1e-3
    torch.testing.assert_close(G, expected, rtol=1e-9, atol=1e-14)


def test_final_training_on_the_cached_trunk_equals_training_the_whole_model():
    data = token_data(12, seed=3)
    settings = TrainingSettings(optimizer="adam", lr=0.01, epochs=2, batch_size=5)
    results = []
    for cached in (False, True):
        task = make_task(tiny_bert(), data, data, trainable=TOP)
        history = train_final(task.with_cached_trunk() if cached else task, settings)
        results.append((history, {n: p.detach().clone() for n, p in task.model.named_parameters()}))
    (history, plain), (history_cached, trained) = results
    np.testing.assert_allclose(history_cached, history, rtol=1e-10)
    start = dict(tiny_bert().named_parameters())  # the same seed: the initial weights
    assert (plain["classifier.weight"] - start["classifier.weight"]).abs().max() > 1e-3
    assert torch.equal(plain["bert.encoder.layer.0.output.dense.weight"],
                       start["bert.encoder.layer.0.output.dense.weight"])  # fmt: skip
    for name, value in plain.items():
        torch.testing.assert_close(trained[name], value, rtol=1e-9, atol=1e-13)


def test_where_the_trunk_applies():
    data = token_data(6, seed=4)

    def length(trainable, model=None):
        return make_task(model or tiny_bert(), data, data, trainable=trainable).trunk_length()

    assert length(["classifier.*"]) == 2  # the whole encoder is the trunk
    assert length(["bert.encoder.layer.0.output.*", "classifier.*"]) == 0
    assert length(["bert.embeddings.*", "bert.encoder.layer.1.*"]) == 0
    assert length(None) == 0  # everything trained
    lora_all = with_lora(make_task(tiny_bert(), data, data), rank=2, targets=["*"])
    assert lora_all.trunk_length() == 0 and lora_all.with_cached_trunk() is lora_all
    lora_top = with_lora(make_task(tiny_bert(), data, data), rank=2, targets=["layer.1.*"])
    assert lora_top.trunk_length() == 1
    head = lora_top.with_cached_trunk()
    with head.eval_mode():
        got = head.losses(head.params(), head.train.inputs, head.train.targets).detach()
    with lora_top.eval_mode():
        expected = lora_top.losses(lora_top.params(), data.inputs, data.targets).detach()
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-12)


def test_the_whole_encoder_as_trunk_keeps_the_pooler_in_the_head():
    train = token_data(7, seed=5)
    task = make_task(tiny_bert(), train, train, trainable=["classifier.*"])
    head = task.with_cached_trunk()
    assert any(n.startswith("bert.pooler.") for n, _ in head.model.named_parameters())
    with head.eval_mode():
        got = head.losses(head.params(), head.train.inputs, head.train.targets).detach()
    np.testing.assert_allclose(got.numpy(), own_losses(task.model, train).numpy(), rtol=1e-12)
    torch.testing.assert_close(
        gradient_matrix(head, head.train, range(7)), loop_gradients(task, train), rtol=1e-9,
        atol=1e-14,
    )  # fmt: skip
