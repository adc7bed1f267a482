"""The llm generator: files for a Spec from a model called through the SmartSpec gateway.

Contract: specs/CORE-004-generation-runs.md ("Sandbox contract", backend `llm`, and
"Feedback"); the gateway side is specs/CORE-003-gateway-and-budgets.md.

Protocol: chat completions. The system prompt fixes the answer format (one JSON object:
{"files": [{"path", "content", "requirements"}], "tasks": [...]}) and the rules the tester
relies on (pytest tests tagged with the `requirement` marker, a conftest.py that registers
it); the user message carries the Spec as canonical JSON and, from attempt 2 on, what the
previous attempt left (its failure kind and message, test failures, files to repair).

Structured output first: where the gateway says the model enforces a JSON schema (or the run
asks for it), the files schema goes as `response_format`; otherwise the format is only in
the prompt, and a tolerant parser reads the usual wrappings (Markdown fences, a sentence
around the object, or files as fenced blocks under their names). Either way the answer is
validated strictly: paths, limits, requirement ids, then a compile and import check and a
credential scan. An answer that fails gets up to `repairTurns` follow-up calls within the
attempt (each metered and ledgered by the gateway); after that the attempt fails with the
problem's FailureKind, which the next attempt is told.

The client talks to the gateway only, authenticated by the run token; it never retries on
its own (max_retries=0), because every call is charged and the run decides about retries.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from smartspec.api.gateway import STRUCTURED_OUTPUT_FIELD, RefusalCode
from smartspec.api.sandbox import (
    CredentialFinding,
    FeedbackFile,
    GatewayAccess,
    GeneratorSettings,
    Limits,
    check_relative_path,
)
from smartspec.api.v1alpha1.generationrun import FailureKind, OutputFormat
from smartspec.api.v1alpha1.spec import SpecSpec
from smartspec.logic.canonical import canonical_json
from smartspec.logic.credential_scan import redact_credentials

from . import GeneratedFile, Generation, Task, Usage
from .code_check import code_problems
from .feedback import (
    ADVICE,
    PreviousAttempt,
    credential_findings,
    feedback_text,
    redacted_files,
)

__all__ = [
    "ANSWER_RESPONSE_FORMAT",
    "DEFAULT_TIMEOUT_SECONDS",
    "SYSTEM_PROMPT",
    "AnswerProblem",
    "GenerationFailed",
    "build_messages",
    "generate",
    "parse_answer",
]

DEFAULT_TIMEOUT_SECONDS = 600.0
DEFAULT_FEEDBACK_BYTES = 65_536
MAX_DESCRIPTION_CHARS = 1000
MAX_LISTED_FINDINGS = 10
ANSWER_EXCERPT_CHARS = 4000
"""How much of an unreadable answer the feedback document keeps (start and end)."""
REPAIR_ECHO_CHARS = 16_000
"""How much of an unusable answer a repair turn sends back to the model."""
_FENCED = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\r?\n(.*?)\r?\n[ \t]*```", re.DOTALL)
# A file as a fenced block with its name: in the info string (```python app.py) or on the
# line just before the fence (`app.py`, ### app.py, **app.py**, File: app.py).
_NAMED_BLOCK = re.compile(
    r"(?:^[ \t]*(?:#+|\*\*|File:|file:|`)?[ \t]*(?P<before>[\w./-]+\.\w+)[`*: \t]*\r?\n)?"
    r"^```[A-Za-z0-9_+-]*(?:[ \t]+(?P<info>[\w./-]+\.\w+))?[ \t]*\r?\n(?P<body>.*?)\r?\n```",
    re.DOTALL | re.MULTILINE,
)
_REQUIREMENT_MARKER = '@pytest.mark.requirement("REQ-001")'
# Answers that could not be read as files keep an excerpt in the feedback document.
_UNREADABLE = frozenset(
    {FailureKind.ANSWER_NOT_PARSEABLE, FailureKind.ANSWER_INVALID, FailureKind.ANSWER_TRUNCATED}
)

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["files", "tasks"],
    "properties": {
        "files": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["path", "content", "requirements"],
                "properties": {
                    "path": {"type": "string"},
                    "content": {"type": "string"},
                    "requirements": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "tasks": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["file", "requirements", "description"],
                "properties": {
                    "file": {"type": "string"},
                    "requirements": {"type": "array", "items": {"type": "string"}},
                    "description": {"type": "string"},
                },
            },
        },
    },
}
"""The answer's shape as a JSON schema (strict mode: every property required)."""
ANSWER_RESPONSE_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "smartspec_project", "strict": True, "schema": ANSWER_SCHEMA},
}

