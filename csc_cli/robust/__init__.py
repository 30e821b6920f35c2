"""Robust inference: test-time lambda policies (and, later, adaptive attacks)."""

from .lam import LambdaRule, csc_layer_names, first_csc_layer, lambda_override, reconstruction_error

__all__ = ["LambdaRule", "csc_layer_names", "first_csc_layer", "lambda_override", "reconstruction_error"]
