"""Worker processes end when the process that started them ends.

A worker whose driver was stopped with SIGTERM or ``kill -9`` would otherwise go on computing
shards nobody collects (~300 MB each). Two mechanisms, both bound to the driver's process id:
on Linux the kernel sends the worker SIGKILL when its parent ends (``PR_SET_PDEATHSIG``), and
everywhere a daemon thread polls ``os.getppid()``, which changes when the parent dies and the
worker is handed to another process.

Both must be bound to the *driver's* id, and as early as possible: a spawned worker spends
seconds importing torch (tens of seconds on a loaded machine) before the pool's initializer
runs, and a driver killed in that window has already handed the worker to another parent,
so a worker that asked for its parent's id then would watch the wrong process forever. So
the pool's arguments start with a :class:`Lifeline`, which binds the worker to the driver
while the arguments are being unpickled, before anything that imports torch. This module
imports nothing heavy for the same reason.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable


class Lifeline:
    """Made in the driver; unpickled in a worker, it binds the worker to the driver
    (:func:`end_with_parent`) and becomes the driver's process id.

    >>> Lifeline().driver == os.getpid()
    True
    """

    def __init__(self) -> None:
        self.driver = os.getpid()

    def __reduce__(self):
        return (end_with_parent, (self.driver,))


def start_worker(driver: int, setup: Callable, *args) -> None:
    """A pool's initializer: ``initargs=(Lifeline(), setup, *args)`` binds the worker to its
    driver while they are unpickled (``driver`` arrives as the driver's id), then runs
    ``setup(*args)``. ``setup`` comes after the lifeline, so the module it imports (and torch)
    loads only once the worker is bound.

    >>> start_worker(os.getppid(), print, "ready")
    ready
    """
    setup(*args)


def end_with_parent(parent: int | None = None, poll_seconds: float = 0.2) -> int:
    """End this process (at once, exit code 1) when process ``parent`` (default: the current
    parent) is no longer its parent; returns ``parent``.

    Exits at once if that has already happened (the driver ended while this worker started).
    Shown in child processes (it would bind the process running it to its parent):

    >>> import subprocess
    >>> src = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    >>> def child(call):
    ...     code = f"from fimo.further.lifeline import end_with_parent; {call}"
    ...     env = {**os.environ, "PYTHONPATH": src}
    ...     return subprocess.run([sys.executable, "-c", code], env=env).returncode
    >>> child("end_with_parent()"), child("end_with_parent(parent=1)")  # 1 is not its parent
    (0, 1)
    """
    parent = os.getppid() if parent is None else parent
    _kill_me_with_parent()
    if os.getppid() != parent:  # the driver ended before the request above was made
        os._exit(1)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(poll_seconds)

    threading.Thread(target=watch, name="fimo-end-with-parent", daemon=True).start()
    return parent


def _kill_me_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent ends (prctl PR_SET_PDEATHSIG); a
    no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no libc with prctl: the polling thread remains
        pass
