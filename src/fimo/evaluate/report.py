"""The self-contained HTML report: the content of :mod:`fimo.evaluate.narrative` as one page.

The page has inline CSS, images as data URIs, no script and no link outside itself, so it
can be mailed or archived as one file. The sentences and the numbers in the tables come from
:mod:`~fimo.evaluate.narrative`; this module only lays them out (and escapes them).
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Mapping, Sequence
from pathlib import Path

from fimo.evaluate.formatting import (
    epoch_text,
    gold_name,
    label,
    mean_sem_text,
    plural,
    sci,
    upper_first,
)
from fimo.evaluate.metrics import ALL_METRICS
from fimo.evaluate.narrative import (
    additivity_sentence,
    calibration_table,
    example_groups,
    ft_lds_sentences,
    ft_lds_table,
    group_attribution_table,
    headline,
    metric_table,
    noise_table,
    seed_table,
    summary_sentences,
    views,
)
from fimo.evaluate.plots import plot_agreement, png_data_uri
from fimo.io import write_text

__all__ = ["describe_html", "write_report"]

SECTIONS = (
    ("summary", "Summary"),
    ("agreement", "Agreement"),
    ("metrics", "Every metric"),
    ("noise", "Noise floor"),
    ("seeds", "Seeds"),
    ("calibration", "Calibration"),
    ("groups", "Groups"),
    ("curves", "Sorted scores"),
    ("examples", "Examples"),
    ("reading", "How to read"),
    ("settings", "Settings"),
)

FIGURE_ALT = {
    "cosine": "cosine similarity with the centred gold standard against further-training "
    "epochs, one line per method, with the noise ceiling",
    "agreement_centred": "every metric against further-training epochs, centred gold standard",
    "agreement_adjusted": "every metric against further-training epochs, adjusted-only gold "
    "standard",
    "seed_count": "cosine similarity at the best checkpoint against the number of seeds",
    "calibration": "gold standard against each method's scores, with the least-squares line",
    "sorted_scores": "sorted-score curves of the gold standard and of each method",
}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 64rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
h3 { font-size: 1rem; margin-bottom: 0.4rem; }
.meta { color: #666; font-size: 0.9rem; }
.summary p { margin: 0.35rem 0; }
.summary { background: #f7f9fc; border-left: 4px solid #4a78b5; padding: 0.4rem 1rem; }
nav { font-size: 0.9rem; margin: 0.6rem 0 0; }
nav a { margin-right: 0.8rem; color: #2b5b99; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f4f4f4; }
td.best { font-weight: bold; background: #eef6ee; }
td.left, th.left { text-align: left; }
td.floor { color: #555; font-style: italic; }
.table-wrap { overflow-x: auto; }
img.plot { max-width: 100%; height: auto; border: 1px solid #eee; display: block; margin: 0.4rem 0; }
img.thumb { image-rendering: pixelated; border: 1px solid #ccc; vertical-align: middle; }
.pick { margin: 0 0 0.35rem; }
.pick .score { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.8rem; color: #444; }
.desc { color: #333; font-size: 0.8rem; }
.lab { font-weight: 600; }
small.n { color: #a33; }
details { margin: 0.4rem 0; }
summary { cursor: pointer; color: #2b5b99; }
dl { margin: 0.2rem 0 0.2rem 0; }
dl dl { margin-left: 1.2rem; border-left: 2px solid #eee; padding-left: 0.6rem; }
dt { font-weight: 600; font-family: ui-monospace, Menlo, Consolas, monospace; }
dd { margin: 0 0 0.3rem 1.2rem; font-family: ui-monospace, Menlo, Consolas, monospace; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.9em; }
ul.defs li { margin-bottom: 0.3rem; }
"""


