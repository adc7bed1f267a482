"""Kubernetes Events as the reconcilers decide them: what to say, and which transition it is.

Contract: specs/CORE-001-resources.md, section "Events".

An Event reports one transition of one object. Several reconciles can compute the same
transition (a timer and a watch event that both read the status before the first write
landed, or an operator restarted mid-reconcile), so an Event is named by the transition it
reports (`event_name`): posting it again is refused by the API server as already existing,
and `kubectl describe` shows it once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

MAX_MESSAGE_CHARS = 1024
_NAME_PREFIX_CHARS = 200

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class EventRecord:
    """One Event to post: its type, a PascalCase reason and a message."""

    type: EventType
    reason: str
    message: str


def event_name(object_name: str, object_uid: str, transition: str, record: EventRecord) -> str:
    """`<object name>.<digest>`: the same transition of the same object gets the same name.

    `transition` names the state the object is leaving (a digest of its status, a content
    hash, a period): two reconciles that start from the same state and decide the same
    Event produce the same name.
    """
    identity = "\0".join((object_uid, transition, record.type, record.reason, record.message))
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:20]
    # A DNS subdomain: a cut name must not end in "-" or "." before the separator.
    prefix = object_name[:_NAME_PREFIX_CHARS].rstrip("-.")
    return f"{prefix}.{digest}"


def short_message(message: str) -> str:
    """The message cut to what an Event holds, keeping its start and its end."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    half = (MAX_MESSAGE_CHARS - 3) // 2
    return message[:half] + "..." + message[-half:]
