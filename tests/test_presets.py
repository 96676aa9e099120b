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
    result = run(config, tmp_path / name, quiet=True)
    gold = result.gold
    assert gold.loss_without.shape == (1, 1, 4, 3)
    assert np.isfinite(gold.loss_without).all()
    assert result.scores["grad_dot"].values.shape == (4, 3)
    assert result.task.loss_name == ("mse" if name in ("concrete", "diabetes") else "cross_entropy")
