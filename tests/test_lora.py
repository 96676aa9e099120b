"""LoRA further training (fimo.lora) against independent computations in float64: the model
at B = 0, the adapters' gradients from the weight gradient, further training against a plain
loop with hand-written adapters (forward hooks) and torch.optim, Grad-Dot against dot products
of hand-computed adapter gradients, the refusals, and the run configuration."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import grad

from fimo import ArrayDataset, Task
from fimo.errors import InputError
from fimo.experiments.build import build_task, further_task, load_data
from fimo.experiments.config import from_dict
from fimo.further.engine import FurtherSettings, further_train_seed
from fimo.lora import LoraLinear, check_lora_settings, lora_targets, with_lora
from fimo.methods import grad_dot
from fimo.text import EncoderLayer, FirstTokenHead, TokenEmbedding

HIDDEN = 8


def tiny_text_task(n: int = 13, dtype=torch.float64) -> Task:
    """Two BERT layers (no dropout) on random token ids with padding, a head on [CLS]."""
    torch.manual_seed(0)
    model = nn.Sequential(
        TokenEmbedding(vocab=20, hidden=HIDDEN, max_positions=8, dropout=0.0),
        EncoderLayer(HIDDEN, heads=2, intermediate=16, dropout=0.0, attn_dropout=0.0),
        EncoderLayer(HIDDEN, heads=2, intermediate=16, dropout=0.0, attn_dropout=0.0),
        FirstTokenHead(HIDDEN, classes=2),
    ).to(dtype)
    g = torch.Generator().manual_seed(1)

    def ids(m):
        x = torch.randint(1, 20, (m, 6), generator=g)
        lengths = torch.randint(2, 7, (m,), generator=g)
        return torch.where(torch.arange(6) < lengths[:, None], x, 0)

    train = ArrayDataset(ids(n), torch.randint(0, 2, (n,), generator=g))
    test = ArrayDataset(ids(5), torch.randint(0, 2, (5,), generator=g))
    return Task(model, train, test)


class HookedAdapters:
    """Hand-written LoRA: plain tensors A, B per layer, added to the Linear layer's output by a
    forward hook on the original model (no module swap, no fimo code)."""

    def __init__(self, model: nn.Module, A: dict, scale: float):
        self.model, self.scale = model, scale
        for p in model.parameters():
            p.requires_grad_(False)
        self.A = {n: a.clone().requires_grad_(True) for n, a in A.items()}
        self.B = {
            n: torch.zeros(
                model.get_submodule(n).out_features, a.shape[0], dtype=a.dtype
            ).requires_grad_(True)
            for n, a in A.items()
        }
        for name in A:
            model.get_submodule(name).register_forward_hook(self._hook(name))

    def _hook(self, name):
        def add(module, args, out):
            return out + self.scale * (args[0] @ self.A[name].T) @ self.B[name].T

        return add

    def params(self) -> list[torch.Tensor]:
        return [t for n in self.A for t in (self.A[n], self.B[n])]


def fimo_A(lora: Task) -> dict:
    """The A matrices fimo drew, by layer name."""
    return {
        name: m.lora_A.weight.detach().clone()
        for name, m in lora.model.named_modules()
        if isinstance(m, LoraLinear)
    }


def fresh_copy(task: Task) -> nn.Module:
    import copy

    return copy.deepcopy(task.model)


@pytest.mark.parametrize("targets", [["query", "value"], ["*"], ["1.output.dense", "classifier"]])
def test_outputs_equal_the_final_model_at_the_start(targets):
    task = tiny_text_task()
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    lora = with_lora(task, rank=3, targets=targets, alpha=6.0, seed=4)
    x = task.test.inputs
    with torch.no_grad():
        assert torch.equal(lora.model.eval()(x), task.model.eval()(x))
    swapped = [n for n, m in lora.model.named_modules() if isinstance(m, LoraLinear)]
    assert swapped == lora_targets(task.model, targets) and swapped
    assert set(lora.trainable) == {f"{n}.lora_{k}.weight" for n in swapped for k in "AB"}
    assert lora.num_params == sum(
        3 * (m.in_features + m.out_features) for m in map(lora.model.get_submodule, swapped)
    )
    # the original task is left as it was, also when the new one changes dtype
    lora.to(dtype=torch.float32)
    assert task.trainable == tuple(n for n, _ in task.model.named_parameters())
    for k, v in task.model.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == before[k].dtype


def test_A_is_drawn_from_the_seed_in_model_order_and_B_is_zero():
    task = tiny_text_task()
    lora = with_lora(task, rank=4, targets=["query", "value"], seed=7)
    g = torch.Generator().manual_seed(7)
    names = ["1.attention.self.query", "1.attention.self.value"]
    names += ["2.attention.self.query", "2.attention.self.value"]
    for name in names:
        layer = lora.model.get_submodule(name)
        expected = torch.randn(4, HIDDEN, generator=g).double() / 2.0  # N(0, 1/rank)
        assert torch.equal(layer.lora_A.weight, expected)
        assert torch.equal(layer.lora_B.weight, torch.zeros(HIDDEN, 4, dtype=torch.float64))
        assert layer.scale == 1.0  # alpha defaults to rank


def test_adapter_gradients_at_the_start_are_the_weight_gradient_projected_by_A():
    task = tiny_text_task()
    rank, alpha = 3, 12.0  # scale 4
    lora = with_lora(task, rank=rank, targets=["query", "value", "classifier"], alpha=alpha)
    x, y = task.train.inputs, task.train.targets
    # G: the weight gradients of the original model, by autograd on its parameters
    model = fresh_copy(task).eval()
    loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
    weights = {n: model.get_submodule(n).weight for n in fimo_A(lora)}
    G = dict(zip(weights, torch.autograd.grad(loss, list(weights.values())), strict=True))
    with lora.eval_mode():
        got = grad(lambda p: lora.losses(p, x, y).sum())(lora.params())
    for name, A in fimo_A(lora).items():
        expected = (alpha / rank) * G[name] @ A.T
        assert G[name].abs().max() > 1e-3  # a real gradient
        torch.testing.assert_close(got[f"{name}.lora_B.weight"], expected, rtol=1e-10, atol=0)
        assert torch.count_nonzero(got[f"{name}.lora_A.weight"]) == 0


def torch_optimizer(settings: FurtherSettings, params):
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
    return torch.optim.AdamW(
        params, lr=settings.lr, betas=settings.betas, eps=settings.eps,
        weight_decay=settings.weight_decay,
    )  # fmt: skip


def hooked_model(task, lora):
    """The original model with hand-written adapters; (model, the adapters' tensors)."""
    adapters = HookedAdapters(fresh_copy(task).eval(), fimo_A(lora), lora_scale(lora))
    return adapters.model, adapters.params()


def peft_model(task, lora):
    """The original model with peft's LoRA layers, A set to fimo's draw (B = 0 in both)."""
    peft = pytest.importorskip("peft")
    A = fimo_A(lora)
    (rank,) = {a.shape[0] for a in A.values()}
    config = peft.LoraConfig(
        r=rank, lora_alpha=lora_scale(lora) * rank, target_modules=list(A), lora_dropout=0.0
    )
    model = peft.inject_adapter_in_model(config, fresh_copy(task)).eval()
    with torch.no_grad():
        for name, a in A.items():
            model.get_submodule(name).lora_A["default"].weight.copy_(a)
    return model, [p for p in model.parameters() if p.requires_grad]


def reference_run(task, lora, settings, seed, leave_out, adapted=hooked_model):
    """One run of LoRA further training as a plain loop: the original model with adapters
    (``adapted``), torch.optim over A and B, the reference code's batch order (drop scheme)."""
    model, params = adapted(task, lora)
    opt = torch_optimizer(settings, params)
    gen = torch.Generator().manual_seed(seed)
    X, Y = task.train.inputs, task.train.targets
    out = []
    for _ in range(settings.epochs):
        order = torch.randperm(len(X), generator=gen).tolist()
        if leave_out is not None:
            order.remove(leave_out)
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            loss = nn.functional.cross_entropy(model(X[batch]), Y[batch])
            opt.zero_grad()
            loss.backward()
            if settings.clip_norm:
                torch.nn.utils.clip_grad_norm_(params, settings.clip_norm)
            opt.step()
        with torch.no_grad():
            logits = model(task.test.inputs)
            out.append(
                nn.functional.cross_entropy(logits, task.test.targets, reduction="none").numpy()
            )
    return np.stack(out)


def lora_scale(lora: Task) -> float:
    (scale,) = {m.scale for m in lora.model.modules() if isinstance(m, LoraLinear)}
    return scale


@pytest.mark.parametrize(
    "case",
    [
        dict(optimizer="sgd", lr=0.5, momentum=0.9, weight_decay=0.01),
        dict(optimizer="adamw", lr=0.02, weight_decay=0.1, clip_norm=0.5),
    ],
    ids=["sgd", "adamw"],
)
def test_further_training_equals_a_plain_loop_with_hand_written_adapters(case):
    task = tiny_text_task()
    lora = with_lora(task, rank=2, targets=["*"], alpha=4.0, seed=1)
    settings = FurtherSettings(epochs=2, batch_size=4, scheme="drop", **case)
    res = further_train_seed(lora, settings, seed=5, left_out=np.array([6]), test=np.arange(5))
    full = reference_run(task, lora, settings, 5, None)
    without = reference_run(task, lora, settings, 5, 6)
    np.testing.assert_allclose(res.loss_full, full, rtol=1e-10, atol=0)
    np.testing.assert_allclose(res.loss_without[..., 0], without, rtol=1e-10, atol=0)
    # the adapters moved the model, and leaving instance 6 out changed the result
    with torch.no_grad():
        logits = task.model(task.test.inputs)
    start = nn.functional.cross_entropy(logits, task.test.targets, reduction="none").numpy()
    assert np.abs(full[-1] - start).max() > 1e-3
    assert np.abs(without - full).max() > 1e-6


def test_further_training_equals_peft_in_a_plain_loop():
    task = tiny_text_task()
    lora = with_lora(task, rank=3, targets=["query", "value", "dense"], alpha=6.0, seed=2)
    settings = FurtherSettings(
        optimizer="adamw", lr=0.02, weight_decay=0.1, epochs=1, batch_size=4, scheme="drop"
    )
    res = further_train_seed(lora, settings, seed=1, left_out=np.array([2]), test=np.arange(5))
    full = reference_run(task, lora, settings, 1, None, adapted=peft_model)
    without = reference_run(task, lora, settings, 1, 2, adapted=peft_model)
    np.testing.assert_allclose(res.loss_full, full, rtol=1e-10, atol=0)
    np.testing.assert_allclose(res.loss_without[..., 0], without, rtol=1e-10, atol=0)
    assert np.abs(without - full).max() > 1e-6


def per_instance_adapter_grads(task, lora, X, Y) -> torch.Tensor:
    """Rows: each instance's gradient with respect to every A and B, by autograd, one by one."""
    adapters = HookedAdapters(fresh_copy(task).eval(), fimo_A(lora), lora_scale(lora))
    rows = []
    for k in range(len(X)):
        loss = nn.functional.cross_entropy(adapters.model(X[k : k + 1]), Y[k : k + 1])
        grads = torch.autograd.grad(loss, adapters.params())
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def test_grad_dot_under_lora_is_the_dot_product_of_adapter_gradients():
    task = tiny_text_task()
    lora = with_lora(task, rank=2, targets=["query", "value", "dense"], seed=3)
    train = np.array([0, 4, 7, 12])
    scores = grad_dot(lora, np.arange(5), train)
    G_test = per_instance_adapter_grads(task, lora, task.test.inputs, task.test.targets)
    G_train = per_instance_adapter_grads(
        task, lora, task.train.inputs[train], task.train.targets[train]
    )
    expected = (G_test @ G_train.T).numpy()
    assert np.abs(expected).max() > 1e-4
    np.testing.assert_allclose(scores.values, expected, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize(
    "targets, message",
    [
        (["quary"], "target 'quary' selects no Linear layer (did you mean"),
        (["attention"], "target 'attention' names a _Attention, not a Linear layer; Linear"),
        (["*LayerNorm"], "target '*LayerNorm' selects no Linear layer"),
        (["query", "nothing"], "target 'nothing' selects no Linear layer"),
    ],
)
def test_targets_that_select_no_linear_layer_are_refused(targets, message):
    task = tiny_text_task()
    with pytest.raises(
        InputError, match=re.escape("Linear layers: '1.attention.self.query'")
    ) as info:
        with_lora(task, rank=2, targets=targets)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_single_string_of_targets_is_refused():
    with pytest.raises(InputError, match=r"^with_lora\.targets: got 'query'; expected a non-empty"):
        with_lora(tiny_text_task(), rank=2, targets="query")


def test_a_model_with_adapters_is_refused():
    lora = with_lora(tiny_text_task(), rank=2, targets=["query"])
    with pytest.raises(InputError, match="already holds LoRA adapters"):
        with_lora(lora, rank=2, targets=["value"])


@pytest.mark.parametrize(
    "table, message",
    [
        ({"rank": 0, "targets": ["q"]}, "further.lora.rank: got 0; must be a whole number ≥ 1"),
        ({"rank": 2.5, "targets": ["q"]}, "further.lora.rank: got 2.5"),
        ({"rank": True, "targets": ["q"]}, "further.lora.rank: got True"),
        ({"rank": 4, "targets": []}, "further.lora.targets: got []; expected a non-empty list"),
        ({"rank": 4, "targets": "query"}, "further.lora.targets: got 'query'"),
        ({"rank": 4, "targets": ["q", 3]}, "further.lora.targets: got ['q', 3]"),
        ({"rank": 4}, "further.lora: targets is missing"),
        ({"rnak": 4, "targets": ["q"]}, "unknown key 'rnak' (did you mean 'rank'?)"),
        ({"rank": 4, "targets": ["q"], "alpha": 0}, "further.lora.alpha: got 0"),
        ({"rank": 4, "targets": ["q"], "seed": -1}, "further.lora.seed: got -1"),
        (8, "further.lora: got 8; expected a table"),
    ],
)
def test_lora_settings_are_checked_at_the_door(table, message):
    with pytest.raises(InputError, match=r"^further\.lora") as info:
        from_dict({"further": {"lora": table}})
    assert message in str(info.value)
    with pytest.raises(InputError, match=r"^with_lora"):
        check_lora_settings(table, "with_lora")


def test_the_configuration_carries_lora_to_the_further_task():
    raw = {
        "data": {"dataset": "concrete", "n_train": 12},
        "model": {"hidden": [4, 3]},
        "further": {"lora": {"rank": 2, "targets": ["*"], "alpha": 1.0, "seed": 5}},
    }
    config = from_dict(raw)
    again = from_dict(__import__("tomllib").loads(config.to_toml()))
    assert again.gold.lora == config.gold.lora == raw["further"]["lora"]
    assert "lora" not in from_dict({}).to_dict()["further"]  # off: not written at all
    task = build_task(config, *load_data(config))
    further = further_task(config, task)
    direct = with_lora(task, rank=2, targets=["*"], alpha=1.0, seed=5)
    assert further.trainable == direct.trainable == (
        "0.lora_A.weight", "0.lora_B.weight", "2.lora_A.weight", "2.lora_B.weight",
        "4.lora_A.weight", "4.lora_B.weight",
    )  # fmt: skip
    for k, v in direct.params().items():
        assert torch.equal(further.params()[k], v)
    assert further_task(from_dict({k: raw[k] for k in ("data", "model")}), task) is task


LORA_RUN = {
    "name": "tiny-lora",
    "data": {"dataset": "concrete", "n_test": 6, "n_train": 48},
    "model": {"hidden": [8]},
    "training": {"epochs": 2},
    "further": {
        "seeds": 1, "left_out": 3, "epochs": 1, "batch_size": 16, "lr": 0.01,
        "dtype": "float64", "lora": {"rank": 2, "targets": ["*"], "seed": 3},
    },
    "methods": {"names": ["grad_dot", "ekfac"], "train": "left_out"},
}  # fmt: skip


def test_a_run_with_lora_trains_and_scores_the_adapters(tmp_path):
    from fimo.experiments.pipeline import run
    from fimo.methods import get_method

    result = run(from_dict(LORA_RUN), tmp_path / "run", quiet=True)
    final = result.task.to(dtype=torch.float64)  # the final model, as it was trained
    lora = with_lora(final, rank=2, targets=["*"], seed=3)
    left_out = np.asarray(result.gold.left_out)
    settings = from_dict(LORA_RUN).further
    direct = further_train_seed(lora, settings, 0, left_out, np.arange(6))
    np.testing.assert_allclose(result.gold.loss_full[0], direct.loss_full, rtol=1e-12)
    np.testing.assert_allclose(result.gold.loss_without[0], direct.loss_without, rtol=1e-12)
    expected = grad_dot(lora, np.arange(6), left_out).values
    np.testing.assert_allclose(result.scores["grad_dot"].values, expected, rtol=1e-10)
    ekfac = get_method("ekfac")(lora, np.arange(6), left_out).values  # EK-FAC sees A and B
    np.testing.assert_allclose(result.scores["ekfac"].values, ekfac, rtol=1e-8)
    # the same directory without LoRA: another gold standard, refused without --overwrite
    plain = {**LORA_RUN, "further": {k: v for k, v in LORA_RUN["further"].items() if k != "lora"}}
    with pytest.raises(InputError, match="holds a gold standard made under other weights"):
        run(from_dict(plain), tmp_path / "run", quiet=True)


#: One process: LoRA (rank 4, query and value) on a 3-layer BERT of width 64, 64 tokens,
#: AdamW batch 32, one step under downweight (every run joins at step 1); the growth of peak
#: resident memory (VmHWM, reset through /proc/self/clear_refs: ru_maxrss would carry the
#: parent's peak across exec) for a stack of 2 runs and of 6 runs, and fimo's estimate and
#: shard plan.
MEMORY_SCRIPT = """
import json, warnings
import numpy as np, torch, transformers
from fimo import ArrayDataset, FurtherSettings, Task
from fimo.further.engine import further_train_seed
from fimo.further.runner import bytes_per_run, runs_per_shard
from fimo.lora import with_lora

torch.set_num_threads(1)
T, n = 64, 40
g = torch.Generator().manual_seed(0)
inputs = {"input_ids": torch.randint(1, 100, (n, T), generator=g),
          "attention_mask": torch.ones(n, T, dtype=torch.long)}
data = ArrayDataset(inputs, torch.randint(0, 2, (n,), generator=g))
torch.manual_seed(0)
config = transformers.BertConfig(
    vocab_size=100, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
    intermediate_size=256, max_position_embeddings=T, num_labels=2,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    task = Task(transformers.BertForSequenceClassification(config), data, data)
lora = with_lora(task, rank=4, targets=["query", "value"])
settings = FurtherSettings(optimizer="adamw", lr=1e-4, batch_size=32, max_steps=1,
                           scheme="downweight")


def status(field):
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


further_train_seed(lora, settings, 0, np.array([0]), np.arange(4))  # allocator warmed up
growth = {}
for left_out in (1, 5):
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # the peak (VmHWM) starts again from the resident memory now
    before = status("VmRSS")
    further_train_seed(lora, settings, 0, np.arange(left_out), np.arange(4))
    growth[left_out] = status("VmHWM") - before
print(json.dumps({
    "measured": (growth[5] - growth[1]) / 4,
    "estimate": bytes_per_run(lora, settings, 4),
    "per_shard": runs_per_shard(lora, settings, 100, 4, budget=2**30),
    "parameters": lora.num_params,
}))
"""


def test_the_run_estimate_under_lora_counts_the_frozen_layers_activations():
    """A LoRA run holds few parameters but a whole model's activations: the estimate is
    within a factor 2 of the measured growth of peak memory per run (stacks of 2 and 6 runs,
    in a fresh process), and the planner's shard of runs then fits its budget."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("the peak of resident memory is read from Linux's /proc")
    pytest.importorskip("transformers")
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    parameters_alone = 8 * 4 * got["parameters"]  # the state of 3,072 adapter numbers: 98 KB
    assert got["measured"] > 100 * parameters_alone  # activations are what a LoRA run holds
    assert 0.5 < got["estimate"] / got["measured"] < 2, got
    shard = (1 + got["per_shard"]) * got["measured"]
    assert 2**30 / 2 < shard < 2 * 2**30, got
