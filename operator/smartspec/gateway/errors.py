"""The gateway's error answers: OpenAI-style bodies with a status, a type and a code, or
the same error in Anthropic's shape for the Messages endpoint.

Contract: specs/CORE-003-gateway-and-budgets.md, sections "Errors" and "Anthropic Messages".
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

    def anthropic_body(self) -> dict[str, object]:
        """The same error as Anthropic's API writes it: `error.type` from the status (one
        table, `ANTHROPIC_ERROR_TYPES`), the gateway's code and figures kept beside it."""
        return {
            "type": "error",
            "error": {
                "type": anthropic_error_type(self.status),
                "message": str(self),
                "code": self.code,
                **self.extra,
            },
        }

    def anthropic_response(self) -> web.Response:
        return web.json_response(self.anthropic_body(), status=self.status)


ANTHROPIC_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}
"""Anthropic's `error.type` for each status the gateway answers with. Anthropic defines one
type per status; the status itself comes from where each refusal is decided (a Refusal's
`http_status`, the token check, the upstream's classification), so the type is never
guessed from a message. 503 (budget or API server unavailable: retry later) is Anthropic's
overloaded_error; every other 5xx is api_error."""


def anthropic_error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status (`ANTHROPIC_ERROR_TYPES`)."""
    if status in ANTHROPIC_ERROR_TYPES:
        return ANTHROPIC_ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


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