SYSTEM_PROMPT = """\
You are the code generator of SmartSpec. You turn one software specification into a \
complete, working project whose automated tests demonstrate every requirement.

Answer with exactly ONE JSON object and nothing else: no prose, no Markdown. Its shape:
{"files": [{"path": "app.py", "content": "<the whole file>", "requirements": ["REQ-001"]}],
 "tasks": [{"file": "app.py", "requirements": ["REQ-001"], "description": "<what it does>"}]}
- "files" lists every file of the project with its complete content; "requirements" lists \
the ids of the requirements the file implements or tests (may be empty).
- "tasks" lists one entry per file: what the file is for, and which requirements it serves.

{rules}
"""

PROJECT_RULES = """\
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
"""What every backend that asks a model or an agent for a project tells it."""


class GenerationFailed(Exception):  # noqa: N818 - the name the sandbox contract uses
    """The attempt's generation failed; `kind` says how, the message says exactly why."""

    def __init__(
        self,
        kind: FailureKind,
        reason: str,
        usage: Usage | None = None,
        *,
        refusal: RefusalCode | None = None,
        files: tuple[FeedbackFile, ...] = (),
        answer_excerpt: str | None = None,
        findings: tuple[CredentialFinding, ...] = (),
    ) -> None:
        super().__init__(reason)
        self.kind = kind
        self.usage = usage or Usage()
        self.refusal = refusal
        """The gateway's refusal code, when the gateway refused the call."""
        self.files = files
        """The answer's files (credentials redacted), for the next attempt to repair."""
        self.answer_excerpt = answer_excerpt
        self.findings = findings


