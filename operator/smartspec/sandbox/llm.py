"""The llm generator: one model call through the SmartSpec gateway, answered with JSON files.

Contract: specs/CORE-004-generation-runs.md ("Sandbox contract", backend `llm`); the gateway
side is specs/CORE-003-gateway-and-budgets.md.

Protocol: a single chat completion. The system prompt fixes the answer format (one JSON
object: {"files": [{"path", "content", "requirements"}], "tasks": [...]}) and the rules the
tester relies on (pytest tests tagged with the `requirement` marker, a conftest.py that
registers it); the user message carries the Spec as canonical JSON and, from attempt 2 on,
the previous attempt's test failures. The answer is parsed strictly after forgiving the
usual wrapping (Markdown fences, a sentence around the object): every path is checked, every
limit enforced, and anything unusable raises GenerationFailed with the precise reason.

The client talks to the gateway only, authenticated by the run token; it never retries on
its own (max_retries=0), because every call is charged and the run decides about retries.
"""

from __future__ import annotations

import json
import re
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam

from smartspec.api.gateway import RefusalCode
from smartspec.api.v1alpha1.spec import SpecSpec
from smartspec.logic.canonical import canonical_json

from . import GeneratedFile, Generation, Task, Usage
from .instructions import GatewayAccess, GeneratorSettings, Limits, TestReport, check_relative_path

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "SYSTEM_PROMPT",
    "GenerationFailed",
    "build_messages",
    "generate",
    "parse_answer",
]

