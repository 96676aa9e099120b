"""The sections of the full HTML report (see :func:`fimo.evaluate.report.write_report`)."""

from __future__ import annotations

from collections.abc import Mapping

from fimo.evaluate.metrics import ALL_METRICS
from fimo.evaluate.plots import gold_name, label, png_data_uri
from fimo.evaluate.report import (
    _epoch,
    _esc,
    _img,
    _metric_table,
    _num,
    _sci,
    _settings_sections,
    headline,
)

SECTIONS = (
    ("summary", "Summary"),
    ("agreement", "Agreement"),
    ("metrics", "Every metric"),
    ("noise", "Noise floor"),
    ("seeds", "Seeds"),
    ("calibration", "Calibration"),
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


def _figure(figures: Mapping[str, bytes], name: str) -> str:
    if name not in figures:
        return f"<p class='meta'>(no {_esc(name.replace('_', ' '))} figure: nothing to draw)</p>"
    return _img(png_data_uri(figures[name]), FIGURE_ALT.get(name, name))


def full_report(ev, rows, settings, manifest, notes, figures) -> list[str]:
    """The body of the full report, as a list of HTML fragments."""
    if figures is None:
        from fimo.evaluate.plots import evaluation_figures, figure_bytes

        figures = {k: figure_bytes(f, ("png",))["png"] for k, f in evaluation_figures(ev).items()}
    gold = ev.gold
    T = len(gold.test)
    noise = ev.rows["noise_floor"]
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    S = len(gold.seeds)
    parts = [
        "<nav>" + "".join(f"<a href='#{k}'>{_esc(v)}</a>" for k, v in SECTIONS) + "</nav>",
        f"<p class='meta'>Methods: {_esc(', '.join(methods) or 'none')}. Gold standard: "
        f"{S} seeds × {len(gold.left_out)} left-out × {T} test instances; checkpoints at "
        f"epochs {_esc(', '.join(_epoch(e) for e in gold.epochs))}.</p>",
        "<h2 id='summary'>Summary</h2><div class='summary'>",
        "".join(f"<p>{_esc(s)}</p>" for s in headline(ev)),
        "</div>",
    ]

    parts += [
        "<h2 id='agreement'>Agreement over further training</h2>",
        "<p>Each method's scores against the centred gold standard (paper eq. 13) at every "
        "checkpoint of further training: the mean over test instances of the per-instance "
        "cosine similarity, with a band of ±1 standard error. The dashed line is the noise "
        "ceiling: what a perfect method would reach against a gold standard of this many "
        "seeds (see <a href='#noise'>Noise floor</a>).</p>",
        _figure(figures, "cosine"),
        _metric_table(rows, "cosine", True, expected=T, noise=noise),
        _metric_table(rows, "spearman", True, expected=T, noise=noise),
    ]

    parts += [
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

    parts += ["<h2 id='noise'>Noise floor</h2>", *_noise_section(ev)]
    parts += ["<h2 id='seeds'>Number of seeds</h2>", *_seed_section(ev, figures)]
    parts += ["<h2 id='calibration'>Calibration</h2>", *_calibration_section(ev, figures)]
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
    if notes:
        parts.append("<h2 id='notes'>Notes</h2><ul>")
        parts.extend(f"<li>{_esc(n)}</li>" for n in notes)
        parts.append("</ul>")
    parts += _settings_sections(settings, manifest)
    return parts


# -- noise floor -------------------------------------------------------------------------------
_ESTIMATES = {
    "split_half": "split-half ({seeds} vs {seeds} seeds)",
    "spearman_brown": "Spearman–Brown, {seeds} vs {seeds} seeds",
    "ceiling": "ceiling for a perfect method ({seeds} seeds)",
}


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
    checkpoints = sorted({(int(r["checkpoint"]), float(r["epoch"])) for r in rows})
    splits = int(rows[0]["splits"])
    head = "".join(f"<th>epoch {_esc(_epoch(e))}</th>" for _, e in checkpoints)
    cells = {
        (r["metric"], bool(r["centred"]), r["estimate"], int(r["checkpoint"])): r for r in rows
    }
    out = [intro]
    for flag in (True, False):
        body = []
        for metric in dict.fromkeys(r["metric"] for r in rows):
            for estimate, text in _ESTIMATES.items():
                any_row = next(
                    (v for k, v in cells.items() if k[:3] == (metric, flag, estimate)), None
                )
                if any_row is None:
                    continue
                name = f"{label(metric)}: {text.format(seeds=any_row['seeds'])}"
                tds = ""
                for c, _ in checkpoints:
                    r = cells.get((metric, flag, estimate, c))
                    tds += f"<td>{_esc(_num(r['mean'], r['sem'], 3))}</td>" if r else "<td>–</td>"
                body.append(f"<tr><td>{_esc(name)}</td>{tds}</tr>")
        if not body:
            continue
        table = (
            f"<div class='table-wrap'><table><thead><tr><th>{_esc(gold_name(flag))} gold "
            f"standard</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        )
        if flag:
            out.append(table)
        else:
            caveat = (
                "<p class='meta'>Without centring, most of the seed noise is a shift shared by "
                "every left-out instance (the full run's own noise). A method that ignores such "
                "shifts does not see it, so these values do not bound the methods' agreement "
                "with the adjusted-only gold standard; no ceiling is drawn for it.</p>"
            )
            out.append(
                f"<details><summary>Adjusted-only gold standard</summary>{caveat}{table}</details>"
            )
    out.append(
        f"<p class='meta'>{splits} split{'s' if splits != 1 else ''} of the {S} seeds "
        f"(mean ± SEM over test instances; the SEM of the stepped-up values is carried "
        f"through the formula).</p>"
    )
    return out


# -- seeds -------------------------------------------------------------------------------------
def _seed_table(rows, metric: str, centred: bool) -> str:
    best = [
        r for r in rows if r["best"] and r["metric"] == metric and bool(r["centred"]) == centred
    ]
    if not best:
        return ""
    ks = sorted({int(r["k"]) for r in rows if r["metric"] == metric})
    windows = {int(r["k"]): int(r["windows"]) for r in rows}
    cells = {(r["method"], int(r["k"])): r for r in best}
    head = "".join(
        f"<th>k = {k} ({windows[k]} window{'s' if windows[k] != 1 else ''})</th>" for k in ks
    )
    body = []
    for m in dict.fromkeys(r["method"] for r in rows):
        tds = []
        for k in ks:
            r = cells.get((m, k))
            if r is None:
                tds.append("<td>n/a</td>")
            else:
                tds.append(
                    f"<td>{_esc(_num(r['mean'], r['sem'], 3))} "
                    f"<small>(epoch {_esc(_epoch(r['epoch']))})</small></td>"
                )
        body.append(f"<tr><td>{_esc(m)}</td>{''.join(tds)}</tr>")
    return (
        f"<h3>{_esc(label(metric)[:1].upper() + label(metric)[1:])}, {gold_name(centred)} gold "
        f"standard: best checkpoint for each k</h3><div class='table-wrap'><table><thead><tr>"
        f"<th>method</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
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


# -- calibration -------------------------------------------------------------------------------
def _calibration_table(rows, centred: bool) -> str:
    rows = [r for r in rows if bool(r["centred"]) == centred]
    if not rows:
        return ""
    checkpoints = sorted({(int(r["checkpoint"]), float(r["epoch"])) for r in rows})
    cells = {(r["method"], int(r["checkpoint"]), r["quantity"]): r for r in rows}
    head = "".join(f"<th>epoch {_esc(_epoch(e))}</th>" for _, e in checkpoints)
    body = []
    for m in dict.fromkeys(r["method"] for r in rows):
        tds = []
        for c, _ in checkpoints:
            a = cells.get((m, c, "pooled_scale"))
            r2 = cells.get((m, c, "pooled_r2"))
            per = cells.get((m, c, "r2"))
            med = cells.get((m, c, "scale_median"))
            if a is None:
                tds.append("<td>–</td>")
                continue
            tds.append(
                f"<td>scale {_esc(_sci(a['value']))}, R² {_esc(_num(r2['value'], None, 2))}"
                f"<br><small>per test: R² {_esc(_num(per['value'], per['sem'], 2))}, median "
                f"scale {_esc(_sci(med['value']))}</small></td>"
            )
        body.append(f"<tr><td>{_esc(m)}</td>{''.join(tds)}</tr>")
    return (
        f"<div class='table-wrap'><table><thead><tr><th>method ({gold_name(centred)})</th>"
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


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
    first = rows[0]
    out = [
        f"<p>For each chosen test instance, the left-out training instances with the largest "
        f"(most helpful: removing them raises the test loss) and smallest (most harmful) "
        f"scores, by the centred gold standard at epoch {_esc(_epoch(first['epoch']))} and "
        f"by each method. Next to a method's pick: the gold standard's score for it and its "
        f"rank among the {L} left-out instances (1 = most helpful).</p>"
    ]
    desc_test = ev.descriptions.get("test", {})
    desc_train = ev.descriptions.get("train", {})
    for t in dict.fromkeys(int(r["test"]) for r in rows):
        mine = [r for r in rows if int(r["test"]) == t]
        head = f"<h3>Test instance #{t}</h3>"
        if t in desc_test:
            head += f"<p class='desc'>{describe_html(desc_test[t])}</p>"
        body = []
        for source in dict.fromkeys(r["source"] for r in mine):
            cells = []
            for direction in ("helpful", "harmful"):
                picks = sorted(
                    (r for r in mine if r["source"] == source and r["direction"] == direction),
                    key=lambda r: int(r["rank"]),
                )
                cells.append(
                    "<td class='left'>"
                    + "".join(_pick(r, L, desc_train.get(int(r["train"])), source) for r in picks)
                    + "</td>"
                )
            name = "gold standard" if source == "gold" else source
            body.append(f"<tr><td><b>{_esc(name)}</b></td>{''.join(cells)}</tr>")
        out.append(
            head + "<div class='table-wrap'><table><thead><tr><th>by</th><th class='left'>most "
            "helpful</th><th class='left'>most harmful</th></tr></thead><tbody>"
            + "".join(body)
            + "</tbody></table></div>"
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
        f"<b>Seeds</b>: this gold standard averages {S} seed{'s' if S != 1 else ''}; its noise "
        "limits every agreement (see the noise ceiling).",
        "<b>Files</b>: the numbers are in <code>metrics/*.csv</code> (and <code>.parquet</code> "
        "when pyarrow is installed): <code>by_checkpoint</code>, <code>seed_count</code>, "
        "<code>noise_floor</code>, <code>calibration</code>, <code>sorted_curves</code>, "
        "<code>examples</code>; the figures in <code>plots/</code> as PNG and SVG.",
    ]
    return "<ul class='defs'>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"
