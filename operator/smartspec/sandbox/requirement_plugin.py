"""A pytest plugin that records each test's requirement markers and outcome as JSON.

Contract: specs/CORE-004-generation-runs.md, section "Test report": generated tests name the
requirement they demonstrate with `@pytest.mark.requirement("REQ-001")`.

The tester loads it with `-p smartspec.sandbox.requirement_plugin` and names the output file
in SMARTSPEC_REQUIREMENT_REPORT, so the mapping from tests to requirements does not depend
on anything the generated conftest.py does. JUnit XML has no place for markers, hence this.

Output: {"tests": [{"nodeid", "requirements", "outcome", "message"}], "collectionErrors":
[{"nodeid", "message"}], "exitstatus": int}. An outcome is passed, failed, error or skipped;
an error is a failure outside the test body (setup or teardown).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from smartspec.api.sandbox import REQUIREMENT_REPORT_ENV

__all__ = ["REQUIREMENT_REPORT_ENV"]
MARKER = "requirement"
MAX_MESSAGE_CHARS = 2000

_tests: dict[str, dict[str, Any]] = {}
_collection_errors: list[dict[str, str]] = []


def pytest_configure(config: pytest.Config) -> None:
    _tests.clear()
    _collection_errors.clear()
    # Registered here too, so a suite whose conftest.py forgot it still runs cleanly.
    config.addinivalue_line("markers", f"{MARKER}(id, ...): the requirement a test demonstrates")


def pytest_itemcollected(item: pytest.Item) -> None:
    requirements: list[str] = []
    for marker in item.iter_markers(MARKER):
        for value in (*marker.args, *marker.kwargs.values()):
            values = value if isinstance(value, list | tuple) else [value]
            requirements += [str(v) for v in values if str(v) not in requirements]
    _tests[item.nodeid] = {
        "nodeid": item.nodeid,
        "requirements": requirements,
        "outcome": "skipped",  # until a report says otherwise (deselected, or never run)
        "message": "",
    }


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _collection_errors.append(
            {"nodeid": report.nodeid, "message": str(report.longreprtext)[:MAX_MESSAGE_CHARS]}
        )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _tests.setdefault(
        report.nodeid,
        {"nodeid": report.nodeid, "requirements": [], "outcome": "skipped", "message": ""},
    )
    if report.when == "call":
        if report.failed and entry["outcome"] != "error":
            entry["outcome"] = "failed"
            entry["message"] = str(report.longreprtext)[:MAX_MESSAGE_CHARS]
            entry["output"] = _captured(report)
        elif report.passed and entry["outcome"] == "skipped":
            entry["outcome"] = "passed"
    elif report.failed:
        # A broken fixture or teardown: the test cannot count as passed.
        entry["outcome"] = "error"
        entry["message"] = str(report.longreprtext)[:MAX_MESSAGE_CHARS]
        entry["output"] = _captured(report)


def _captured(report: pytest.TestReport) -> str:
    """What the test printed (stdout, then stderr), cut to its last characters: the end of
    the output is usually where the cause shows."""
    text = report.capstdout + report.capstderr
    return text[-MAX_MESSAGE_CHARS:]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get(REQUIREMENT_REPORT_ENV)
    if not target:
        return
    document = {
        "tests": sorted(_tests.values(), key=lambda entry: str(entry["nodeid"])),
        "collectionErrors": _collection_errors,
        "exitstatus": int(exitstatus),
    }
    Path(target).write_text(json.dumps(document, indent=2, sort_keys=True), encoding="utf-8")
