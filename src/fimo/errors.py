"""Errors that fimo raises on purpose.

`InputError` is a mistake in what the user gave (a setting, a file, an index): the CLI
prints its one-line message and exits with code 2. Anything else is an internal error
(exit code 1).
"""

from __future__ import annotations

import difflib


class InputError(ValueError):
    """Bad input: the message names the setting, the value received and what is allowed."""


def closest(name: str, choices) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    match = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_choice(setting: str, value, choices) -> None:
    """Raise InputError unless ``value`` is one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise InputError(
            f"{setting}: got {value!r}{closest(str(value), [str(c) for c in choices])}; "
            f"allowed: {allowed}"
        )


class NumericalError(RuntimeError):
    """Numerical trouble (NaN or infinite losses, divergence): the message says where and what to try."""
