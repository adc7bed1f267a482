"""The LLM gateway: OpenAI-compatible, budgeted, recorded.

Contract: specs/CORE-003-gateway-and-budgets.md.
"""

from __future__ import annotations