def write_report(
    path,
    rows,
    *,
    title: str,
    settings: Mapping,
    manifest: Mapping,
    notes: Sequence[str] = (),
    evaluation=None,
    figures: Mapping[str, bytes] | None = None,
) -> Path:
    """Write one self-contained HTML report (inline CSS, plots as base64 PNGs), atomically.

    With ``rows`` alone: the summary sentences, a mean ± SEM table per metric (methods ×
    checkpoints), the centred cosine plot, the notes, the settings and the manifest's
    fingerprints. With an ``evaluation`` (:class:`fimo.evaluate.Evaluation`) the full report:
    the summary in words, agreement over further training with the noise ceiling, every
    metric, the noise floor, the seed-count study, calibration, sorted scores and the most
    influential training instances; ``figures`` maps figure names to PNG bytes already drawn
    (as :func:`fimo.evaluate.evaluation_figures` and :func:`fimo.evaluate.plots.figure_bytes`
    make them; drawn here when None). Returns the path written.

    >>> import tempfile, pathlib
    >>> rows = [{"method": "a", "checkpoint": 0, "step": 5, "epoch": 1.0, "metric": "spearman",
    ...          "centred": True, "mean": 0.5, "sem": 0.1, "n": 4}]
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     page = write_report(pathlib.Path(tmp) / "r.html", rows, title="t", settings={},
    ...                         manifest={}).read_text()
    >>> "0.500 ± 0.100" in page and page.endswith("</body></html>\\n")
    True
    """
    rows = list(rows)
    parts: list[str] = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f"<p class='meta'>Generated by fimo on "
        f"{_esc(datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z'))}; "
        f"{len({r['method'] for r in rows})} methods, "
        f"{len({int(r['checkpoint']) for r in rows})} checkpoints.</p>",
    ]
    if evaluation is None:
        parts.extend(_rows_page(rows, settings, manifest, notes))
    else:
        parts.extend(_evaluation_page(evaluation, rows, settings, manifest, notes, figures))
    parts.append("</body></html>\n")
    return write_text(path, "\n".join(parts))


# -- elements ----------------------------------------------------------------------------------
def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _img(uri: str, alt: str) -> str:
    return f"<img class='plot' alt='{_esc(alt)}' src='{uri}'>"


class FiguresNotDrawn(dict):
    """The (empty) figures of a run made under ``FIMO_FIGURES=0``: the report says how to
    draw them instead of "nothing to draw".

    >>> FiguresNotDrawn() == {}, isinstance(FiguresNotDrawn(), dict)
    (True, True)
    """


def _figure(figures: Mapping[str, bytes], name: str) -> str:
    if isinstance(figures, FiguresNotDrawn):
        return (
            f"<p class='meta'>(the {_esc(name.replace('_', ' '))} figure was not drawn: "
            "FIMO_FIGURES=0; run <code>fimo report RUN</code> without it to draw it)</p>"
        )
    if name not in figures:
        return f"<p class='meta'>(no {_esc(name.replace('_', ' '))} figure: nothing to draw)</p>"
    return _img(png_data_uri(figures[name]), FIGURE_ALT.get(name, name))


def _table(head: str, body: Sequence[str]) -> str:
    """A scrollable table from the cells of its header row and its body rows."""
    return (
        f"<div class='table-wrap'><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _epoch_heads(epochs) -> str:
    return "".join(f"<th>epoch {_esc(epoch_text(e))}</th>" for e in epochs)


def _notes(notes: Sequence[str]) -> list[str]:
    if not notes:
        return []
    return ["<h2 id='notes'>Notes</h2><ul>", *(f"<li>{_esc(n)}</li>" for n in notes), "</ul>"]


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, str):
        return value
    try:  # numpy scalars and arrays
        import numpy as np

        if isinstance(value, np.ndarray):
            return _scalar(value.tolist())
        if isinstance(value, np.generic):
            return _scalar(value.item())
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def _definition_list(obj: Mapping) -> str:
    if not obj:
        return "<p class='meta'>(none)</p>"
    parts = ["<dl>"]
    for key, value in obj.items():
        parts.append(f"<dt>{_esc(key)}</dt>")
        if isinstance(value, Mapping):
            parts.append(f"<dd>{_definition_list(value)}</dd>")
        else:
            parts.append(f"<dd>{_esc(_scalar(value))}</dd>")
    parts.append("</dl>")
    return "".join(parts)


def _fingerprints(manifest: Mapping) -> list[tuple[str, str]]:
    """(dotted key, value) for every manifest entry under a key that names a fingerprint."""
    found: list[tuple[str, str]] = []

    def walk(obj, path: tuple[str, ...], inside: bool) -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(v, (*path, str(k)), inside or "fingerprint" in str(k).lower())
        elif inside:
            shown = [p for p in path if p.lower() != "fingerprints"] or list(path)
            found.append((".".join(shown), _scalar(obj)))

    walk(manifest, (), False)
    return found


