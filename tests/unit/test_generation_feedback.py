"""The generator's side of the loop: the compile check, the tolerant parser, structured
output and the feedback text's byte budget (specs/CORE-004-generation-runs.md, "Feedback").

Model answers come from the local OpenAI-compatible stub (canned; no model quality here).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartspec.api.sandbox import (
    GatewayAccess,
    GeneratorSettings,
    Limits,
    TestCounts,
    TestFailure,
    TestReport,
)
from smartspec.api.v1alpha1 import Spec
from smartspec.api.v1alpha1.generationrun import FailureKind
from smartspec.api.v1alpha1.spec import SpecSpec
from smartspec.sandbox import GeneratedFile
from smartspec.sandbox.code_check import code_problems
from smartspec.sandbox.feedback import PreviousAttempt, feedback_text
from smartspec.sandbox.llm import ANSWER_RESPONSE_FORMAT, AnswerProblem, generate, parse_answer
from stubs.openai_stub import Reply, StubServer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "todo-service" / "spec.yaml"


def spec() -> SpecSpec:
    return Spec.model_validate(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))).spec


def py(path: str, text: str) -> GeneratedFile:
    return GeneratedFile(path, text.encode())


# ------------------------------------------------------------------ compile check


def test_code_that_compiles_and_imports_what_exists_passes() -> None:
    files = [
        py("app.py", "import json\nfrom store import Store\n"),
        py("store.py", "class Store: ...\n"),
        py("pkg/__init__.py", ""),
        py("test_app.py", "import pytest\nimport pkg.sub\nfrom . import x\n"),
        py("opt.py", "try:\n    import numpy\nexcept ImportError:\n    numpy = None\n"),
        GeneratedFile("README.md", b"# not python {"),
    ]
    assert code_problems(files) == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("def f(:\n    pass\n", "app.py:1: invalid syntax"),
        ("import requests\n", "app.py:1: imports 'requests', which is neither"),
        ("x = 1\nfrom missing_module import thing\n", "app.py:2: imports 'missing_module'"),
        ("return 1\n", "app.py:1: 'return' outside function"),
    ],
)
def test_code_that_will_not_run_in_the_tester_is_named_by_file_and_line(
    text: str, problem: str
) -> None:
    (found,) = code_problems([py("app.py", text)])
    assert found.startswith(problem), found


# ------------------------------------------------------------------ parsing


def test_files_as_named_fenced_blocks_are_read_when_the_answer_is_not_json() -> None:
    text = (
        "Here is the project.\n\n"
        "```python app.py\nprint('app')\n```\n\n"
        "### test_app.py\n```python\ndef test_x():\n    assert True\n```\n"
    )
    files, tasks = parse_answer(text, spec(), Limits())
    assert [(f.path, f.content) for f in files] == [
        ("app.py", b"print('app')\n"),
        ("test_app.py", b"def test_x():\n    assert True\n"),
    ]
    assert [t.file for t in tasks] == ["app.py", "test_app.py"]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("I would build a small HTTP server.", FailureKind.ANSWER_NOT_PARSEABLE),
        ('{"files": [', FailureKind.ANSWER_NOT_PARSEABLE),
        ('{"project": {}}', FailureKind.ANSWER_INVALID),
        ('{"files": [{"path": "../escape.py", "content": ""}]}', FailureKind.ANSWER_INVALID),
        ("   ", FailureKind.ANSWER_EMPTY),
    ],
)
def test_unusable_answers_have_a_kind(text: str, kind: FailureKind) -> None:
    with pytest.raises(AnswerProblem) as caught:
        parse_answer(text, spec(), Limits())
    assert caught.value.kind is kind


# ------------------------------------------------------------------ the feedback text


def big_report(failures: int) -> TestReport:
    return TestReport(
        format="smartspec.dev/test-report/v1",
        result="failed",
        tests=TestCounts(passed=1, failed=failures, errors=0, skipped=0),
        requirements={},
        failures=[
            TestFailure(test=f"test_app.py::test_{n}", message="x" * 1500, output="y" * 500)
            for n in range(failures)
        ],
        duration_seconds=1.0,
    )


def test_the_feedback_text_stays_within_its_byte_budget_and_names_what_it_left_out() -> None:
    previous = PreviousAttempt(
        attempt=2,
        kind=FailureKind.TESTS_FAILED,
        message="attempt 2: 40 of 41 tests failed",
        report=big_report(40),
        files=tuple((f"module_{n}.py", "z = 1\n" * 800) for n in range(10)),
    )
    for budget in (2_048, 16_384, 65_536):
        text = feedback_text(previous, budget)
        assert len(text.encode("utf-8")) <= budget
        assert text.startswith("Attempt 2 failed (TestsFailed).")
        assert "What went wrong: attempt 2: 40 of 41 tests failed" in text
        assert "left out for size" in text.lower()
    roomy = feedback_text(previous, 65_536)
    assert "- test_app.py::test_0:" in roomy
    assert "Output:\nyyy" in roomy
    assert "=== module_0.py" in roomy, "half the budget is kept for the files to repair"


# ------------------------------------------------------------------ structured output


@pytest.fixture
def stub() -> Iterator[StubServer]:
    server = StubServer(models=["stub-model"]).start_in_thread()
    yield server
    server.stop_thread()


def settings(**changes: Any) -> GeneratorSettings:
    values: dict[str, Any] = {"backend": "llm", "model": "stub-model", "repair_turns": 0}
    return GeneratorSettings.model_validate({**values, **changes})


def good_answer(_: dict[str, Any]) -> str:
    return json.dumps(
        {
            "files": [{"path": "app.py", "content": "x = 1\n", "requirements": []}],
            "tasks": [{"file": "app.py", "requirements": [], "description": "app"}],
        }
    )


@pytest.mark.parametrize(
    ("output_format", "advertised", "sent"),
    [
        ("JsonSchema", False, True),
        ("Text", True, False),
        ("Auto", True, True),
        ("Auto", False, False),
    ],
)
def test_the_files_schema_is_asked_for_where_the_route_enforces_it(
    stub: StubServer, output_format: str, advertised: bool, sent: bool
) -> None:
    stub.model_extras = {"stub-model": {"structured_output": advertised}}
    stub.script.append(Reply(good_answer))
    gateway = GatewayAccess(base_url=stub.url + "/v1", token="sst1.t")  # noqa: S106 - dummy
    generate(spec(), settings(output_format=output_format), gateway, Limits(), timeout=30)
    request = stub.requests[-1]
    if sent:
        assert request["response_format"] == ANSWER_RESPONSE_FORMAT
    else:
        assert "response_format" not in request
