"""How numbers and names are written in the report's sentences, its tables and the terminal.

One place for these forms, so that the page, the figures and the terminal table write a
value the same way: ``0.91 ± 0.01``, ``epoch 1.5``, ``cosine similarity``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

METRIC_LABELS = {
    "cosine": "cosine similarity",
    "spearman": "Spearman rank correlation",
    "pearson": "Pearson correlation",
    "top5_helpful": "top-5 overlap, most helpful",
    "top10_helpful": "top-10 overlap, most helpful",
    "top5_harmful": "top-5 overlap, most harmful",
    "top10_harmful": "top-10 overlap, most harmful",
    "sign": "sign agreement",
}


def label(metric: str) -> str:
    """The readable name of a metric ("cosine similarity" for "cosine").

    >>> label("top5_helpful")
    'top-5 overlap, most helpful'
    """
    return METRIC_LABELS.get(metric, metric)


def gold_name(centred: bool) -> str:
    """'centred' or 'adjusted-only' (the gold standard of paper eq. 13 or eq. 17).

    >>> gold_name(False)
    'adjusted-only'
    """
    return "centred" if centred else "adjusted-only"


def is_finite(x) -> bool:
    """Whether ``x`` is a finite number (False for NaN, infinities, None and text).

    >>> is_finite(0.5), is_finite(float("nan")), is_finite(None)
    (True, False, False)
    """
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def epoch_text(epoch) -> str:
    """An epoch as the report writes it: the shortest form of the number.

    >>> epoch_text(2.0), epoch_text(0.25)
    ('2', '0.25')
    """
    return f"{float(epoch):g}"


def fixed(x, digits: int) -> str:
    """``x`` with ``digits`` decimals; a value that rounds to zero is '0.00', never '-0.00'.

    >>> fixed(-0.001, 2), fixed(0.126, 2)
    ('0.00', '0.13')
    """
    text = f"{float(x):.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0.0 else text


def mean_sem_text(mean, sem=None, digits: int = 2) -> str:
    """'0.91 ± 0.01' (or '0.91' without a finite SEM; 'n/a' for a NaN mean).

    >>> mean_sem_text(0.912, 0.01), mean_sem_text(0.9, float("nan"), 3), mean_sem_text(None)
    ('0.91 ± 0.01', '0.900', 'n/a')
    """
    if not is_finite(mean):
        return "n/a"
    text = fixed(mean, digits)
    if sem is not None and is_finite(sem):
        text += f" ± {fixed(sem, digits)}"
    return text


def sci(x) -> str:
    """Three significant digits ('n/a' when not finite), for scales of any size.

    >>> sci(0.000123456), sci(None)
    ('0.000123', 'n/a')
    """
    return f"{float(x):.3g}" if is_finite(x) else "n/a"


def lower_first(text: str) -> str:
    """``text`` with its first letter in lower case (to follow a lead-in).

    >>> lower_first("At the first checkpoint")
    'at the first checkpoint'
    """
    return text[:1].lower() + text[1:]


def upper_first(text: str) -> str:
    """``text`` with its first letter in upper case (to start a heading).

    >>> upper_first("cosine similarity")
    'Cosine similarity'
    """
    return text[:1].upper() + text[1:]


def join_words(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'.

    >>> join_words(["a"]), join_words(["a", "b"]), join_words(["a", "b", "c"])
    ('a', 'a and b', 'a, b and c')
    """
    items = list(items)
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def plural(n: int, word: str) -> str:
    """``word`` with an 's' unless ``n`` is 1.

    >>> plural(1, "seed"), plural(3, "seed")
    ('seed', 'seeds')
    """
    return word if n == 1 else word + "s"