DEFAULT_TIMEOUT_SECONDS = 600.0
MAX_FEEDBACK_FAILURES = 20
MAX_DESCRIPTION_CHARS = 1000
_FENCED = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\r?\n(.*?)\r?\n[ \t]*```", re.DOTALL)
_REQUIREMENT_MARKER = '@pytest.mark.requirement("REQ-001")'

SYSTEM_PROMPT = """\
You are the code generator of SmartSpec. You turn one software specification into a \
complete, working project whose automated tests demonstrate every requirement.

Answer with exactly ONE JSON object and nothing else: no prose, no Markdown. Its shape:
{"files": [{"path": "app.py", "content": "<the whole file>", "requirements": ["REQ-001"]}],
 "tasks": [{"file": "app.py", "requirements": ["REQ-001"], "description": "<what it does>"}]}
- "files" lists every file of the project with its complete content; "requirements" lists \
the ids of the requirements the file implements or tests (may be empty).
- "tasks" lists one entry per file: what the file is for, and which requirements it serves.

Rules:
1. Implement the specification in {language}, using only the standard library plus the \
dependencies the specification allows (constraints.allowedDependencies).
2. Write pytest tests that run offline with `python -m pytest` from the project root: no \
network except 127.0.0.1, no external services, no fixed ports (start servers on port 0).
3. Mark every test with the requirement(s) it demonstrates, e.g. {marker} above the test \
function (one marker per requirement id). Cover every acceptance criterion of every \
requirement with at least one test.
4. Include a conftest.py whose pytest_configure registers the marker: \
config.addinivalue_line("markers", "requirement(id): requirement a test demonstrates").
5. Paths are relative, use "/", never contain "..". At most {max_files} files, each at most \
{max_file_bytes} bytes, {max_total_bytes} bytes in total.
6. Never write credentials, tokens, passwords or keys into any file, not even as examples.
"""


class GenerationFailed(Exception):  # noqa: N818 - the name the sandbox contract uses
    """The model's answer was unusable or the gateway refused the call; says exactly why."""

    def __init__(
        self, reason: str, usage: Usage | None = None, refusal: RefusalCode | None = None
    ) -> None:
        super().__init__(reason)
        self.usage = usage or Usage()
        self.refusal = refusal
        """The gateway's refusal code, when the gateway refused the call."""


def generate(
    spec: SpecSpec,
    settings: GeneratorSettings,
    gateway: GatewayAccess,
    limits: Limits,
    feedback: TestReport | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> Generation:
    """Files and tasks for `spec` from one completion through the gateway."""
    language = spec.constraints.language if spec.constraints else "python"
    if language != "python":
        # The tester runs pytest in a Python image; code in another language cannot pass.
        raise GenerationFailed(
            f"constraints.language is {language!r}: the sandbox tester runs pytest only, so "
            "the llm backend generates Python"
        )
    if settings.model is None:
        raise GenerationFailed("generator.model is required for the llm backend")
    client = openai.OpenAI(
        base_url=gateway.base_url, api_key=gateway.token, max_retries=0, timeout=timeout
    )
    usage = Usage()
    try:
        response = client.chat.completions.create(
            model=settings.model,
            messages=build_messages(spec, limits, feedback),
            temperature=settings.temperature_milli / 1000,
            max_tokens=settings.max_tokens,
            seed=settings.seed if settings.seed is not None else openai.omit,
        )
    except openai.APIStatusError as error:
        raise GenerationFailed(_refusal(error), usage, _refusal_code(error)) from None
    except openai.APITimeoutError:
        raise GenerationFailed(
            f"the gateway at {gateway.base_url} did not answer within {timeout:g} s", usage
        ) from None
    except openai.APIConnectionError as error:
        cause = error.__cause__ or error
        raise GenerationFailed(
            f"cannot reach the gateway at {gateway.base_url}: {type(cause).__name__}: {cause}",
            usage,
        ) from None
    except openai.OpenAIError as error:
        raise GenerationFailed(
            f"the gateway's answer is unusable: {type(error).__name__}: {error}", usage
        ) from None
    finally:
        client.close()

    usage.calls = 1
    if response.usage is not None:
        usage.prompt_tokens = response.usage.prompt_tokens
        usage.completion_tokens = response.usage.completion_tokens
    if not response.choices:
        raise GenerationFailed("the model answered with no choices", usage)
    choice = response.choices[0]
    if choice.finish_reason == "length":
        raise GenerationFailed(
            f"the answer was cut off at maxTokens={settings.max_tokens} (finish_reason "
            "length); raise spec.generator.maxTokens or simplify the spec",
            usage,
        )
    text = choice.message.content
    if not text:
        raise GenerationFailed(
            f"the model answered with no text (finish_reason {choice.finish_reason})", usage
        )
    try:
        files, tasks = parse_answer(text, spec, limits)
    except GenerationFailed as error:
        raise GenerationFailed(str(error), usage) from None
    return Generation(files=files, tasks=tasks, usage=usage)


def build_messages(
    spec: SpecSpec, limits: Limits, feedback: TestReport | None
) -> list[ChatCompletionMessageParam]:
    """The system prompt and the user message (the spec, then any prior-attempt feedback)."""
    constraints = spec.constraints
    language = "Python"
    if constraints is not None and constraints.language_version:
        language += f" {constraints.language_version}"
    system = (
        SYSTEM_PROMPT.replace("{language}", language)
        .replace("{marker}", _REQUIREMENT_MARKER)
        .replace("{max_files}", str(limits.max_files))
        .replace("{max_file_bytes}", str(limits.max_file_bytes))
        .replace("{max_total_bytes}", str(limits.max_total_bytes))
    )
    user = (
        "The specification, as canonical JSON:\n"
        + canonical_json(spec.content()).decode("utf-8")
        + "\n\nRequirement ids: "
        + ", ".join(requirement.id for requirement in spec.requirements)
        + "."
    )
    if feedback is not None:
        user += "\n\n" + _feedback_text(feedback)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _feedback_text(report: TestReport) -> str:
    counts = report.tests
    lines = [
        "A previous attempt was generated and tested; its tests did not all pass. Fix the "
        "causes and answer with the complete project again (every file, not a diff).",
        f"Result: {report.result}. Tests: {counts.passed} passed, {counts.failed} failed, "
        f"{counts.errors} errors, {counts.skipped} skipped.",
    ]
    missing = [rid for rid, evidence in sorted(report.requirements.items()) if not evidence.passed]
    if missing:
        lines.append("Requirements without a passing test: " + ", ".join(missing) + ".")
    if report.failures:
        lines.append("Failures:")
        for failure in report.failures[:MAX_FEEDBACK_FAILURES]:
            lines.append(f"- {failure.test}:\n{failure.message}")
        hidden = len(report.failures) - MAX_FEEDBACK_FAILURES
        if hidden > 0:
            lines.append(f"({hidden} more failures not shown)")
    return "\n".join(lines)


def _refusal(error: openai.APIStatusError) -> str:
    """The gateway's refusal in one line: HTTP status, error type and code, message."""
    body: Any = error.body
    detail = body.get("error", body) if isinstance(body, dict) else None
    kind = code = message = None
    if isinstance(detail, dict):
        kind, code, message = detail.get("type"), detail.get("code"), detail.get("message")
    label = " ".join(str(part) for part in (kind, f"(code {code})" if code else None) if part)
    text = f"the gateway refused the call: HTTP {error.status_code}"
    if label:
        text += f" {label}"
    return f"{text}: {message or error.message}"


def _refusal_code(error: openai.APIStatusError) -> RefusalCode | None:
    """The gateway's budget or policy refusal code, read from the error body's `code`."""
    body: Any = error.body
    detail = body.get("error", body) if isinstance(body, dict) else None
    code = detail.get("code") if isinstance(detail, dict) else None
    known = {item.value: item for item in RefusalCode}
    return known.get(code) if isinstance(code, str) else None


# ------------------------------------------------------------------ parsing


def parse_answer(
    text: str, spec: SpecSpec, limits: Limits
) -> tuple[tuple[GeneratedFile, ...], tuple[Task, ...]]:
    """Files (sorted by path) and tasks from the model's answer, or GenerationFailed."""
    document = _json_object(text)
    declared = {requirement.id for requirement in spec.requirements}
    raw_files = document.get("files")
    if not isinstance(raw_files, list) or not raw_files:
        raise GenerationFailed('the answer has no "files" array with at least one file')
    if len(raw_files) > limits.max_files:
        raise GenerationFailed(
            f"the answer has {len(raw_files)} files, over the limit of {limits.max_files}"
        )
    files: dict[str, GeneratedFile] = {}
    total = 0
    for index, raw in enumerate(raw_files):
        where = f"files[{index}]"
        if not isinstance(raw, dict):
            raise GenerationFailed(f"{where} is not an object")
        path, content = raw.get("path"), raw.get("content")
        if not isinstance(path, str):
            raise GenerationFailed(f'{where} has no "path" string')
        try:
            check_relative_path(path)
        except ValueError as error:
            raise GenerationFailed(f"{where} {path!r}: {error}") from None
        where = f"{where} ({path})"
        if path in files:
            raise GenerationFailed(f"{where} appears more than once")
        if not isinstance(content, str):
            raise GenerationFailed(f'{where} has no "content" string')
        try:
            data = content.encode("utf-8")
        except UnicodeEncodeError:
            raise GenerationFailed(f"{where} content is not valid Unicode text") from None
        if len(data) > limits.max_file_bytes:
            raise GenerationFailed(
                f"{where} has {len(data)} bytes, over the limit of {limits.max_file_bytes}"
            )
        total += len(data)
        requirements = _requirement_ids(raw.get("requirements", []), f"{where}.requirements")
        unknown = [rid for rid in requirements if rid not in declared]
        if unknown:
            raise GenerationFailed(
                f"{where} cites {', '.join(unknown)}, which the spec does not declare"
            )
        files[path] = GeneratedFile(path, data, requirements)
    if total > limits.max_total_bytes:
        raise GenerationFailed(
            f"the answer has {total} bytes of files, over the limit of {limits.max_total_bytes}"
        )
    tasks = _tasks(document.get("tasks"), files, declared)
    return tuple(files[path] for path in sorted(files)), tasks


def _json_object(text: str) -> dict[str, Any]:
    """The one JSON object in an answer, forgiving Markdown fences and surrounding prose."""
    candidates = [text.strip()]
    candidates += [block.strip() for block in _FENCED.findall(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    first_error: json.JSONDecodeError | None = None
    for candidate in candidates:
        try:
            document = json.loads(candidate)
        except json.JSONDecodeError as error:
            first_error = first_error or error
            continue
        if not isinstance(document, dict):
            raise GenerationFailed(
                f"the answer is a JSON {type(document).__name__}, not the object asked for"
            )
        return document
    if first_error is None:
        raise GenerationFailed("the answer is empty")
    raise GenerationFailed(
        f"the answer is not valid JSON: {first_error.msg} at line {first_error.lineno} "
        f"column {first_error.colno}"
    )


def _requirement_ids(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise GenerationFailed(f"{where} is not an array of requirement id strings")
    return tuple(dict.fromkeys(value))


def _tasks(value: object, files: dict[str, GeneratedFile], declared: set[str]) -> tuple[Task, ...]:
    if value is None or value == []:
        # Tasks are a plan for progress reporting; without one, each file is a task.
        return tuple(
            Task(path, files[path].requirements, f"generated {path}") for path in sorted(files)
        )
    if not isinstance(value, list):
        raise GenerationFailed('"tasks" is not an array')
    tasks = []
    for index, raw in enumerate(value):
        where = f"tasks[{index}]"
        if not isinstance(raw, dict):
            raise GenerationFailed(f"{where} is not an object")
        file, description = raw.get("file"), raw.get("description", "")
        if not isinstance(file, str) or file not in files:
            raise GenerationFailed(f"{where}.file must name one of the answer's files")
        if not isinstance(description, str):
            raise GenerationFailed(f"{where}.description is not a string")
        requirements = _requirement_ids(raw.get("requirements", []), f"{where}.requirements")
        unknown = [rid for rid in requirements if rid not in declared]
        if unknown:
            raise GenerationFailed(
                f"{where} ({file}) cites {', '.join(unknown)}, which the spec does not declare"
            )
        tasks.append(
            Task(file, requirements, " ".join(description.split())[:MAX_DESCRIPTION_CHARS])
        )
    return tuple(tasks)