def _settings_sections(settings, manifest) -> list[str]:
    parts = ["<h2 id='settings'>Settings</h2>", _definition_list(settings or {})]
    parts.append("<h2 id='fingerprints'>Fingerprints</h2>")
    prints = _fingerprints(manifest or {})
    if prints:
        parts.append("<div class='table-wrap'><table><thead><tr><th>what</th>")
        parts.append("<th>fingerprint</th></tr></thead><tbody>")
        parts.extend(
            f"<tr><td>{_esc(k)}</td><td><code>{_esc(v)}</code></td></tr>" for k, v in prints
        )
        parts.append("</tbody></table></div>")
    else:
        parts.append("<p class='meta'>The manifest records no fingerprints.</p>")
    return parts


# -- the agreement tables ----------------------------------------------------------------------
def _n_mark(row: Mapping, expected: int | None) -> str:
    if expected is None or int(row["n"]) >= expected:
        return ""
    return f" <small class='n'>n={int(row['n'])}</small>"


def _metric_table(
    rows, metric: str, centred: bool, expected: int | None = None, noise=None, caption=True
) -> str:
    """One metric's table (:func:`fimo.evaluate.narrative.metric_table`) with its heading;
    ``expected`` test instances: a value defined for fewer is marked with its n."""
    table = metric_table(rows, metric, centred, noise)
    body = []
    for entry in table["rows"]:
        tds = []
        for r, best in zip(entry["cells"], entry["best"], strict=True):
            if r is None:
                tds.append("<td>–</td>")
                continue
            cls = " class='best'" if best else ""
            tip = f"n = {int(r['n'])} test instances, step {int(r['step'])}"
            tds.append(
                f"<td{cls} title='{_esc(tip)}'>{_esc(mean_sem_text(r['mean'], r['sem'], 3))}"
                f"{_n_mark(r, expected)}</td>"
            )
        body.append(f"<tr><td>{_esc(entry['method'])}</td>{''.join(tds)}</tr>")
    if table["ceiling"] is not None:
        tds = "".join(
            f"<td class='floor'>{_esc(mean_sem_text(r['mean'], r['sem'], 3))}</td>"
            if r is not None
            else "<td>–</td>"
            for r in table["ceiling"]
        )
        body.append(f"<tr><td class='floor'>noise ceiling</td>{tds}</tr>")
    title = ""
    if caption:
        text = (
            f"{label(metric)} with the {'centred' if centred else 'uncentred'} gold standard "
            f"(mean ± SEM over test instances; best per checkpoint in bold)"
        )
        title = f"<h3>{_esc(upper_first(text))}</h3>"
    return title + _table(f"<th>method</th>{_epoch_heads(table['epochs'])}", body)


# -- the page of agreement rows alone ----------------------------------------------------------
def _rows_page(rows, settings, manifest, notes) -> list[str]:
    """The report of agreement rows alone (no seeds, noise floor or examples)."""
    pairs = views(rows)
    parts = ["<h2>Summary</h2>"]
    sentences = summary_sentences(rows)
    if sentences:
        parts.append("".join(f"<p>{_esc(s)}</p>" for s in sentences))
    else:
        parts.append("<p>No agreement values to summarise.</p>")
    if ("cosine", True) in pairs:
        fig = plot_agreement(rows, "cosine", True)
        alt = "cosine similarity with the centred gold standard against further-training epochs"
        parts.append("<h2>Cosine similarity over further training</h2>")
        parts.append(_img(png_data_uri(fig), alt))
    parts.append("<h2>Agreement by checkpoint</h2>")
    if pairs:
        parts.extend(_metric_table(rows, metric, centred) for metric, centred in pairs)
    else:
        parts.append("<p>No rows.</p>")
    if notes:
        parts.append("<h2>Notes</h2><ul>")
        parts.extend(f"<li>{_esc(n)}</li>" for n in notes)
        parts.append("</ul>")
    parts.extend(_settings_sections(settings, manifest))
    return parts


