"""Random configurations thrown at the validator: a Config or a clean InputError, nothing else."""

import tomllib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fimo.errors import InputError
from fimo.experiments.config import Config, from_dict, load_config

KEYS = {
    "data": ["dataset", "n_test", "factory", "nonsense"],
    "model": ["kind", "hidden", "seed", "trainable", "hiden"],
    "training": ["optimizer", "lr", "epochs", "batch_size", "seed", "momentum"],
    "further": ["optimizer", "lr", "epochs", "batch_size", "scheme", "seeds", "left_out",
                "dtype", "betas", "record_steps", "max_steps", "clip_norm", "momentum",
                "nesterov", "left_out_per_shard", "memory_budget_mb", "sead"],
    "methods": ["names", "train", "grad_dot", "cg"],
    "run": ["device", "executor", "workers", "address"],
}  # fmt: skip

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-3, 300), max_size=4),
    st.lists(st.text(max_size=6), max_size=3),
    st.dictionaries(st.sampled_from(["tol", "chunk_size", "x"]), st.integers(-2, 5), max_size=2),
)


@st.composite
def configs(draw):
    raw = {}
    for section in draw(st.lists(st.sampled_from([*KEYS, "junk"]), unique=True, max_size=4)):
        if section == "junk":
            raw["junk"] = draw(values)
            continue
        keys = draw(st.lists(st.sampled_from(KEYS[section]), unique=True, max_size=4))
        raw[section] = {k: draw(values) for k in keys}
    if draw(st.booleans()):
        raw["name"] = draw(values)
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_validator_returns_a_config_or_a_clean_error(raw):
    try:
        config = from_dict(raw)
    except InputError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message
        return
    assert isinstance(config, Config)
    # whatever validates survives a round trip through TOML unchanged
    again = from_dict(tomllib.loads(config.to_toml()))
    assert again.to_dict() == config.to_dict()


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_any_text_as_a_toml_file_is_a_config_or_a_clean_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "random.toml"
    path.write_text(text)
    try:
        load_config(path)
    except InputError as exc:
        assert str(exc)


def test_infinite_or_nan_learning_rates_are_refused_before_work():
    import pytest

    for section in ("training", "further"):
        for bad in (float("inf"), float("nan"), 0.0, -1.0):
            with pytest.raises(InputError, match=f"{section}.lr"):
                from_dict({section: {"lr": bad}})
