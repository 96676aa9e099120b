"""Settings a method takes from its family when a preset does not give it its own.

A preset tunes the methods it lists (the influence family's ``hessian_samples = 2000`` on
``adult``, LiSSA's depth on ``mnist``). A method named on the command line that the preset
does not list (``fimo run adult --methods lissa_hessian``) would otherwise run with its
library defaults, e.g. its curvature from all 32,561 instances, for minutes where its siblings
take seconds. It takes instead, for each setting it has no value for, the value of its
nearest sibling that sets it, among the methods for which that setting means the same thing
(:data:`SHARING`).
"""

from __future__ import annotations

from fimo.methods import ALL_METHOD_NAMES, method_defaults

INFLUENCE = ("cg", "lissa", "lissa_hessian", "arnoldi", "generalized", "explicit")
#: (methods, settings): the methods for which these settings mean the same thing, nearest
#: sibling first; ``None`` is every setting (the two LiSSA variants share one signature).
#: A method looks through the groups that hold it in this order.
SHARING: tuple[tuple[tuple[str, ...], tuple[str, ...] | None], ...] = (
    (("lissa", "lissa_hessian"), None),
    (("cg", "generalized"), ("tol", "max_iter", "hessian")),
    (INFLUENCE, ("damping", "damping_factor", "hessian_samples", "hessian_seed")),
    ((*INFLUENCE, "datainf", "ekfac", "trak"), ("hessian_samples", "hessian_seed")),
)


def family_settings(name: str, tables: dict[str, dict]) -> dict:
    """The settings ``name`` takes from its siblings' ``tables`` (method → its settings).

    >>> family_settings("lissa_hessian", {"lissa": {"depth": 200, "hessian_samples": 180}})
    {'depth': 200, 'hessian_samples': 180}
    >>> family_settings("explicit", {"cg": {"hessian_samples": 2000, "max_iter": 200}})
    {'hessian_samples': 2000}
    """
    accepted = method_defaults(name)
    found: dict = {}
    for methods, keys in SHARING:
        if name not in methods:
            continue
        for key in accepted if keys is None else keys:
            if key in found or key not in accepted:
                continue
            for sibling in methods:
                if sibling != name and key in tables.get(sibling, {}):
                    found[key] = tables[sibling][key]
                    break
    return found


def with_family_settings(names: list[str], listed: list[str], tables: dict[str, dict]) -> dict:
    """``tables`` with every method of ``names`` that is not in ``listed`` given its family's
    settings (:func:`family_settings`) under the ones it has itself.

    >>> tables = {"cg": {"hessian_samples": 2000}}
    >>> with_family_settings(["cg", "lissa_hessian"], ["cg"], tables)["lissa_hessian"]
    {'hessian_samples': 2000}
    """
    out = {name: dict(values) for name, values in tables.items()}
    for name in names:
        if name in listed or name not in ALL_METHOD_NAMES:  # an unknown name: validation says so
            continue
        inherited = family_settings(name, tables)
        if inherited:
            out[name] = {**inherited, **out.get(name, {})}
    return out