class AnswerProblem(Exception):  # noqa: N818 - control flow within one attempt
    """An answer that cannot be used; a repair turn may fix it."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        files: tuple[FeedbackFile, ...] = (),
        findings: tuple[CredentialFinding, ...] = (),
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.files = files
        self.findings = findings


def generate(
    spec: SpecSpec,
    settings: GeneratorSettings,
    gateway: GatewayAccess,
    limits: Limits,
    previous: PreviousAttempt | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> Generation:
    """Files and tasks for `spec`, through the gateway, with up to `repair_turns` follow-up
    calls when an answer cannot be used; GenerationFailed with its kind otherwise."""
    language = spec.constraints.language if spec.constraints else "python"
    if language != "python":
        # The tester runs pytest in a Python image; code in another language cannot pass.
        raise GenerationFailed(
            FailureKind.SANDBOX_ERROR,
            f"constraints.language is {language!r}: the sandbox tester runs pytest only, so "
            "the llm backend generates Python",
        )
    if settings.model is None:
        raise GenerationFailed(
            FailureKind.SANDBOX_ERROR, "generator.model is required for the llm backend"
        )
    client = openai.OpenAI(
        base_url=gateway.base_url, api_key=gateway.token, max_retries=0, timeout=timeout
    )
    usage = Usage()
    try:
        structured = _uses_json_schema(client, settings)
        messages = build_messages(spec, limits, previous, settings.feedback_max_bytes)
        problem: AnswerProblem | None = None
        text = ""
        for turn in range(settings.repair_turns + 1):
            if problem is not None:
                _say(f"repair turn {turn} of {settings.repair_turns}: {problem.kind.value}")
                messages += _repair_messages(text, problem)
            response = _call(
                client,
                settings,
                messages,
                structured=structured,
                gateway=gateway,
                timeout=timeout,
                usage=usage,
            )
            try:
                text = _answer_text(response, settings)
                return _usable(text, spec, limits, usage)
            except AnswerProblem as found:
                problem = found
    finally:
        client.close()
    assert problem is not None  # noqa: S101 - the loop returns or sets it
    turns = settings.repair_turns + 1
    raise GenerationFailed(
        problem.kind,
        f"{problem} (after {turns} model call{'s' if turns > 1 else ''})",
        usage,
        files=problem.files,
        answer_excerpt=_excerpt(text) if problem.kind in _UNREADABLE else None,
        findings=problem.findings,
    )


def _uses_json_schema(client: openai.OpenAI, settings: GeneratorSettings) -> bool:
    """Whether to ask for the files schema as response_format (Auto asks the gateway)."""
    if settings.output_format is OutputFormat.JSON_SCHEMA:
        return True
    if settings.output_format is OutputFormat.TEXT:
        return False
    try:
        models = client.models.list()
    except openai.OpenAIError as error:
        _say(f"cannot list the gateway's models ({type(error).__name__}); asking for text")
        return False
    for model in models.data:
        if model.id == settings.model:
            return bool((model.model_extra or {}).get(STRUCTURED_OUTPUT_FIELD))
    return False


def _call(
    client: openai.OpenAI,
    settings: GeneratorSettings,
    messages: list[ChatCompletionMessageParam],
    *,
    structured: bool,
    gateway: GatewayAccess,
    timeout: float,
    usage: Usage,
) -> ChatCompletion:
    """One metered call; a refusal or an unreachable model ends the attempt."""
    try:
        response = client.chat.completions.create(
            model=settings.model or "",
            messages=messages,
            temperature=settings.temperature_milli / 1000,
            max_tokens=settings.max_tokens,
            seed=settings.seed if settings.seed is not None else openai.omit,
            response_format=ANSWER_RESPONSE_FORMAT if structured else openai.omit,
        )
    except openai.APIStatusError as error:
        refusal = _refusal_code(error)
        kind = FailureKind.GATEWAY_REFUSED if refusal else FailureKind.MODEL_UNAVAILABLE
        raise GenerationFailed(kind, _refusal(error), usage, refusal=refusal) from None
    except openai.APITimeoutError:
        raise GenerationFailed(
            FailureKind.MODEL_UNAVAILABLE,
            f"the gateway at {gateway.base_url} did not answer within {timeout:g} s",
            usage,
        ) from None
    except openai.APIConnectionError as error:
        cause = error.__cause__ or error
        raise GenerationFailed(
            FailureKind.MODEL_UNAVAILABLE,
            f"cannot reach the gateway at {gateway.base_url}: {type(cause).__name__}: {cause}",
            usage,
        ) from None
    except openai.OpenAIError as error:
        raise GenerationFailed(
            FailureKind.MODEL_UNAVAILABLE,
            f"the gateway's answer is unusable: {type(error).__name__}: {error}",
            usage,
        ) from None
    usage.calls += 1
    if response.usage is not None:
        usage.prompt_tokens += response.usage.prompt_tokens
        usage.completion_tokens += response.usage.completion_tokens
    return response


def _answer_text(response: ChatCompletion, settings: GeneratorSettings) -> str:
    if not response.choices:
        raise AnswerProblem(FailureKind.ANSWER_EMPTY, "the model answered with no choices")
    choice = response.choices[0]
    if choice.finish_reason == "length":
        raise AnswerProblem(
            FailureKind.ANSWER_TRUNCATED,
            f"the answer was cut off at maxTokens={settings.max_tokens} (finish_reason "
            "length); raise spec.generator.maxTokens or simplify the spec",
        )
    text = choice.message.content
    if not text or not text.strip():
        raise AnswerProblem(
            FailureKind.ANSWER_EMPTY,
            f"the model answered with no text (finish_reason {choice.finish_reason})",
        )
    return text


def _usable(text: str, spec: SpecSpec, limits: Limits, usage: Usage) -> Generation:
    """The answer as a generation, or AnswerProblem: parse, compile, credential scan."""
    files, tasks = parse_answer(text, spec, limits)
    problems = code_problems(files)
    if problems:
        raise AnswerProblem(
            FailureKind.CODE_DOES_NOT_COMPILE,
            "generated code does not compile or imports what does not exist: "
            + "; ".join(problems),
            files=redacted_files(files),
        )
    findings = credential_findings(files, tasks)
    if findings:
        raise AnswerProblem(
            FailureKind.CREDENTIAL_DETECTED,
            f"the generated code contains {len(findings)} credential-like finding(s): "
            + ", ".join(f"{f.location} ({f.rule})" for f in findings[:MAX_LISTED_FINDINGS]),
            files=redacted_files(files),
            findings=tuple(findings),
        )
    return Generation(files=files, tasks=tasks, usage=usage)


def _repair_messages(text: str, problem: AnswerProblem) -> list[ChatCompletionMessageParam]:
    """The unusable answer (shortened, credentials redacted) and what to do about it."""
    return [
        {"role": "assistant", "content": _excerpt(redact_credentials(text), REPAIR_ECHO_CHARS)},
        {
            "role": "user",
            "content": f"That answer cannot be used ({problem.kind.value}): {problem}\n"
            + ADVICE.get(problem.kind, "")
            + " Answer again with the complete project as ONE JSON object, every file in "
            "full.",
        },
    ]


def _excerpt(text: str, limit: int = ANSWER_EXCERPT_CHARS) -> str:
    """The start and the end of a text, for a prompt or a feedback document."""
    if len(text) <= limit:
        return text
    half = (limit - 40) // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters left out ...]\n{text[-half:]}"


def build_messages(
    spec: SpecSpec,
    limits: Limits,
    previous: PreviousAttempt | None,
    feedback_max_bytes: int = DEFAULT_FEEDBACK_BYTES,
) -> list[ChatCompletionMessageParam]:
    """The system prompt and the user message (the spec, then the previous attempt)."""
    system = SYSTEM_PROMPT.replace("{rules}", project_rules(spec, limits))
    user = (
        "The specification, as canonical JSON:\n"
        + canonical_json(spec.content()).decode("utf-8")
        + "\n\nRequirement ids: "
        + ", ".join(requirement.id for requirement in spec.requirements)
        + "."
    )
    if previous is not None:
        user += "\n\n" + feedback_text(previous, feedback_max_bytes)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def project_rules(spec: SpecSpec, limits: Limits) -> str:
    """PROJECT_RULES with the spec's language and the upload limits filled in."""
    constraints = spec.constraints
    language = "Python"
    if constraints is not None and constraints.language_version:
        language += f" {constraints.language_version}"
    return (
        PROJECT_RULES.replace("{language}", language)
        .replace("{marker}", _REQUIREMENT_MARKER)
        .replace("{max_files}", str(limits.max_files))
        .replace("{max_file_bytes}", str(limits.max_file_bytes))
        .replace("{max_total_bytes}", str(limits.max_total_bytes))
    ).rstrip()


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


