"""`fimo run` and `fimo attribute` on a dataset of named input fields (a dict of tensors, as a
Hugging Face model takes them) and a tiny random BERT, both from a configuration's factories:
the gold standard, the scores and the attribution equal direct calls on the saved final model,
and a rerun reuses what is saved (the data's fingerprint hashes the fields)."""

import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from fimo import grad_dot
from fimo.cli import main
from fimo.data import ArrayDataset, Fields
from fimo.evaluate.examples import describe
from fimo.experiments.attribute import attribute
from fimo.experiments.build import build_task, load_data
from fimo.experiments.config import from_dict
from fimo.experiments.pipeline import run
from fimo.experiments.rundir import RunDir
from fimo.further.engine import further_train_seed
from fimo.io import fingerprint
from fimo.methods.datainf import datainf

FACTORIES = """
import torch
import transformers
from fimo import ArrayDataset

VOCAB, T = 40, 9


def _padded(n, g):
    lengths = torch.randint(3, T + 1, (n,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids = torch.randint(1, VOCAB, (n, T), generator=g) * mask
    labels = torch.randint(0, 2, (n,), generator=g)
    return ArrayDataset({"input_ids": ids, "attention_mask": mask}, labels)


def data():
    g = torch.Generator().manual_seed(0)
    return _padded(24, g), _padded(6, g)


def model(train, test):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=T, num_labels=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(config)
"""

CONFIG = {
    "name": "fields",
    "data": {"factory": "fimo_fields_factories:data", "n_test": 6},
    "model": {"factory": "fimo_fields_factories:model"},
    "training": {"epochs": 2, "batch_size": 8, "lr": 0.01},
    "further": {
        "seeds": 1, "left_out": 3, "epochs": 1, "batch_size": 8, "lr": 0.01, "dtype": "float64",
    },
    "methods": {"names": ["grad_dot", "datainf"], "train": "left_out"},
}  # fmt: skip


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    folder = tmp_path_factory.mktemp("userpkg")
    (folder / "fimo_fields_factories.py").write_text(textwrap.dedent(FACTORIES))
    return folder


@pytest.fixture
def on_path(factories, monkeypatch):
    monkeypatch.syspath_prepend(str(factories))
    return factories


def saved_final_task(config, out):
    """The configuration's task with the weights the run saved."""
    task = build_task(config, *load_data(config))
    RunDir(out).load_final(task.model)
    return task


@pytest.mark.filterwarnings("ignore:fimo.*eager")
def test_run_and_attribute_on_fields_equal_direct_calls(on_path, tmp_path, capsys):
    config = from_dict(CONFIG)
    out = tmp_path / "run"
    result = run(config, out, quiet=True)
    final = saved_final_task(config, out).to(dtype=torch.float64)
    left_out, test = np.asarray(result.gold.left_out), np.arange(6)
    direct = further_train_seed(final, config.further, 0, left_out, test)
    np.testing.assert_allclose(result.gold.loss_full[0], direct.loss_full, rtol=1e-12)
    np.testing.assert_allclose(result.gold.loss_without[0], direct.loss_without, rtol=1e-12)
    np.testing.assert_allclose(
        result.scores["grad_dot"].values, grad_dot(final, test, left_out).values, rtol=1e-10
    )
    np.testing.assert_allclose(
        result.scores["datainf"].values, datainf(final, test, left_out).values, rtol=1e-8
    )

    # fimo attribute, through the command line, in the same directory: the saved final model
    argv = ["attribute", str(tmp_path / "c.toml"), "--out", str(out), "--test", "4,1"]
    (tmp_path / "c.toml").write_text(config.to_toml())
    assert main([*argv, "--method", "grad_dot"]) == 0
    shown = capsys.readouterr().out  # the top instances, each by its fields' values
    assert "cannot describe" not in shown and "input_ids" in shown
    again = attribute(config, [4, 1], method="grad_dot", out=out, quiet=True)
    assert again.reused  # the fingerprint of the fields' data and the weights is stable
    float32 = saved_final_task(config, out)
    np.testing.assert_allclose(
        again.scores.values, grad_dot(float32, [4, 1], range(24)).values, rtol=1e-5
    )


def test_the_fingerprint_of_fields_sees_every_value_name_and_order():
    ids = torch.tensor([[5, 6, 0], [7, 8, 9]])
    mask = (ids > 0).long()
    base = fingerprint(Fields({"input_ids": ids, "attention_mask": mask}))
    changed_value = ids.clone()
    changed_value[1, 2] = 3
    assert base == fingerprint(Fields({"input_ids": ids.clone(), "attention_mask": mask}))
    for other in (
        Fields({"input_ids": changed_value, "attention_mask": mask}),
        Fields({"token_ids": ids, "attention_mask": mask}),
        Fields({"attention_mask": mask, "input_ids": ids}),  # the model gets them in order
        {"input_ids": ids, "attention_mask": mask},  # a plain dict of settings
    ):
        assert fingerprint(other) != base


def test_an_instance_of_fields_is_described_by_its_values():
    ids = torch.arange(40).reshape(2, 20)
    data = ArrayDataset({"input_ids": ids, "mask": torch.ones(2, 3)}, torch.tensor([0, 1]))
    assert describe(data, 1) == {
        "label": "1",
        "input_ids": " ".join(str(v) for v in range(20, 36)) + " … (20 values)",
        "mask": "1 1 1",
    }
