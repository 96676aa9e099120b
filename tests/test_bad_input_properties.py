"""Random configurations, arrays, indices and files thrown at the validators and loaders: only
a clean InputError (one line) or a correct result may come out."""

import math

import numpy as np
import pytest
import tomli_w
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

from fimo.data.base import ArrayDataset, check_indices, check_pair
from fimo.errors import InputError
from fimo.experiments.config import Config, load_config, with_overrides
from fimo.io import DamagedFileError, read_npz
from fimo.scores import load_indices, load_matrix
from fimo.task import Task

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def clean(exc: InputError) -> None:
    message = str(exc)
    assert message and "\n" not in message and "Traceback" not in message


DTYPES = st.sampled_from(["float32", "float64", "int64", "int32", "uint8", "bool"])


def arrays(max_dims=3):
    return DTYPES.flatmap(
        lambda dtype: hnp.arrays(
            dtype,
            hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=4),
            elements=(
                st.floats(-1e3, 1e3) | st.sampled_from([math.nan, math.inf, -math.inf])
                if dtype.startswith("float")
                else None
            ),
        )
    )


@FAST
@given(arrays(), arrays(), st.booleans())
def test_any_arrays_make_a_dataset_or_a_clean_error(inputs, targets, as_tensors):
    if as_tensors:
        inputs, targets = torch.as_tensor(inputs), torch.as_tensor(targets)
    try:
        ds = ArrayDataset(inputs, targets)
    except InputError as exc:
        clean(exc)
        return
    assert as_tensors
    assert len(ds) == ds.inputs.shape[0] == ds.targets.shape[0]
    for values in (ds.inputs, ds.targets):
        assert values.dtype != torch.bool
        if values.is_floating_point():
            assert torch.isfinite(values).all()


@st.composite
def datasets(draw):
    n = draw(st.integers(0, 5))
    d = draw(st.sampled_from([(2,), (3,), (2, 2)]))
    inputs = torch.randn(n, *d)
    if draw(st.booleans()):
        targets = torch.tensor(draw(st.lists(st.integers(-2, 4), min_size=n, max_size=n)))
        targets = targets.long()
    else:
        targets = torch.randn(n, *draw(st.sampled_from([(), (1,), (2,)])))
    return ArrayDataset(inputs, targets)


@FAST
@given(datasets(), datasets())
def test_any_pair_of_datasets_is_checked_cleanly(train, test):
    try:
        check_pair(train, test, "data.factory")
    except InputError as exc:
        clean(exc)
        assert str(exc).startswith("data.factory: ")
        return
    assert len(train) and len(test)
    assert train.inputs.shape[1:] == test.inputs.shape[1:]
    assert train.targets.shape[1:] == test.targets.shape[1:]
    assert train.targets.is_floating_point() == test.targets.is_floating_point()
    if not train.targets.is_floating_point():
        assert train.targets.min() >= 0 and test.targets.min() >= 0


index_values = st.one_of(
    st.integers(-3, 12),
    st.floats(-3, 12) | st.sampled_from([math.nan, math.inf]),
    st.booleans(),
    st.text(max_size=2),
)


@FAST
@given(st.lists(index_values, max_size=6) | st.lists(st.integers(0, 9), max_size=6),
       st.integers(0, 10))  # fmt: skip
def test_any_indices_are_positions_or_a_clean_error(values, size):
    try:
        out = check_indices("further.left_out", values, size)
    except InputError as exc:
        clean(exc)
        assert str(exc).startswith("further.left_out: ")
        return
    assert out.dtype == np.int64
    assert out.tolist() == [int(v) for v in values]
    assert len(set(out.tolist())) == len(out)
    assert all(0 <= v < size for v in out.tolist())


@FAST
@given(
    st.integers(1, 4),  # model inputs
    st.integers(1, 3),  # model outputs
    st.integers(1, 4),  # data features
    st.sampled_from(["cross_entropy", "mse"]),
    st.lists(st.integers(-1, 3), min_size=3, max_size=3),
    st.booleans(),
)
def test_any_model_and_data_make_a_task_or_a_clean_error(d_in, d_out, d, loss, labels, floats):
    targets = torch.tensor(labels, dtype=torch.float32 if floats else torch.long)
    torch.manual_seed(0)
    try:
        data = ArrayDataset(torch.randn(3, d), targets)
        task = Task(nn.Linear(d_in, d_out), data, data, loss=loss)
    except InputError as exc:
        clean(exc)
        return
    losses = task.losses(task.params(), data.inputs, data.targets)
    assert losses.shape == (3,) and torch.isfinite(losses).all()


