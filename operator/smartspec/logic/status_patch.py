"""The one status writer's arithmetic: what to send so that the stored status becomes the new.

Contract: specs/CORE-001-resources.md, section "One writer per status field".

A reconcile computes the whole next status; the write is a JSON merge patch of only the keys
that changed (and `null` for a key that is gone), or nothing at all when nothing changed, so
a reconcile that finds the world as it left it writes nothing and wakes nobody. Keys another
writer owns (the gateway's `usage` on a GenerationRun) are never sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["status_changes"]


def status_changes(
    before: Mapping[str, Any], after: Mapping[str, Any], *, others: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The merge patch of `.status` from `before` to `after`, leaving `others`' keys alone."""
    changes = {
        key: value for key, value in after.items() if key not in others and before.get(key) != value
    }
    changes.update(dict.fromkeys(before.keys() - after.keys() - others))
    return changes
