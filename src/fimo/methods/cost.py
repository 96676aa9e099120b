"""How long a method's long loop will take, said once before most of it runs.

A :class:`CostProbe` is ticked after each unit of a loop (a curvature product, a chunk of
training instances). At the second tick it extrapolates: the first unit (which may carry
one-off work, such as building curvature factors) plus the second unit's time for every
unit still to come; when that exceeds :data:`ANNOUNCE_AFTER` seconds it logs one line on
the ``fimo.cost`` logger with the setting that would cut it. ``fimo run`` prints those lines
above the method's progress bar (:func:`announcements`); from Python they are ordinary
``logging`` records at level INFO.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger("fimo.cost")
logger.setLevel(logging.INFO)

#: A loop estimated to take longer than this many seconds is announced.
ANNOUNCE_AFTER = 30.0


def estimate_seconds(first: float, per_unit: float, done: float, total: float) -> float:
    """The whole loop's seconds: ``first`` for the ``done`` units timed so far, plus
    ``per_unit`` for each of the other ``total - done``.

    >>> estimate_seconds(first=2.0, per_unit=0.5, done=1, total=11)
    7.0
    """
    return first + per_unit * max(0.0, total - done)


def duration(seconds: float) -> str:
    """A duration as a person says it.

    >>> duration(0.17), duration(42), duration(103), duration(840), duration(3 * 3600 + 600)
    ('0.17 s', '42 s', '1.7 min', '14 min', '3.2 h')
    """
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 10 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def now() -> float:
    """The probes' clock: :func:`time.perf_counter` (a test may replace it with a fake one).

    >>> now() <= now()
    True
    """
    return time.perf_counter()


class CostProbe:
    """Times the first two ticks of a loop of ``total`` units and announces the estimate once.

    ``what`` names the work ("1000 curvature products (depth 1000 × repeat 1)"), ``cut`` the
    setting that would cut it ("lower depth or hessian_samples"). ``repeats``: the loop runs
    that many times (e.g. once per seed), each time with its own first unit; the estimate is
    for all of them. ``clock``: seconds, :func:`now` by default.

    >>> times = iter([0.0, 4.0, 5.0])  # a fake clock: start, after unit 1, after unit 2
    >>> probe = CostProbe("100 steps", 100, "lower depth", clock=lambda: next(times))
    >>> probe.tick(), probe.tick()
    (None, 'about 1.7 min for 100 steps (1 s each); lower depth to cut it')
    """

    def __init__(
        self,
        what: str,
        total: float,
        cut: str,
        clock: Callable[[], float] | None = None,
        threshold: float | None = None,
        repeats: int = 1,
    ):
        self.what, self.total, self.cut = what, total, cut
        self.clock = clock or now
        self.threshold = ANNOUNCE_AFTER if threshold is None else threshold
        self.repeats = repeats
        self.started = self.clock()
        self.ticks: list[tuple[float, float]] = []  # (time, units done) at the first two ticks

    def tick(self, units: float = 1) -> str | None:
        """Count ``units`` done; at the second tick, the announcement (or None when short).

        >>> times = iter([0.0, 1.0, 1.5])
        >>> probe = CostProbe("scoring", 100, "score fewer", clock=lambda: next(times))
        >>> probe.tick(10), probe.tick(10)  # 1 s + 90 × 0.05 s = 5.5 s: too short to announce
        (None, None)
        >>> times = iter([0.0, 1.0, 1.5])
        >>> probe = CostProbe("8 × 100 units", 100, "do less", lambda: next(times), repeats=8)
        >>> probe.tick(10), probe.tick(10)  # 8 × 5.5 s
        (None, 'about 44 s for 8 × 100 units (0.05 s each); do less to cut it')
        """
        if len(self.ticks) >= 2:
            return None
        done = units + (self.ticks[-1][1] if self.ticks else 0)
        self.ticks.append((self.clock(), done))
        if len(self.ticks) < 2 or (done >= self.total and self.repeats == 1):
            return None
        (t1, done1), (t2, _) = self.ticks
        first = t1 - self.started
        per_unit = (t2 - t1) / units
        seconds = self.repeats * estimate_seconds(first, per_unit, done1, self.total)
        if seconds < self.threshold:
            return None
        message = (
            f"about {duration(seconds)} for {self.what} ({duration(per_unit)} each); "
            f"{self.cut} to cut it"
        )
        logger.info(message)
        return message


@contextmanager
def announcements(show: Callable[[str], None]) -> Iterator[None]:
    """Pass every announcement made inside the block to ``show`` (e.g. a console's print).

    >>> shown = []
    >>> with announcements(shown.append):
    ...     logger.info("about 14 min for the work")
    >>> shown
    ['about 14 min for the work']
    """

    class Show(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            show(record.getMessage())

    handler = Show()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
