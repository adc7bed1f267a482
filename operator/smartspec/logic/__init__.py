"""Pure decision logic: conditions, phases, budget arithmetic, naming.

Contract: specs/CORE-001-resources.md. Imports no I/O library (enforced by import-linter).
"""
