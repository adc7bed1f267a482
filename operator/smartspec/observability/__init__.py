"""Logs, metrics and Event reasons (SPEC-001 principle 4).

Contract: specs/CORE-002-spec-registry.md, section "Observability".
"""
