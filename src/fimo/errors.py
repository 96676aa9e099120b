"""Errors that fimo raises on purpose.

`InputError` is a mistake in what the user gave (a setting, a file, an index): the CLI
prints its one-line message and exits with code 2. Anything else is an internal error
(exit code 1).
"""

from __future__ import annotations

import difflib


class InputError(ValueError):
    """Bad input: the message names the setting, the value received and what is allowed.

    >>> try:
    ...     check_choice("optimizer", "sgdd", ["sgd", "adam"])
    ... except InputError as error:
    ...     print(error)
    optimizer: got 'sgdd' (did you mean 'sgd'?); allowed: 'sgd', 'adam'
    """


def closest(name: str, choices) -> str:
    """' (did you mean X?)' when a close match exists, else ''.

    >>> closest("adlt", ["adult", "credit"]), closest("zzz", ["adult", "credit"])
    (" (did you mean 'adult'?)", '')
    """
    match = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_choice(setting: str, value, choices) -> None:
    """Raise InputError unless ``value`` is one of ``choices``.

    >>> check_choice("dtype", "float64", ["float32", "float64"])  # allowed: returns None
    >>> check_choice("dtype", "half", ["float32", "float64"])
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: dtype: got 'half'; allowed: 'float32', 'float64'
    """
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise InputError(
            f"{setting}: got {value!r}{closest(str(value), [str(c) for c in choices])}; "
            f"allowed: {allowed}"
        )


def check_keys(where: str, keys, allowed, ordered: bool = True) -> None:
    """Raise InputError naming the first of ``keys`` that is not in ``allowed`` (a table's
    unknown key), with the closest allowed one and the list (sorted unless ``ordered``).

    >>> check_keys("about", ["summary"], ["summary", "paper_counterpart"])  # returns None
    >>> check_keys("about", ["sumary"], ["summary", "paper_counterpart"])
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: about: unknown key 'sumary' (did you mean 'summary'?); allowed: paper_counterpart, summary
    """
    names = [str(a) for a in allowed]
    for key in keys:
        if key not in allowed:
            shown = names if not ordered else sorted(names)
            raise InputError(
                f"{where}: unknown key {key!r}{closest(str(key), names)}; "
                f"allowed: {', '.join(shown)}"
            )


class NumericalError(RuntimeError):
    """Numerical trouble (NaN or infinite losses, divergence): the message says where and what to try.

    >>> error = NumericalError("further training: loss is nan at step 3; lower lr")
    >>> isinstance(error, RuntimeError), str(error)
    (True, 'further training: loss is nan at step 3; lower lr')
    """
