"""Reading the instructions document a sandbox program was started with.

Contract: specs/CORE-004-generation-runs.md, section "Sandbox contract". The documents
themselves are `smartspec.api.sandbox` (the contract's one home); this module only finds
the instructions (mounted file or environment variable) and parses them, naming every bad
field and never a value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from smartspec.api.sandbox import (
    INSTRUCTIONS_ENV,
    INSTRUCTIONS_FILE_ENV,
    ExitCode,
    GeneratorInstructions,
    TesterInstructions,
    describe_validation_error,
)

__all__ = [
    "InstructionsError",
    "load_instructions",
    "load_role_instructions",
    "parse_instructions",
]

MAX_INSTRUCTIONS_BYTES = 4 * 1024 * 1024
"""Instructions list one URL per file; a few MiB is far beyond any real run."""


class InstructionsError(Exception):
    """The instructions are missing, unreadable or invalid; `problems` names each field."""

    def __init__(self, source: str, summary: str, problems: list[str] | None = None) -> None:
        self.source = source
        self.problems = problems or []
        detail = "".join(f"\n  - {problem}" for problem in self.problems)
        super().__init__(f"{source}: {summary}{detail}")


RoleT = TypeVar("RoleT", GeneratorInstructions, TesterInstructions)


def load_instructions(
    environ: Mapping[str, str] | None = None,
) -> GeneratorInstructions | TesterInstructions:
    """Read the instructions from SMARTSPEC_INSTRUCTIONS_FILE, else SMARTSPEC_INSTRUCTIONS."""
    env = os.environ if environ is None else environ
    file_name = env.get(INSTRUCTIONS_FILE_ENV, "")
    if file_name:
        source = f"{INSTRUCTIONS_FILE_ENV} ({file_name})"
        try:
            with Path(file_name).open("rb") as handle:
                raw = handle.read(MAX_INSTRUCTIONS_BYTES + 1)
        except OSError as error:
            raise InstructionsError(source, f"cannot read the file: {error.strerror}") from None
        if len(raw) > MAX_INSTRUCTIONS_BYTES:
            raise InstructionsError(source, f"larger than {MAX_INSTRUCTIONS_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InstructionsError(source, "not UTF-8 text") from None
        return parse_instructions(text, source)
    text = env.get(INSTRUCTIONS_ENV, "")
    if text:
        return parse_instructions(text, INSTRUCTIONS_ENV)
    raise InstructionsError(
        INSTRUCTIONS_ENV, f"no instructions: neither {INSTRUCTIONS_FILE_ENV} nor it is set"
    )


def load_role_instructions(
    environ: Mapping[str, str] | None, expected: type[RoleT], program: str
) -> RoleT:
    """The instructions, which must be for `program`'s role; ProgramExit(BAD_INPUT) if not."""
    from smartspec.sandbox import ProgramExit  # noqa: PLC0415 (the package imports us)

    try:
        instructions = load_instructions(environ)
    except InstructionsError as error:
        raise ProgramExit(ExitCode.BAD_INPUT, "Error", str(error)) from None
    if not isinstance(instructions, expected):
        raise ProgramExit(
            ExitCode.BAD_INPUT,
            "Error",
            f"the instructions have role {instructions.role!r}; this program is the {program}",
        )
    return instructions


def parse_instructions(text: str, source: str) -> GeneratorInstructions | TesterInstructions:
    """Validate one instructions document; `source` names where it came from in errors."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InstructionsError(
            source, f"not JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    if not isinstance(document, dict):
        raise InstructionsError(source, "not a JSON object")
    role = document.get("role")
    model: type[GeneratorInstructions] | type[TesterInstructions]
    if role == "generator":
        model = GeneratorInstructions
    elif role == "tester":
        model = TesterInstructions
    else:
        raise InstructionsError(
            source, "invalid instructions", ["role: must be 'generator' or 'tester'"]
        )
    try:
        return model.model_validate(document)
    except ValidationError as error:
        raise InstructionsError(
            source, f"invalid {role} instructions", describe_validation_error(error)
        ) from None
