"""SmartSpec: a Kubernetes operator that turns governed specifications into tested code.

Contract: specs/SPEC-001-overview.md.
"""

__version__ = "0.1.0"
