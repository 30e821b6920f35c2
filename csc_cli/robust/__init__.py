"""Robust inference: test-time lambda policies and the label-free per-input lambda rules."""

from .lam import LambdaPolicy, csc_layer_names, first_csc_layer, lambda_override, layer_lambdas
from .rules import (RULES, DiscrepancyRule, LambdaRule, ResidualRule, SigmaRule, TableRule, fit_rules, noise_sigma,
                    reconstruction_error, rule_from_dict)

__all__ = ["LambdaPolicy", "LambdaRule", "ResidualRule", "SigmaRule", "TableRule", "DiscrepancyRule", "RULES",
           "fit_rules", "noise_sigma", "rule_from_dict", "csc_layer_names", "first_csc_layer", "lambda_override",
           "layer_lambdas", "reconstruction_error"]
