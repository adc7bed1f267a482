"""Test-suite wiring: the real control plane, local node and S3 fixtures.

See specs/TEST-001-control-plane.md.
"""

pytest_plugins = ["testcluster.plugin"]
