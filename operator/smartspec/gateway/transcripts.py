"""Model transcripts: every request/response pair, stored content-addressed, replayable.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Transcripts and replay".

The key is the hash of the *normalised* request: the fields that decide a model's answer
(model, messages, sampling parameters, tools), with floats written as their shortest decimal
text so the canonical JSON is exact. A replayed run sends the same requests and gets the
same bytes back at no cost; a request with no transcript is an error, never a live call.

A Messages request (Anthropic's API) is keyed by its own normalised form, marked with the API
it came through, so it can never be answered from a chat completion's transcript or the
other way round, and a change in how it is translated for the upstream does not change its
key (section "Anthropic Messages").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from smartspec.logic.canonical import canonical_json, content_hash, hex_digest
from smartspec.logic.object_keys import transcripts_prefix
from smartspec.storage import ObjectStore, StorageError

# Fields of a chat completion request that can change the answer.
_ANSWER_FIELDS = (
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "stop",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "response_format",
    "tools",
    "tool_choice",
)


# Fields of an Anthropic Messages request that can change the answer.
_MESSAGES_ANSWER_FIELDS = (
    "model",
    "system",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "tools",
    "tool_choice",
)
MESSAGES_API = "anthropic.messages"
"""The `api` of a normalised Messages request (a chat request's normalised form has none)."""


class TranscriptMissingError(LookupError):
    """Replay asked for a request that was never recorded."""


def normalise_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The answer-deciding part of a request, with floats as exact decimal strings."""
    return {key: _exact(body[key]) for key in _ANSWER_FIELDS if key in body}


def normalise_messages_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The answer-deciding part of a Messages request, marked with its API."""
    fields = {key: _exact(body[key]) for key in _MESSAGES_ANSWER_FIELDS if key in body}
    return {"api": MESSAGES_API, **fields}


def request_hash(normalised: Mapping[str, Any]) -> str:
    """sha256 of a normalised request's canonical JSON."""
    return content_hash(normalised)


def transcript_key(namespace: str, digest: str) -> str:
    """<namespace>/transcripts/sha256/<hex>.json: per tenant, content-addressed."""
    return f"{transcripts_prefix(namespace)}sha256/{hex_digest(digest)}.json"


def _exact(value: object) -> object:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping):
        return {str(key): _exact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_exact(item) for item in value]
    return value


async def store_transcript(
    store: ObjectStore,
    namespace: str,
    normalised: Mapping[str, Any],
    response_body: bytes,
    attribution: Mapping[str, Any],
) -> str:
    """Record one exchange by its normalised request (`normalise_request` or
    `normalise_messages_request`); write-once: the same request keeps its first answer."""
    digest = request_hash(normalised)
    # The response is kept as the exact text that was returned, so a replay is byte-identical.
    document = {
        "requestHash": digest,
        "request": dict(normalised),
        "responseBody": response_body.decode("utf-8"),
        "attribution": dict(attribution),
    }
    key = transcript_key(namespace, digest)
    body = canonical_json(document)
    # The same request asked again gets a new answer (new id and timestamp); the first one
    # recorded is the one a replay returns, so an existing transcript is simply kept.
    await store.aput_if_absent(key, body, "application/json", first_wins=True)
    return store.uri(key)


async def load_transcript(
    store: ObjectStore, namespace: str, normalised: Mapping[str, Any]
) -> bytes:
    """The recorded response body for this normalised request; TranscriptMissingError when
    none."""
    digest = request_hash(normalised)
    try:
        raw = await asyncio.to_thread(store.get, transcript_key(namespace, digest))
    except StorageError as error:
        raise TranscriptMissingError(
            f"no transcript for request {digest} in namespace {namespace}"
        ) from error
    document = json.loads(raw)
    body: str = document["responseBody"]
    return body.encode("utf-8")