toml_values = st.recursive(
    st.booleans()
    | st.integers(-5, 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.sampled_from(["adult", "diabetes", "sgd", "adam", "grad_dot", "float64", "cpu"]),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=4,
)
#: list settings whose element types are not checked yet (model.hidden, further.betas,
#: further.record_steps) are left to test_list_settings_with_wrong_elements_are_clean_errors
SECTIONS = {
    "data": ["dataset", "n_test", "factory", "options", "sets"],
    "model": ["kind", "seed", "factory", "trainable"],
    "training": ["optimizer", "lr", "epochs", "batch_size"],
    "further": ["lr", "epochs", "seeds", "left_out", "dtype", "scheme", "max_steps"],
    "methods": ["names", "train", "grad_dot"],
    "run": ["device", "executor", "workers", "address"],
}


@st.composite
def toml_documents(draw):
    doc = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), unique=True, max_size=4)):
        keys = draw(st.lists(st.sampled_from(SECTIONS[section]), unique=True, max_size=3))
        doc[section] = {k: draw(toml_values) for k in keys}
    if draw(st.booleans()):
        doc["name"] = draw(toml_values)
    return doc


@FAST
@given(toml_documents(), st.sampled_from([None, 0, 3, -1, 1.5, "two"]))
def test_any_toml_file_loads_to_a_config_or_a_clean_error(tmp_path_factory, doc, seeds):
    path = tmp_path_factory.mktemp("cfg") / "random.toml"
    path.write_text(tomli_w.dumps(doc))
    try:
        config = with_overrides(load_config(path), seeds=seeds)
    except InputError as exc:
        clean(exc)
        return
    assert isinstance(config, Config)
    assert config.gold.seeds >= 1 and config.further.lr > 0
    if seeds is not None:
        assert config.gold.seeds == seeds


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({"model": {"hidden": [""]}}, "model.hidden"),
        ({"model": {"hidden": [64, 1.5]}}, "model.hidden"),
        ({"model": {"trainable": [3]}}, "model.trainable"),
        ({"training": {"trainable": ["0.*", False]}}, "training.trainable"),
        ({"further": {"record_steps": ["x"]}}, "further.record_steps"),
        ({"further": {"record_steps": [True]}}, "further.record_steps"),
        ({"further": {"betas": ["a", 1]}}, "further.betas"),
        ({"further": {"betas": [0.9, 0.99, 0.999]}}, "further.betas"),
        ({"further": {"betas": [0.9, 1.0]}}, "further.betas"),
        ({"methods": {"names": ["grad_dot", 7]}}, "methods.names"),
    ],
)
def test_list_settings_with_wrong_elements_are_clean_errors(tmp_path, doc, where):
    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(doc))
    with pytest.raises(InputError) as info:
        load_config(path)
    clean(info.value)
    assert str(info.value).startswith(where + ":")


LIST_KEYS = [
    ("model", "hidden"),
    ("model", "trainable"),
    ("training", "trainable"),
    ("further", "record_steps"),
    ("further", "betas"),
    ("methods", "names"),
]
ELEMENTS = st.one_of(
    st.integers(-3, 300),
    st.floats(-2, 2, allow_nan=False),
    st.booleans(),
    st.text(max_size=6),
)


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(LIST_KEYS), st.lists(ELEMENTS, max_size=4))
def test_any_list_setting_is_accepted_or_refused_cleanly(tmp_path_factory, key, value):
    section, name = key
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text(tomli_w.dumps({section: {name: value}}))
    try:
        config = load_config(path)
    except InputError as exc:
        clean(exc)
        return
    if key == ("model", "hidden"):  # accepted: whole numbers ≥ 1
        assert config.model.hidden == value and all(type(h) is int and h >= 1 for h in value)
    elif key == ("further", "betas"):
        assert list(config.further.betas) == [float(b) for b in value]
    elif key == ("further", "record_steps"):
        assert config.further.record_steps == sorted(set(value))
    elif key == ("methods", "names"):
        assert config.methods.names == value and all(isinstance(n, str) for n in value)
    else:
        assert all(isinstance(p, str) for p in value)


