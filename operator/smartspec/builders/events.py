"""Event manifests (core/v1), named by the transition they report.

Contract: specs/CORE-001-resources.md, section "Events".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from smartspec.logic.events import EventRecord, event_name, short_message

REPORTING_COMPONENT = "smartspec-operator"
"""The Events' source: `kubectl describe` shows it in the From column."""


def build_event(
    involved: Mapping[str, Any],
    record: EventRecord,
    *,
    transition: str,
    reporting_instance: str,
    now: datetime,
) -> dict[str, Any]:
    """The Event for `record` about the object whose manifest is `involved`."""
    metadata = involved.get("metadata") or {}
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata.get("uid", "")
    timestamp = now.isoformat().replace("+00:00", "Z")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": event_name(name, uid, transition, record),
            "namespace": namespace,
        },
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": metadata.get("resourceVersion"),
        },
        "type": record.type,
        "reason": record.reason,
        "message": short_message(record.message),
        "action": record.reason,
        "source": {"component": REPORTING_COMPONENT},
        "reportingComponent": REPORTING_COMPONENT,
        "reportingInstance": reporting_instance,
        "firstTimestamp": timestamp,
        "lastTimestamp": timestamp,
        "eventTime": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "count": 1,
    }