def _say(message: str) -> None:
    sys.stderr.write(f"smartspec-generator: {message}\n")
    sys.stderr.flush()


# ------------------------------------------------------------------ parsing


def _invalid(message: str) -> AnswerProblem:
    return AnswerProblem(FailureKind.ANSWER_INVALID, message)


def parse_answer(
    text: str, spec: SpecSpec, limits: Limits
) -> tuple[tuple[GeneratedFile, ...], tuple[Task, ...]]:
    """Files (sorted by path) and tasks from the model's answer, or AnswerProblem."""
    try:
        document = _json_object(text)
    except AnswerProblem:
        # Not the JSON asked for; files as named fenced blocks are still files.
        named = _named_blocks(text)
        if not named:
            raise
        document = {"files": named}
    declared = {requirement.id for requirement in spec.requirements}
    raw_files = document.get("files")
    if not isinstance(raw_files, list) or not raw_files:
        raise _invalid('the answer has no "files" array with at least one file')
    if len(raw_files) > limits.max_files:
        raise _invalid(
            f"the answer has {len(raw_files)} files, over the limit of {limits.max_files}"
        )
    files: dict[str, GeneratedFile] = {}
    for index, raw in enumerate(raw_files):
        item = _file(index, raw, declared, limits)
        if item.path in files:
            raise _invalid(f"files[{index}] ({item.path}) appears more than once")
        files[item.path] = item
    total = sum(len(item.content) for item in files.values())
    if total > limits.max_total_bytes:
        raise _invalid(
            f"the answer has {total} bytes of files, over the limit of {limits.max_total_bytes}"
        )
    tasks = _tasks(document.get("tasks"), files, declared)
    return tuple(files[path] for path in sorted(files)), tasks


