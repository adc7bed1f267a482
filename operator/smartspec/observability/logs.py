"""JSON logs with correlation ids, for our code and for kopf's own lines.

Contract: specs/CORE-002-spec-registry.md, section "Observability".

Every line is one JSON object on stdout. `bind_correlation` puts the object's correlation id
(its uid) and name into context variables, so every line logged while handling that object
carries them, including kopf's, which go through the standard logging module. Every field
of every line passes through credential redaction before it is rendered.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from smartspec.logic.credential_scan import redact_credentials

_SHARED_PROCESSORS: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(level: str = "INFO") -> None:
    """Route structlog and stdlib logging to one JSON-lines handler on stdout."""
    structlog.configure(
        processors=[
            *_SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED_PROCESSORS, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_event,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _redact_event(
    _logger: object, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """Redact credential-shaped text in every field: no log line may carry a secret, not even
    a library's debug dump of an object that holds one (SPEC-001 principle 6)."""
    return {key: _redact_value(value) for key, value in event_dict.items()}


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact_credentials(value)
    if isinstance(value, dict):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact_credentials(str(value))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structured logger; keyword arguments become JSON fields."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


@contextmanager
def bind_correlation(correlation_id: str, **fields: str) -> Iterator[None]:
    """Attach the correlation id (and e.g. namespace, name) to every line in this block."""
    with structlog.contextvars.bound_contextvars(correlation_id=correlation_id, **fields):
        yield