# -- the page of a full evaluation -------------------------------------------------------------
def _evaluation_page(ev, rows, settings, manifest, notes, figures) -> list[str]:
    """The body of the full report, as a list of HTML fragments."""
    if figures is None:
        from fimo.evaluate.plots import evaluation_figures, figure_bytes

        figures = {k: figure_bytes(f, ("png",))["png"] for k, f in evaluation_figures(ev).items()}
    gold = ev.gold
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    sections = [(k, v) for k, v in SECTIONS if k != "groups" or "ft_lds" in ev.rows]
    parts = [
        "<nav>" + "".join(f"<a href='#{k}'>{_esc(v)}</a>" for k, v in sections) + "</nav>",
        f"<p class='meta'>Methods: {_esc(', '.join(methods) or 'none')}. Gold standard: "
        f"{len(gold.seeds)} seeds × {len(gold.left_out)} left-out × {len(gold.test)} test "
        f"instances; checkpoints at epochs {_esc(', '.join(epoch_text(e) for e in gold.epochs))}"
        ".</p>",
        "<h2 id='summary'>Summary</h2><div class='summary'>",
        "".join(f"<p>{_esc(s)}</p>" for s in headline(ev)),
        "</div>",
    ]
    parts += _agreement_section(ev, rows, figures)
    parts += ["<h2 id='noise'>Noise floor</h2>", *_noise_section(ev)]
    parts += ["<h2 id='seeds'>Number of seeds</h2>", *_seed_section(ev, figures)]
    parts += ["<h2 id='calibration'>Calibration</h2>", *_calibration_section(ev, figures)]
    if "ft_lds" in ev.rows:
        parts += ["<h2 id='groups'>Groups: FT-LDS</h2>", *_groups_section(ev)]
    parts += [
        "<h2 id='curves'>Sorted scores</h2>",
        "<p>Each test instance's scores over the left-out instances, sorted (most harmful "
        "first), averaged over test instances and scaled to unit length (paper Fig. 10). A "
        "method whose curve follows the gold standard's puts its mass on as few or as many "
        "instances as further training does.</p>",
        _figure(figures, "sorted_scores"),
    ]
    parts += ["<h2 id='examples'>Most influential training instances</h2>", *_examples(ev)]
    parts += ["<h2 id='reading'>How to read this page</h2>", _reading(ev)]
    parts += _notes(notes)
    parts += _settings_sections(settings, manifest)
    return parts


def _agreement_section(ev, rows, figures) -> list[str]:
    """Agreement over further training, then every metric (figures and folded tables)."""
    T, noise = len(ev.gold.test), ev.rows["noise_floor"]
    parts = [
        "<h2 id='agreement'>Agreement over further training</h2>",
        "<p>Each method's scores against the centred gold standard (paper eq. 13) at every "
        "checkpoint of further training: the mean over test instances of the per-instance "
        "cosine similarity, with a band of ±1 standard error. The dashed line is the noise "
        "ceiling: what a perfect method would reach against a gold standard of this many "
        "seeds (see <a href='#noise'>Noise floor</a>).</p>",
        _figure(figures, "cosine"),
        _metric_table(rows, "cosine", True, expected=T, noise=noise),
        _metric_table(rows, "spearman", True, expected=T, noise=noise),
        "<h2 id='metrics'>Every metric</h2>",
        "<p>Cosine, Spearman and Pearson correlation; the overlap of the 5 and 10 most "
        "helpful and most harmful instances; sign agreement — against the centred gold "
        "standard and against the adjusted-only one (eq. 17, without centring).</p>",
        _figure(figures, "agreement_centred"),
        _figure(figures, "agreement_adjusted"),
    ]
    for flag in (True, False):
        tables = [
            _metric_table(rows, m, flag, expected=T, noise=noise)
            for m in ALL_METRICS
            if any(r["metric"] == m and bool(r["centred"]) == flag for r in rows)
        ]
        if tables:
            parts.append(
                f"<details><summary>Tables: every metric, {gold_name(flag)} gold standard"
                f"</summary>{''.join(tables)}</details>"
            )
    return parts


