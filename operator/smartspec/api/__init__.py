"""Pure pydantic types of the smartspec.dev resources, by version.

Contract: specs/CORE-001-resources.md. Imports no I/O library (enforced by import-linter).
"""
