"""A method named on the command line for a preset takes its family's settings from the
preset (issue 17 part 6): checked for every preset and every method it does not list,
against the preset's own TOML tables read here."""

from importlib import resources

import pytest
import tomllib

from fimo.experiments.config import load_config, preset_names, with_overrides
from fimo.methods import ALL_METHOD_NAMES, method_defaults

INFLUENCE = {"explicit", "cg", "lissa", "lissa_hessian", "arnoldi", "generalized"}
CURVATURE = INFLUENCE | {"datainf", "ekfac", "trak"}


def preset_tables(preset):
    """The [methods] table of a preset's TOML file, as written."""
    path = resources.files("fimo.experiments") / "presets" / f"{preset}.toml"
    raw = tomllib.loads(path.read_text())["methods"]
    return raw["names"], {k: v for k, v in raw.items() if isinstance(v, dict)}


def agreed(tables, methods, key):
    """The one value the preset's tables of ``methods`` give ``key`` (None: none gives it)."""
    values = {repr(t[key]) for m, t in tables.items() if m in methods and key in t}
    assert len(values) <= 1, f"the preset's {methods} disagree on {key}"
    return next((t[key] for m, t in tables.items() if m in methods and key in t), None)


@pytest.mark.parametrize("preset", preset_names())
def test_a_method_named_on_the_command_line_gets_its_familys_preset_settings(preset):
    names, tables = preset_tables(preset)
    config = load_config(preset)
    for method in ALL_METHOD_NAMES:
        if method in names:
            continue
        want = dict(tables.get(method, {}))  # a table of its own, though not in the list
        if method in {"lissa", "lissa_hessian"}:  # the other LiSSA's whole table
            other = tables.get(({"lissa", "lissa_hessian"} - {method}).pop(), {})
            want = {**other, **want}
        groups = []
        if method in {"cg", "generalized"}:
            groups.append(({"cg", "generalized"}, ("tol", "max_iter", "hessian")))
        if method in INFLUENCE:
            groups.append((INFLUENCE, ("damping", "damping_factor", "hessian_samples")))
            groups.append((INFLUENCE, ("hessian_seed",)))
        if method in CURVATURE:
            groups.append((CURVATURE, ("hessian_samples", "hessian_seed")))
        for methods, keys in groups:
            for key in keys:
                value = agreed(tables, methods, key)
                if value is not None:
                    want.setdefault(key, value)
        accepted = method_defaults(method)
        want = {k: v for k, v in want.items() if k in accepted}
        got = with_overrides(config, methods=[method]).methods.settings.get(method, {})
        assert got == want, (preset, method)


def test_the_cases_of_the_issue():
    # adult: lissa_hessian and explicit took all 32,561 instances; now the family's 2,000
    for method in ("lissa_hessian", "explicit"):
        config = with_overrides(load_config("adult"), methods=["grad_dot", method])
        assert config.methods.settings[method] == {"hessian_samples": 2000}
        assert "grad_dot" not in config.methods.settings  # nothing to take
    mnist = with_overrides(load_config("mnist"), methods=["lissa_hessian"])
    assert mnist.methods.settings["lissa_hessian"] == {"hessian_samples": 180, "depth": 200}
    reviews = with_overrides(load_config("reviews"), methods=["cg"])
    assert reviews.methods.settings["cg"] == {"hessian_samples": 1000}
    # a listed method keeps the preset's own settings, even when named on the command line
    adult = with_overrides(load_config("adult"), methods=["datainf"])
    assert "datainf" not in adult.methods.settings
    # and a method's own table wins over its family's
    own = load_config("mnist")
    own.methods.settings["lissa_hessian"] = {"depth": 50}
    got = with_overrides(own, methods=["lissa_hessian"]).methods.settings["lissa_hessian"]
    assert got == {"depth": 50, "hessian_samples": 180}