def _noise_section(ev) -> list[str]:
    rows = ev.rows["noise_floor"]
    S = len(ev.gold.seeds)
    intro = (
        "<p>How well the gold standard agrees with itself. The seeds are split into two "
        "halves; the mean of each half is a gold standard of its own, and their agreement "
        "(per test instance, averaged over splits) is the split-half value. The "
        "Spearman–Brown formula steps it up to two independent gold standards of all the "
        "seeds; its square root is the agreement a perfect, noise-free method would reach "
        "against this gold standard — the ceiling drawn in the plots. Read a method's "
        "agreement against the ceiling, not against 1.</p>"
    )
    if S < 2 or not rows:
        return [
            intro,
            "<p class='meta'>With a single seed there is nothing to split: the noise floor "
            "needs at least two seeds.</p>",
        ]
    out = [intro]
    for flag in (True, False):
        table = noise_table(rows, flag)
        if not table["rows"]:
            continue
        body = [
            f"<tr><td>{_esc(entry['name'])}</td>"
            + "".join(
                f"<td>{_esc(mean_sem_text(r['mean'], r['sem'], 3))}</td>" if r else "<td>–</td>"
                for r in entry["cells"]
            )
            + "</tr>"
            for entry in table["rows"]
        ]
        html_table = _table(
            f"<th>{_esc(gold_name(flag))} gold standard</th>{_epoch_heads(table['epochs'])}", body
        )
        if flag:
            out.append(html_table)
        else:
            caveat = (
                "<p class='meta'>Without centring, most of the seed noise is a shift shared by "
                "every left-out instance (the full run's own noise). A method that ignores such "
                "shifts does not see it, so these values do not bound the methods' agreement "
                "with the adjusted-only gold standard; no ceiling is drawn for it.</p>"
            )
            out.append(
                f"<details><summary>Adjusted-only gold standard</summary>{caveat}{html_table}"
                "</details>"
            )
    splits = int(rows[0]["splits"])
    out.append(
        f"<p class='meta'>{splits} {plural(splits, 'split')} of the {S} seeds "
        f"(mean ± SEM over test instances; the SEM of the stepped-up values is carried "
        f"through the formula).</p>"
    )
    return out


def _seed_table(rows, metric: str, centred: bool) -> str:
    table = seed_table(rows, metric, centred)
    if table is None:
        return ""
    head = "".join(
        f"<th>k = {k} ({w} {plural(w, 'window')})</th>"
        for k, w in zip(table["ks"], table["windows"], strict=True)
    )
    body = []
    for entry in table["rows"]:
        tds = [
            "<td>n/a</td>"
            if r is None
            else f"<td>{_esc(mean_sem_text(r['mean'], r['sem'], 3))} "
            f"<small>(epoch {_esc(epoch_text(r['epoch']))})</small></td>"
            for r in entry["cells"]
        ]
        body.append(f"<tr><td>{_esc(entry['method'])}</td>{''.join(tds)}</tr>")
    return (
        f"<h3>{_esc(upper_first(label(metric)))}, {gold_name(centred)} gold standard: best "
        f"checkpoint for each k</h3>" + _table(f"<th>method</th>{head}", body)
    )


def _seed_section(ev, figures) -> list[str]:
    rows = ev.rows["seed_count"]
    out = [
        "<p>The seed-count study of the paper (its Figs 3 and 7): the seeds are cut into "
        "non-overlapping windows of k, each window's mean is a gold standard of k seeds, every "
        "method is scored against each window (per test instance, averaged over windows), "
        "and the best checkpoint is taken for each k. A curve that still rises at the right "
        "says that more seeds would measure a higher agreement.</p>",
        _figure(figures, "seed_count"),
        _seed_table(rows, "cosine", True),
    ]
    others = [
        _seed_table(rows, m, flag)
        for flag in (True, False)
        for m in dict.fromkeys(r["metric"] for r in rows)
        if (m, flag) != ("cosine", True)
    ]
    others = [t for t in others if t]
    if others:
        out.append(
            f"<details><summary>Other metrics and views</summary>{''.join(others)}</details>"
        )
    return out


