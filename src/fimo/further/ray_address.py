"""Ray addresses: their form is checked with the other settings, and whether anything answers
there before any work, so that a mistyped or unreachable cluster costs one line, not a
traceback after the final model has trained. Imports neither torch nor Ray.
"""

from __future__ import annotations

import re
import socket

from fimo.errors import InputError

#: the forms ``--address`` takes (``local`` starts a cluster here; ``auto`` finds this machine's)
FORMS = "auto, local, ray://HOST:PORT or HOST:PORT"

_HOST_PORT = re.compile(
    r"^(?:ray://)?(?P<host>[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})$"
)


def ray_endpoint(address: str | None) -> tuple[str, int] | None:
    """``(host, port)`` of a cluster's address; None for ``auto``, ``local`` or None (no host
    given); an InputError for anything else.

    >>> ray_endpoint("ray://10.0.0.5:10001"), ray_endpoint("auto")
    (('10.0.0.5', 10001), None)
    >>> ray_endpoint("ray//10.0.0.5")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: run.address: got 'ray//10.0.0.5'; expected auto, local, ray://HOST...
    """
    if address in (None, "auto", "local"):
        return None
    match = _HOST_PORT.match(address) if isinstance(address, str) else None
    if match is None or not 0 < int(match["port"]) < 65536:
        raise InputError(f"run.address: got {address!r}; expected {FORMS}")
    return match["host"].strip("[]"), int(match["port"])


def check_reachable(address: str | None, timeout: float = 3.0) -> None:
    """InputError unless something accepts a connection at the address's host and port (an
    address without one, such as ``auto``, is left to Ray).

    >>> check_reachable("auto")
    >>> check_reachable("ray://127.0.0.1:1", timeout=1.0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: run.address: nothing answers at 127.0.0.1:1 (...); start the ...
    """
    endpoint = ray_endpoint(address)
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(
            f"run.address: nothing answers at {endpoint[0]}:{endpoint[1]} ({reason}); start the "
            "cluster there (ray start --head) or correct the address"
        ) from None