def test_further_settings_from_python_check_betas_and_record_steps():
    from fimo.further.engine import FurtherSettings

    assert FurtherSettings(betas=[0.5, 0]).betas == (0.5, 0.0)
    for bad in (("a", 1), (0.9,), 0.9, (0.9, -0.1)):
        with pytest.raises(InputError, match=r"^further\.betas: got .*two numbers in \[0, 1\)"):
            FurtherSettings(betas=bad)
    for bad in (["2"], [1.5], 3):
        with pytest.raises(InputError, match=r"^further\.record_steps: got .*whole numbers"):
            FurtherSettings(record_steps=bad)
    assert FurtherSettings(record_steps=[np.int64(4), 2, 4]).record_steps == [2, 4]


@settings(max_examples=40, deadline=None)
@given(
    st.binary(max_size=300) | st.text(max_size=60).map(str.encode),
    st.sampled_from([".npz", ".npy", ".pt", ".txt"]),
)
def test_any_bytes_as_a_file_read_cleanly(tmp_path_factory, blob, suffix):
    if suffix == ".txt":  # see test_an_index_file_that_is_not_text_is_named
        assume(_is_utf8(blob))
    path = tmp_path_factory.mktemp("files") / f"random{suffix}"
    path.write_bytes(blob)
    if suffix == ".npz":
        try:
            arrays = read_npz(path)
        except DamagedFileError as exc:
            clean(exc)
        else:
            assert isinstance(arrays, dict)
        return
    try:
        out = load_indices(path) if suffix == ".txt" else load_matrix(path)
    except InputError as exc:
        if suffix == ".pt":  # see test_a_refused_pt_file_is_named_in_one_line
            assert str(exc).startswith(f"{path}: cannot read a score matrix (")
        else:
            clean(exc)
        return
    assert isinstance(out, np.ndarray)
    if suffix == ".txt":
        assert (out >= 0).all() and len(set(out.tolist())) == len(out)


@FAST
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=4),
                  elements=st.floats(-10, 10)))  # fmt: skip
def test_arrays_written_by_numpy_read_back_unchanged(tmp_path_factory, matrix):
    path = tmp_path_factory.mktemp("files") / "matrix.npy"
    np.save(path, matrix)
    try:
        out = load_matrix(path)
    except InputError as exc:  # pragma: no cover - a valid file must load
        pytest.fail(f"a valid .npy was refused: {exc}")
    np.testing.assert_array_equal(out, matrix)
    assume(matrix.size > 0)


def test_a_refused_pt_file_is_named_in_one_line(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00")
    with pytest.raises(InputError) as info:
        load_matrix(path)
    clean(info.value)


def test_an_index_file_that_is_not_text_is_named(tmp_path):
    path = tmp_path / "indices.txt"
    path.write_bytes(b"\x80\x81")
    with pytest.raises(InputError) as info:
        load_indices(path)
    clean(info.value)


def _is_utf8(blob: bytes) -> bool:
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- every method checks its test and train indices from Python ----------------------------
@pytest.mark.parametrize(
    ("test", "train", "expected"),
    [
        ([0], [40], r"train: index 40 is out of range; there are 40 training instances"),
        ([6], [0, 1], r"test: index 6 is out of range; there are 6 test instances"),
        ([0], [-1, 2], r"train: index -1 is out of range"),
        ([0], [1, 1], r"train: index 1 appears more than once"),
        ([0.5], [0, 1], r"test: got \[0\.5\]; expected whole numbers"),
        ([0], np.array([True, False]), r"train: got a boolean mask"),
    ],
)
def test_every_method_checks_its_indices_before_any_work(test, train, expected):
    from fimo.data import ArrayDataset
    from fimo.methods import ALL_METHOD_NAMES, available_methods, get_method
    from fimo.models import mlp

    g = torch.Generator().manual_seed(0)
    X, Xt = torch.randn(40, 4, generator=g), torch.randn(6, 4, generator=g)
    y, yt = (X[:, 0] > 0).long(), (Xt[:, 0] > 0).long()
    task = Task(mlp(4, 2, hidden=(5,), seed=1), ArrayDataset(X, y), ArrayDataset(Xt, yt))
    names = available_methods()
    assert names == list(ALL_METHOD_NAMES)  # every reserved name is implemented
    for name in names:
        with pytest.raises(InputError, match=rf"^{name}: {expected}") as info:
            get_method(name)(task, test, train)
        clean(info.value)