def _calibration_table(rows, centred: bool) -> str:
    table = calibration_table(rows, centred)
    if table is None:
        return ""
    body = []
    for entry in table["rows"]:
        tds = []
        for cell in entry["cells"]:
            if cell is None:
                tds.append("<td>–</td>")
                continue
            per = cell["r2_per_test"]
            tds.append(
                f"<td>scale {_esc(sci(cell['scale']['value']))}, "
                f"R² {_esc(mean_sem_text(cell['r2']['value'], None, 2))}<br><small>per test: "
                f"R² {_esc(mean_sem_text(per['value'], per['sem'], 2))}, median scale "
                f"{_esc(sci(cell['scale_median']['value']))}</small></td>"
            )
        body.append(f"<tr><td>{_esc(entry['method'])}</td>{''.join(tds)}</tr>")
    return _table(f"<th>method ({gold_name(centred)})</th>{_epoch_heads(table['epochs'])}", body)


def _calibration_section(ev, figures) -> list[str]:
    rows = ev.rows["calibration"]
    out = [
        "<p>Directions are not magnitudes. The least-squares scale maps a method's scores "
        "onto the gold standard (gold ≈ scale × score, one scale for all test instances); "
        "R² is the share of the gold standard's variance within each test instance's row "
        "that the scaled scores explain (negative: worse than a constant). A method whose "
        "scale changes little across checkpoints predicts the size of the effect of further "
        "training, not only its direction.</p>",
        _figure(figures, "calibration"),
        _calibration_table(rows, True),
    ]
    adjusted = _calibration_table(rows, False)
    if adjusted:
        out.append(f"<details><summary>Adjusted-only gold standard</summary>{adjusted}</details>")
    return out


# -- groups ------------------------------------------------------------------------------------
_BEST = " class='best'"


def _ft_lds_table(ev) -> str:
    table = ft_lds_table(ev.rows["ft_lds"], ev.rows["ft_lds_ceiling"])
    body = []
    for entry in table["rows"]:
        tds = "".join(
            "<td>–</td>"
            if r is None
            else f"<td{_BEST if best else ''} title='n = {int(r['n'])} test instances, step "
            f"{int(r['step'])}'>{_esc(mean_sem_text(r['mean'], r['sem'], 3))}</td>"
            for r, best in zip(entry["cells"], entry["best"], strict=True)
        )
        body.append(f"<tr><td>{_esc(entry['method'])}</td>{tds}</tr>")
    if table["ceiling"] is not None:
        tds = "".join(
            "<td>–</td>"
            if r is None
            else f"<td class='floor'>{_esc(mean_sem_text(r['mean'], r['sem'], 3))}</td>"
            for r in table["ceiling"]
        )
        body.append(f"<tr><td class='floor'>noise ceiling</td>{tds}</tr>")
    return _table(f"<th>method</th>{_epoch_heads(table['epochs'])}", body)


def _attribution_table(ev) -> str:
    table = group_attribution_table(ev.rows["group_attribution"])
    if table is None:
        return ""
    units = {name: getattr(sc, "units", "") for name, sc in ev.scores.items()}
    head = "<th>group</th><th>size</th>" + "".join(
        "<th>measured (loss change)</th>"
        if s == "gold"
        else f"<th>{_esc(s)}{f' ({_esc(units[s])})' if units.get(s) else ''}</th>"
        for s in table["sources"]
    )
    body = []
    for entry in table["rows"]:
        tds = []
        for source, r in zip(table["sources"], entry["cells"], strict=True):
            if r is None:
                tds.append("<td>–</td>")
                continue
            text = mean_sem_text(r["mean"], r["sem"], 3)
            if source == "gold":
                text += f" (seeds: ± {sci(r['seed_sem'])})"
            tds.append(f"<td>{_esc(text)}</td>")
        body.append(
            f"<tr><td>{_esc(entry['name'])}</td><td>{entry['size']}</td>{''.join(tds)}</tr>"
        )
    return (
        f"<h3>Group attribution at epoch {_esc(epoch_text(table['epoch']))}</h3>"
        "<p>Each group's effect on the test instances' loss when it is left out: measured by "
        "further training (the seed mean of the adjusted difference) and predicted by each "
        "method as the sum of its scores over the group's members, in the method's own units "
        "(the calibration scale above converts them). Mean ± SEM over test instances; for the "
        "measurement also the standard error over seeds of the test-set mean.</p>"
        + _table(head, body)
    )


