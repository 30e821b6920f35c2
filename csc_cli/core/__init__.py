"""The one solver core: pure tensor math for convolutional sparse coding (no modules, no I/O)."""

from .lasso import (
    BACKWARDS,
    METHODS,
    LassoTerms,
    SolverTrace,
    conjugate_gradient,
    fista_momentum,
    lasso_terms,
    nonneg_soft_threshold,
    prox_l1,
    soft_threshold,
    solve_lasso,
)
from .operators import (
    PADDING_MODES,
    ConvGeometry,
    Geometry,
    TransposedConvGeometry,
    dense_matrix,
    lipschitz_upper_bound,
    normalize_atoms,
    power_iteration,
)

__all__ = [
    "BACKWARDS",
    "METHODS",
    "PADDING_MODES",
    "ConvGeometry",
    "Geometry",
    "LassoTerms",
    "SolverTrace",
    "TransposedConvGeometry",
    "conjugate_gradient",
    "dense_matrix",
    "fista_momentum",
    "lasso_terms",
    "lipschitz_upper_bound",
    "nonneg_soft_threshold",
    "normalize_atoms",
    "power_iteration",
    "prox_l1",
    "soft_threshold",
    "solve_lasso",
]
