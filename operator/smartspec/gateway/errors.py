"""The gateway's error answers: OpenAI-style bodies with a status, a type and a code.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Errors".
"""

from __future__ import annotations

from aiohttp import web

from smartspec.gateway.accounting import BudgetUnavailableError
from smartspec.logic.refusals import Refusal
from smartspec.observability import metrics


class GatewayError(Exception):
    """An OpenAI-style error answer."""

    def __init__(
        self, status: int, error_type: str, message: str, code: str, **extra: object
    ) -> None:
        self.status = status
        self.error_type = error_type
        self.code = code
        self.extra = extra
        super().__init__(message)

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": str(self),
                "type": self.error_type,
                "code": self.code,
                **self.extra,
            }
        }

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status)


def bad_request(message: str, param: str, *, code: str = "invalid_request") -> GatewayError:
    """A 400 about one field of the request body."""
    return GatewayError(400, "invalid_request_error", message, code, param=param)


def refused(refusal: Refusal) -> GatewayError:
    """The answer to a refused call: the code, the binding constraint and its figures."""
    return GatewayError(
        refusal.http_status,
        refusal.error_type,
        refusal.message,
        refusal.code.value,
        constraint=refusal.constraint.value,
        **refusal.figures,
    )


def fail_closed(error: BudgetUnavailableError) -> GatewayError:
    """The budget cannot be read or written: refuse rather than spend blind."""
    metrics.REFUSALS.labels(reason="budget_unavailable").inc()
    return GatewayError(
        503, "budget_unavailable", f"{error}; refusing the call (fail closed)", "budget_unavailable"
    )
