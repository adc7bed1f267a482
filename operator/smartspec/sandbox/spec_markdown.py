"""A Spec revision as Markdown, for a coding agent to read.

Contract: specs/CORE-004-generation-runs.md, section "Agent backend".

Pure: the pinned SpecSpec in, text out. Every field a generator must honour is shown:
requirements with their acceptance criteria, interfaces, constraints. The JSON beside it in
the workspace (AGENT_SPEC_FILE) stays the exact record; this is its readable form.
"""

from __future__ import annotations

from smartspec.api.v1alpha1.spec import Constraints, Interfaces, SpecSpec

__all__ = ["render_spec"]


def render_spec(spec: SpecSpec) -> str:
    lines = [f"# Specification: {spec.title} (version {spec.version})", ""]
    if spec.summary:
        lines += [spec.summary.strip(), ""]
    lines += ["## Requirements", ""]
    for requirement in spec.requirements:
        lines.append(f"### {requirement.id} ({requirement.priority.value})")
        lines += ["", requirement.text.strip(), ""]
        if requirement.acceptance_criteria:
            lines.append("Acceptance criteria:")
            lines += [f"- {criterion}" for criterion in requirement.acceptance_criteria]
            lines.append("")
    if spec.interfaces is not None:
        lines += _interfaces(spec.interfaces)
    if spec.constraints is not None:
        lines += _constraints(spec.constraints)
    return "\n".join(lines).rstrip() + "\n"


def _interfaces(interfaces: Interfaces) -> list[str]:
    lines = ["## Interfaces", ""]
    for entity in interfaces.entities:
        lines.append(f"### Entity {entity.name}")
        if entity.description:
            lines += ["", entity.description.strip()]
        lines.append("")
        for item in entity.fields:
            flags = [
                flag for flag, on in (("required", item.required), ("unique", item.unique)) if on
            ]
            described = f": {item.description}" if item.description else ""
            flagged = f", {', '.join(flags)}" if flags else ""
            lines.append(f"- `{item.name}` ({item.type.value}{flagged}){described}")
        lines.append("")
    if interfaces.endpoints:
        lines += ["### Endpoints", ""]
        for endpoint in interfaces.endpoints:
            text = f"- `{endpoint.method.value} {endpoint.path}`"
            if endpoint.summary:
                text += f": {endpoint.summary}"
            if endpoint.entity:
                action = f" {endpoint.action.value}" if endpoint.action else ""
                text += f" (entity {endpoint.entity}{action})"
            if endpoint.requirements:
                text += f" [{', '.join(endpoint.requirements)}]"
            lines.append(text)
        lines.append("")
    return lines


def _constraints(constraints: Constraints) -> list[str]:
    language = constraints.language
    if constraints.language_version:
        language += f" {constraints.language_version}"
    lines = ["## Constraints", "", f"- Language: {language}"]
    if constraints.framework:
        lines.append(f"- Framework: {constraints.framework}")
    allowed = ", ".join(constraints.allowed_dependencies) or "none (standard library only)"
    lines.append(f"- Allowed dependencies: {allowed}")
    lines += [f"- {rule}" for rule in constraints.rules]
    return [*lines, ""]
