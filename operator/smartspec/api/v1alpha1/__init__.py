"""smartspec.dev/v1alpha1: the Spec, GenerationRun and CreditBudget resources.

Contract: specs/CORE-001-resources.md.
"""

from __future__ import annotations

from .common import API_VERSION, CATEGORY, GROUP, VERSION, Condition, Resource
from .creditbudget import CreditBudget
from .generationrun import GenerationRun
from .spec import Spec

RESOURCES: tuple[type[Resource], ...] = (Spec, GenerationRun, CreditBudget)
"""Every kind served by this version, in the order CRDs are installed."""

__all__ = [
    "API_VERSION",
    "CATEGORY",
    "GROUP",
    "RESOURCES",
    "VERSION",
    "Condition",
    "CreditBudget",
    "GenerationRun",
    "Resource",
    "Spec",
]