def _file(index: int, raw: object, declared: set[str], limits: Limits) -> GeneratedFile:
    """One entry of "files", checked: a safe path, text content within the size limit and
    only the spec's requirement ids."""
    where = f"files[{index}]"
    if not isinstance(raw, dict):
        raise _invalid(f"{where} is not an object")
    path, content = raw.get("path"), raw.get("content")
    if not isinstance(path, str):
        raise _invalid(f'{where} has no "path" string')
    try:
        check_relative_path(path)
    except ValueError as error:
        raise _invalid(f"{where} {path!r}: {error}") from None
    where = f"{where} ({path})"
    if not isinstance(content, str):
        raise _invalid(f'{where} has no "content" string')
    try:
        data = content.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(f"{where} content is not valid Unicode text") from None
    if len(data) > limits.max_file_bytes:
        raise _invalid(f"{where} has {len(data)} bytes, over the limit of {limits.max_file_bytes}")
    requirements = _requirement_ids(raw.get("requirements", []), f"{where}.requirements")
    unknown = [rid for rid in requirements if rid not in declared]
    if unknown:
        raise _invalid(f"{where} cites {', '.join(unknown)}, which the spec does not declare")
    return GeneratedFile(path, data, requirements)


def _json_object(text: str) -> dict[str, Any]:
    """The one JSON object in an answer, forgiving Markdown fences and surrounding prose."""
    if not text.strip():
        raise AnswerProblem(FailureKind.ANSWER_EMPTY, "the answer is empty")
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
            raise _invalid(
                f"the answer is a JSON {type(document).__name__}, not the object asked for"
            )
        return document
    if first_error is None:
        raise AnswerProblem(FailureKind.ANSWER_EMPTY, "the answer is empty")
    raise AnswerProblem(
        FailureKind.ANSWER_NOT_PARSEABLE,
        f"the answer is not valid JSON: {first_error.msg} at line {first_error.lineno} "
        f"column {first_error.colno}",
    )


def _named_blocks(text: str) -> list[dict[str, Any]]:
    """Files written as fenced blocks under their names (the tolerant parser's last try)."""
    files = []
    for match in _NAMED_BLOCK.finditer(text):
        path = match.group("info") or match.group("before")
        if path:
            files.append({"path": path, "content": match.group("body") + "\n"})
    return files


def _requirement_ids(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _invalid(f"{where} is not an array of requirement id strings")
    return tuple(dict.fromkeys(value))


def _tasks(value: object, files: dict[str, GeneratedFile], declared: set[str]) -> tuple[Task, ...]:
    if value is None or value == []:
        # Tasks are a plan for progress reporting; without one, each file is a task.
        return tuple(
            Task(path, files[path].requirements, f"generated {path}") for path in sorted(files)
        )
    if not isinstance(value, list):
        raise _invalid('"tasks" is not an array')
    tasks = []
    for index, raw in enumerate(value):
        where = f"tasks[{index}]"
        if not isinstance(raw, dict):
            raise _invalid(f"{where} is not an object")
        file, description = raw.get("file"), raw.get("description", "")
        if not isinstance(file, str) or file not in files:
            raise _invalid(f"{where}.file must name one of the answer's files")
        if not isinstance(description, str):
            raise _invalid(f"{where}.description is not a string")
        requirements = _requirement_ids(raw.get("requirements", []), f"{where}.requirements")
        unknown = [rid for rid in requirements if rid not in declared]
        if unknown:
            raise _invalid(
                f"{where} ({file}) cites {', '.join(unknown)}, which the spec does not declare"
            )
        tasks.append(
            Task(file, requirements, " ".join(description.split())[:MAX_DESCRIPTION_CHARS])
        )
    return tuple(tasks)
