"""Pure builders: resource models and settings in, Kubernetes manifests (plain dicts) out.

Contract: specs/CORE-001-resources.md. Imports no I/O library (enforced by import-linter).
"""
