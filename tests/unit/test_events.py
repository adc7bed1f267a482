"""Events are named by the transition they report (specs/CORE-001-resources.md, "Events")."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from smartspec.api.v1alpha1.common import DNS_SUBDOMAIN_PATTERN
from smartspec.builders.events import REPORTING_COMPONENT, build_event
from smartspec.logic.events import MAX_MESSAGE_CHARS, EventRecord, event_name, short_message

ADMITTED = EventRecord("Normal", "Admitted", "building Spec todo-api revision 1")


def test_the_same_transition_gets_the_same_name_and_another_one_another() -> None:
    first = event_name("run-1", "uid-1", "state-a", ADMITTED)
    assert first == event_name("run-1", "uid-1", "state-a", ADMITTED)
    assert first != event_name("run-1", "uid-1", "state-b", ADMITTED)
    assert first != event_name("run-1", "uid-2", "state-a", ADMITTED), "a re-created run"
    other = EventRecord("Normal", "Generating", ADMITTED.message)
    assert first != event_name("run-1", "uid-1", "state-a", other)


def test_names_stay_valid_dns_subdomains_for_the_longest_object_names() -> None:
    name = "a" * 199 + "-" + "b" * 53
    event = event_name(name, "uid", "s", ADMITTED)
    assert len(event) <= 253
    assert re.fullmatch(DNS_SUBDOMAIN_PATTERN, event), event


def test_long_messages_keep_their_start_and_end() -> None:
    message = "start " + "x" * 5000 + " end"
    short = short_message(message)
    assert len(short) <= MAX_MESSAGE_CHARS
    assert short.startswith("start ")
    assert short.endswith(" end")


def test_the_event_names_the_operator_as_its_source() -> None:
    involved = {
        "apiVersion": "smartspec.dev/v1alpha1",
        "kind": "GenerationRun",
        "metadata": {"name": "run-1", "namespace": "team-a", "uid": "u", "resourceVersion": "7"},
    }
    now = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    event = build_event(involved, ADMITTED, transition="s", reporting_instance="pod-0", now=now)
    assert event["source"] == {"component": REPORTING_COMPONENT}
    assert event["reportingComponent"] == "smartspec-operator"
    assert event["involvedObject"]["kind"] == "GenerationRun"
    assert event["firstTimestamp"] == "2026-12-01T08:00:00Z"
    assert event["metadata"]["name"] == event_name("run-1", "u", "s", ADMITTED)