def _additivity_section(ev) -> str:
    rows = ev.rows.get("additivity") or []
    if not rows:
        return ""
    body = []
    for r in sorted(rows, key=lambda r: int(r["checkpoint"])):
        cells = [
            mean_sem_text(r["cosine"], r["cosine_se"], 3),
            mean_sem_text(r["relative_gap"], r["relative_gap_se"], 3),
            mean_sem_text(r["noise_gap"], None, 3),
            mean_sem_text(r["slope"], r["slope_se"], 3),
            mean_sem_text(r["spearman"], r["spearman_sem"], 3),
        ]
        body.append(
            f"<tr><td>{_esc(epoch_text(r['epoch']))}</td>"
            + "".join(f"<td>{_esc(c)}</td>" for c in cells)
            + "</tr>"
        )
    head = (
        "<th>epoch</th><th>cosine</th><th>relative gap</th><th>gap from seed noise</th>"
        "<th>slope</th><th>Spearman</th>"
    )
    return (
        "<h3>Additivity</h3>"
        "<p>Groups whose members were also left out one at a time (a nested design): each "
        "group's measured effect D beside the sum A of its members' measured single effects "
        "(both seed means of the adjusted difference, over test instances × groups). Cosine "
        "and relative gap ‖D − A‖/‖D‖ say how far the linear picture holds (1 and 0 when "
        "effects add up); the gap the seed noise alone would give is its reference; the slope "
        "⟨D, A⟩/‖A‖² is below 1 when a group does less than its members one by one. ± the "
        "jackknife standard error over seeds; the Spearman correlation across groups is "
        f"averaged over test instances (± SEM).</p><p>{_esc(additivity_sentence(rows))}</p>"
        + _table(head, body)
    )


def _groups_section(ev) -> list[str]:
    info = ev.options.get("groups", {})
    G = int(info.get("count", 0))
    out = [
        f"<p>The gold standard also left out {G} {plural(G, 'group')} of training instances, "
        "each in a run of its own, paired by seed with the full run. FT-LDS is the linear "
        "datamodeling score measured against further training: for each test instance, the "
        "Spearman correlation across the groups between a method's predicted effect (the sum "
        "of its scores over the group's members) and the measured one (the seed mean of "
        "loss without the group minus loss of the full run, eq. 17), averaged over test "
        "instances (± SEM), at every checkpoint. Centring subtracts one number per test "
        "instance and changes no rank, so FT-LDS uses the adjusted difference as it is. The "
        "noise ceiling is the measured effects' split-half agreement over seeds, stepped up "
        "by Spearman–Brown: what a method that predicted the noise-free effects would reach.</p>"
    ]
    if ev.rows["ft_lds"]:
        out.append("".join(f"<p>{_esc(s)}</p>" for s in ft_lds_sentences(
            ev.rows["ft_lds"], ev.rows["ft_lds_ceiling"])))  # fmt: skip
        out.append(_ft_lds_table(ev))
    else:
        out.append("<p class='meta'>FT-LDS ranks groups: it needs at least 3.</p>")
    left = info.get("methods_without_members") or []
    if left:
        out.append(
            f"<p class='meta'>Not in these tables: {_esc(', '.join(left))} (their scores do "
            "not cover every group member).</p>"
        )
    out.append(_attribution_table(ev))
    out.append(_additivity_section(ev))
    return out


