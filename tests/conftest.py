import contextlib
import os

import pytest
import tomli_w
import torch

torch.set_num_threads(2)

# Figures take seconds per run whatever its size (half of a tiny run): the suite skips them,
# and its child processes inherit that; the tests of figures and the report draw them with
# `figures_drawn()`. (`FIMO_FIGURES=1 make test` draws them everywhere.)
os.environ.setdefault("FIMO_FIGURES", "0")


@contextlib.contextmanager
def figures_drawn():
    """Inside: runs and reports draw their figures (FIMO_FIGURES=1)."""
    before = os.environ["FIMO_FIGURES"]
    os.environ["FIMO_FIGURES"] = "1"
    try:
        yield
    finally:
        os.environ["FIMO_FIGURES"] = before


#: The tiny experiment the fault tests run, kill and damage (seconds on this machine).
TINY = {
    "name": "tiny",
    "data": {"dataset": "diabetes", "n_test": 8},
    "training": {"epochs": 1},
    "further": {"seeds": 2, "left_out": 4, "epochs": 1, "batch_size": 128, "lr": 0.05},
    "methods": {"names": ["grad_dot", "grad_cos"], "train": "left_out"},
}


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a whole module (``pytest.mark.usefixtures``): tiny models gain
    nothing from a second, and two threads slow down badly when other processes share the
    cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def config_path(tmp_path_factory):
    """TINY as a TOML file (modules may override it with their own)."""
    path = tmp_path_factory.mktemp("config") / "tiny.toml"
    path.write_text(tomli_w.dumps(TINY))
    return path


@pytest.fixture(scope="session")
def reference(config_path, tmp_path_factory):
    """A run of TINY never stopped nor damaged: copy it before changing anything in it."""
    from fimo.experiments.config import load_config
    from fimo.experiments.pipeline import run

    out = tmp_path_factory.mktemp("reference") / "run"
    with figures_drawn():  # a whole run directory, figures included (the disk-full tests)
        run(load_config(config_path), out, quiet=True)
    return out


@pytest.fixture(scope="session")
def handmade_report(tmp_path_factory):
    """test_report's hand-made run with its report rebuilt once for the whole session (a few
    seconds): (path, gold, scores, evaluation). Shared by test_report, test_compare and
    test_report_browser; a test that changes the run works on a copy."""
    from fimo.experiments.outputs import rebuild_report
    from test_report import make_run_dir

    path = tmp_path_factory.mktemp("report") / "run"
    gold, scores = make_run_dir(path)
    with figures_drawn():
        return path, gold, scores, rebuild_report(path)


@pytest.fixture
def score_matrix_paths(monkeypatch):
    """The paths ``fimo.methods.common.score_matrix`` takes, in order: ``"ghost_products"``
    (the scores from layer factors) or ``"training_gradients"`` (from formed per-instance
    gradients), appended to the returned list as each is called."""
    import fimo.methods.common as common

    paths = []
    for name in ("ghost_products", "training_gradients"):
        real = getattr(common, name)
        monkeypatch.setattr(
            common,
            name,
            lambda *a, _real=real, _name=name, **k: paths.append(_name) or _real(*a, **k),
        )
    return paths


@pytest.fixture
def unrolled_seeds(monkeypatch):
    """``fimo.methods.unrolled.unrolled_seed`` watched: the seeds it computes are appended to
    ``.computed`` (and ``(seed, announce_for)`` to ``.announced``), and the first call for the
    seed in ``.stop_at`` raises KeyboardInterrupt once (an interrupted run, for the resume
    tests). Each seed also sleeps ``.sleep`` seconds (0 unless a test sets it), a known
    amount of wall time in its record."""
    import time
    from types import SimpleNamespace

    import fimo.methods.unrolled as module

    original = module.unrolled_seed
    state = SimpleNamespace(computed=[], stop_at=[], announced=[], sleep=0.0)

    def interruptible(task, settings, seed, *args, **kwargs):
        if state.stop_at and seed == state.stop_at[0]:
            state.stop_at.clear()
            raise KeyboardInterrupt
        state.computed.append(seed)
        state.announced.append((seed, kwargs.get("announce_for", 1)))
        time.sleep(state.sleep)
        return original(task, settings, seed, *args, **kwargs)

    monkeypatch.setattr(module, "unrolled_seed", interruptible)
    return state
