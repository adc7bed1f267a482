"""Read manifest files strictly: a duplicate key or nesting deeper than any resource is an
error naming its line, never a silent "last one wins" nor a crash.

Contract: specs/CORE-001-resources.md, section "Validation". PyYAML keeps the last of two
equal keys without a word (a Spec whose second `requirements:` silently replaces the first),
and composes nested nodes recursively, so a few thousand `[` end in RecursionError; kubectl
refuses the first, and no resource of ours nests more than a dozen levels.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

from smartspec.api.manifests import ManifestError

__all__ = ["MAX_NESTING", "load_manifest_documents"]

MAX_NESTING = 100
"""Deepest nesting of mappings and sequences accepted in a manifest file."""
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and nesting past MAX_NESTING."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise ConstructorError(
                    None, None, f"nested more than {MAX_NESTING} levels deep", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # `<<` merges may be overridden by the mapping's own keys
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable: SafeLoader names it below
            if first is not None:
                raise ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {first + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_manifest_documents(text: str, source: str) -> list[Any]:
    """Every YAML document of a file; ManifestError naming the line of the first problem."""
    try:
        return list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = error.problem or error.context or "not YAML"
        raise ManifestError(source, [f"cannot read YAML: {where}{problem}"]) from None
    except yaml.YAMLError as error:
        raise ManifestError(source, [f"cannot read YAML: {error}"]) from None
