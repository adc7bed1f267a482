"""Posting Events: once per transition, never failing the reconcile that reports it.

Contract: specs/CORE-001-resources.md, section "Events".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from smartspec.builders.events import build_event
from smartspec.kube.client import ConflictError, KubeClient, KubeError
from smartspec.logic.events import EventRecord
from smartspec.observability.logs import get_logger

log = get_logger(__name__)


class EventRecorder:
    """Posts Events about smartspec.dev objects through the operator's API client."""

    def __init__(self, kube: KubeClient, reporting_instance: str) -> None:
        self.kube = kube
        self.reporting_instance = reporting_instance

    async def record(
        self, involved: Mapping[str, Any], record: EventRecord, *, transition: str
    ) -> bool:
        """Post the Event; False when this transition was already reported (or the post
        failed: an Event is a report, and a lost one must not undo the work it reports)."""
        event = build_event(
            involved,
            record,
            transition=transition,
            reporting_instance=self.reporting_instance,
            now=datetime.now(UTC),
        )
        namespace = event["metadata"]["namespace"]
        try:
            await self.kube.post(f"/api/v1/namespaces/{namespace}/events", event)
        except ConflictError:
            log.debug("Event already posted", reason=record.reason, name=event["metadata"]["name"])
            return False
        except KubeError as error:
            log.warning("Could not post an Event", reason=record.reason, error=str(error))
            return False
        log.info("Event", type=record.type, reason=record.reason, message=record.message)
        return True
