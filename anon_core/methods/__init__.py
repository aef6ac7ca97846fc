"""Anonymization methods, chosen by name from one registry."""

from faceveil.anon_core.methods import (
    baselines,  # noqa: F401  (registers blur, pixelate, mask)
    surrogate,  # noqa: F401  (registers surrogate)
)
from faceveil.anon_core.methods.base import Anonymizer, MethodOutput, available, create, register

__all__ = ["Anonymizer", "MethodOutput", "available", "create", "register"]
