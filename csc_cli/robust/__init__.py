"""Robust inference: test-time lambda policies (and, later, adaptive attacks)."""

from .lam import (LambdaPolicy, LambdaRule, csc_layer_names, first_csc_layer, lambda_override, layer_lambdas,
                  reconstruction_error)

__all__ = ["LambdaPolicy", "LambdaRule", "csc_layer_names", "first_csc_layer", "lambda_override", "layer_lambdas",
           "reconstruction_error"]
