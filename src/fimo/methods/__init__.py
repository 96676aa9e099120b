"""Attribution methods. Each returns `Scores` (n_test, n_train), positive = helpful."""

from fimo.methods.first_order import grad_cos, grad_dot

#: Methods by their contract names (DESIGN.md ◆ Method names).
METHODS = {"grad_dot": grad_dot, "grad_cos": grad_cos}

#: Every name the contract reserves; those not in METHODS are not implemented yet.
ALL_METHOD_NAMES = (
    "grad_dot", "grad_cos", "explicit", "cg", "lissa", "lissa_hessian",
    "arnoldi", "generalized", "ekfac", "datainf", "trak",
)  # fmt: skip

__all__ = ["ALL_METHOD_NAMES", "METHODS", "grad_cos", "grad_dot"]
