"""The most helpful and most harmful training instances of every test instance scored,
and the small HTML page that shows them (``fimo attribute``).

:func:`top_instances` ranks a score matrix (no gold standard needed); :func:`attribution_page`
lays the picks of one or more methods out, one section per method, with each instance
decoded as the report decodes its examples (:func:`fimo.evaluate.describe`,
:func:`fimo.evaluate.report.describe_html`).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np

from fimo.errors import InputError
from fimo.evaluate.report import describe_html

__all__ = ["attribution_page", "top_instances"]

DIRECTIONS = ("helpful", "harmful")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 64rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 2px solid #bbb; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; border-bottom: 1px solid #ddd; }
.meta { color: #666; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1rem; width: 100%; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
thead th { background: #f4f4f4; }
td.num { text-align: right; font-family: ui-monospace, Menlo, Consolas, monospace; }
img.thumb { image-rendering: pixelated; border: 1px solid #ccc; vertical-align: middle; }
.lab { font-weight: 600; }
.desc { font-size: 0.8rem; }
"""


def top_instances(values, test, train, k: int, sem=None) -> list[dict]:
    """The ``k`` most helpful (largest scores) and ``k`` most harmful (smallest) training
    instances of each test instance, from a (n_test, n_train) score matrix.

    One row per pick: ``test`` and ``train`` (dataset indices), ``direction`` ("helpful" or
    "harmful"), ``rank`` (1 = strongest), ``score`` and ``sem`` (its seed-to-seed standard
    error, NaN without one). Ties keep the training order.

    >>> rows = top_instances([[0.5, -0.2, 0.1]], test=[7], train=[4, 5, 6], k=1)
    >>> [(r["direction"], r["train"], r["score"]) for r in rows]
    [('helpful', 4, 0.5), ('harmful', 5, -0.2)]
    """
    values = np.asarray(values, dtype=np.float64)
    test, train = np.asarray(test).reshape(-1), np.asarray(train).reshape(-1)
    if values.shape != (len(test), len(train)):
        raise InputError(
            f"top instances: scores have shape {values.shape}; expected ({len(test)}, "
            f"{len(train)}) for the test and train indices given"
        )
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"--top: got {k!r}; must be a whole number ≥ 1")
    errors = np.full_like(values, np.nan) if sem is None else np.asarray(sem, np.float64)
    rows = []
    for j, t in enumerate(test):
        order = np.argsort(-values[j], kind="stable")
        picks = {"helpful": order[:k], "harmful": np.argsort(values[j], kind="stable")[:k]}
        for direction in DIRECTIONS:
            for rank, i in enumerate(picks[direction], start=1):
                rows.append(
                    {
                        "test": int(t),
                        "direction": direction,
                        "rank": rank,
                        "train": int(train[i]),
                        "score": float(values[j, i]),
                        "sem": float(errors[j, i]),
                    }
                )
    return rows


def score_text(score: float, sem: float) -> str:
    """A score with its standard error when it has one, to three significant digits.

    >>> score_text(0.012345, 0.0021), score_text(-3.0, float("nan"))
    ('+0.0123 ± 0.0021', '-3')
    """
    text = f"{score:+.3g}"
    return f"{text} ± {sem:.2g}" if np.isfinite(sem) else text


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _cell(row: Mapping, desc: Mapping | None) -> str:
    shown = describe_html(desc) if desc else ""
    return (
        f"<td class='num'>{row['rank']}</td><td class='num'>#{row['train']}</td>"
        f"<td class='num'>{_esc(score_text(row['score'], row['sem']))}</td>"
        f"<td class='desc'>{shown}</td>"
    )


def _instance_section(t: int, rows: Sequence[Mapping], descriptions: Mapping) -> str:
    """One test instance: its description, then its helpful and harmful picks side by side."""
    test_desc = descriptions.get("test", {}).get(t)
    train_desc = descriptions.get("train", {})
    by = {d: [r for r in rows if r["direction"] == d] for d in DIRECTIONS}
    lines = []
    for helpful, harmful in zip(by["helpful"], by["harmful"], strict=True):
        lines.append(
            "<tr>"
            + _cell(helpful, train_desc.get(helpful["train"]))
            + _cell(harmful, train_desc.get(harmful["train"]))
            + "</tr>"
        )
    head = (
        "".join(f"<th colspan='4'>most {d}</th>" for d in DIRECTIONS)
        + "</tr><tr>"
        + "<th>rank</th><th>train</th><th>score</th><th>instance</th>" * 2
    )
    return (
        f"<h3>Test instance #{t}</h3>"
        + (f"<p class='desc'>{describe_html(test_desc)}</p>" if test_desc else "")
        + f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"
    )


def _method_section(section: Mapping, descriptions: Mapping) -> str:
    """One method: its name, its lines on what was computed, then each test instance's picks."""
    rows = section["rows"]
    tests = list(dict.fromkeys(int(r["test"]) for r in rows))
    meta = "".join(f"<p class='meta'>{_esc(line)}</p>" for line in section.get("meta", []))
    instances = "".join(
        _instance_section(t, [r for r in rows if r["test"] == t], descriptions) for t in tests
    )
    name = _esc(section["method"])
    return f"<h2 id='{name}'>{name}</h2>{meta}{instances}"


def attribution_page(sections: Sequence[Mapping], descriptions: Mapping, about: Mapping) -> str:
    """A self-contained HTML page of one or more methods' picks, each instance decoded.

    ``sections``: one per method, in the order shown, each a mapping with ``method`` (its
    name), ``rows`` (:func:`top_instances`' rows) and ``meta`` (lines on what it computed).
    ``descriptions`` is :func:`fimo.evaluate.examples.describe_examples`' dict for the rows of
    every section (may be empty: instances are then shown by index); ``about`` holds
    ``title`` and ``meta`` lines (text) for the whole page.

    >>> rows = top_instances([[0.5, -0.2]], test=[7], train=[4, 5], k=1)
    >>> page = attribution_page([{"method": "grad_dot", "rows": rows, "meta": ["in 0.1 s"]}],
    ...                         {"train": {4: {"label": "yes"}}}, {"title": "tiny"})
    >>> "<h2 id='grad_dot'>grad_dot</h2>" in page, "Test instance #7" in page
    (True, True)
    >>> "<span class='lab'>yes</span>" in page
    True
    """
    names = [str(section["method"]) for section in sections]
    contents = (
        "<p class='meta'>methods on this page: "
        + ", ".join(f"<a href='#{_esc(n)}'>{_esc(n)}</a>" for n in names)
        + "</p>"
        if len(names) > 1
        else ""
    )
    meta = "".join(f"<p class='meta'>{_esc(line)}</p>" for line in about.get("meta", []))
    reading = (
        "<p>A score estimates how much the test instance's loss would rise if the training "
        "instance were left out of further training from the final model: positive = helpful "
        "(leaving it out would hurt), negative = harmful. ± is the standard error over the "
        "further-training seeds, for methods that have seeds.</p>"
    )
    title = _esc(about.get("title", "fimo attribute"))
    body = "".join(_method_section(section, descriptions) for section in sections)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>{_CSS}</style></head><body>"
        f"<h1>{title}</h1>{meta}{contents}{reading}{body}</body></html>\n"
    )
