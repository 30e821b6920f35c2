"""Datasets and transforms."""

from .digits import load_digits

__all__ = ["load_digits"]