# -- examples ----------------------------------------------------------------------------------
def _is_number(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def describe_html(desc: Mapping | None) -> str:
    """A compact HTML rendering of a :func:`fimo.evaluate.describe` dict.

    >>> describe_html({"label": ">50K", "age": "38", "education": "Masters"})
    "<span class='lab'>&gt;50K</span> · <span title='age: 38; education: Masters'>age 38, Masters</span>"
    """
    if not desc:
        return ""
    desc = dict(desc)
    parts = []
    if "label" in desc:
        parts.append(f"<span class='lab'>{_esc(desc.pop('label'))}</span>")
    if "image" in desc:
        parts.append(f"<img class='thumb' alt='instance' src='{_esc(desc.pop('image'))}'>")
    if "text" in desc:
        parts.append(f"“{_esc(desc.pop('text'))}”")
    if desc:
        full = "; ".join(f"{k}: {v}" for k, v in desc.items())
        short = ", ".join(f"{k} {v}" if _is_number(str(v)) else str(v) for k, v in desc.items())
        parts.append(f"<span title='{_esc(full)}'>{_esc(short)}</span>")
    return " · ".join(parts)


def _pick(row: Mapping, L: int, desc: Mapping | None, source: str) -> str:
    score = f"{float(row['score']):+.3g}"
    extra = (
        ""
        if source == "gold"
        else f"; gold {float(row['gold']):+.3g}, gold rank {row['gold_rank']}/{L}"
    )
    return (
        f"<div class='pick'><span class='lab'>#{int(row['train'])}</span> "
        f"<span class='score'>{_esc(score + extra)}</span>"
        + (f"<br><span class='desc'>{describe_html(desc)}</span>" if desc else "")
        + "</div>"
    )


def _examples(ev) -> list[str]:
    rows = ev.rows["examples"]
    if not rows:
        return ["<p class='meta'>No examples were chosen.</p>"]
    L = len(ev.gold.left_out)
    out = [
        f"<p>For each chosen test instance, the left-out training instances with the largest "
        f"(most helpful: removing them raises the test loss) and smallest (most harmful) "
        f"scores, by the centred gold standard at epoch {_esc(epoch_text(rows[0]['epoch']))} "
        f"and by each method. Next to a method's pick: the gold standard's score for it and "
        f"its rank among the {L} left-out instances (1 = most helpful).</p>"
    ]
    desc_test = ev.descriptions.get("test", {})
    desc_train = ev.descriptions.get("train", {})
    for group in example_groups(rows):
        t = group["test"]
        head = f"<h3>Test instance #{t}</h3>"
        if t in desc_test:
            head += f"<p class='desc'>{describe_html(desc_test[t])}</p>"
        body = []
        for entry in group["sources"]:
            source = entry["source"]
            cells = [
                "<td class='left'>"
                + "".join(
                    _pick(r, L, desc_train.get(int(r["train"])), source) for r in entry[direction]
                )
                + "</td>"
                for direction in ("helpful", "harmful")
            ]
            name = "gold standard" if source == "gold" else source
            body.append(f"<tr><td><b>{_esc(name)}</b></td>{''.join(cells)}</tr>")
        out.append(
            head
            + _table(
                "<th>by</th><th class='left'>most helpful</th><th class='left'>most harmful</th>",
                body,
            )
        )
    if not desc_train:
        out.append(
            "<p class='meta'>The data could not be loaded for this run, so instances are shown "
            "by index only.</p>"
        )
    return out


# -- reading -----------------------------------------------------------------------------------
def _reading(ev) -> str:
    S = len(ev.gold.seeds)
    items = [
        "<b>Scores</b>: positive = helpful — removing the training instance would raise the "
        "test instance's loss. Every method and the gold standard use this sign.",
        "<b>Gold standard</b>: further training from the final weights with and without each "
        "left-out instance, paired by seed; <i>adjusted</i> = loss without minus loss with "
        "(eq. 17); <i>centred</i> = minus its mean over the left-out instances (eq. 13).",
        "<b>mean ± SEM</b>: over test instances (SEM = standard deviation / √n). "
        "<small class='n'>n=…</small> after a value: it is defined for fewer test instances "
        "than were scored, because a score vector was constant (undefined values are left "
        "out, never counted as zero); n/a: defined for none.",
        "<b>Top-k overlap</b>: the share of the gold standard's k most helpful (or harmful) "
        "instances that the method also puts in its k; ties at the boundary count by their "
        "chance of being picked. Chance level is k / L.",
        "<b>Sign agreement</b>: the share of instances whose score has the gold standard's "
        "sign (exact zeros are not counted).",
        f"<b>Seeds</b>: this gold standard averages {S} {plural(S, 'seed')}; its noise "
        "limits every agreement (see the noise ceiling).",
        "<b>Files</b>: the numbers are in <code>metrics/*.csv</code> (and <code>.parquet</code> "
        "when pyarrow is installed): <code>by_checkpoint</code>, <code>seed_count</code>, "
        "<code>noise_floor</code>, <code>calibration</code>, <code>sorted_curves</code>, "
        "<code>examples</code>; the figures in <code>plots/</code> as PNG and SVG.",
    ]
    return "<ul class='defs'>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"
