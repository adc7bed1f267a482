"""The only code that talks to the Kubernetes API outside kopf.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Kubernetes access".
"""
