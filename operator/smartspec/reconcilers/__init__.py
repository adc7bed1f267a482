"""kopf glue: one module per kind, thin handlers over the pure logic.

Contract: specs/CORE-002-spec-registry.md (Spec); later kinds cite their own contracts.
"""
