"""A small async Kubernetes REST client on aiohttp, for the gateway.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Kubernetes access".

The gateway's hot path does a handful of JSON reads and compare-and-swap writes; a blocking
client in a thread pool would cost a thread hop per call. This client reuses the official
client's config loaders (kubeconfig or in-cluster service account) for the server address,
CA and credentials, and sends plain JSON over one pooled aiohttp session. Errors keep the
API server's status and message; 409 Conflict has its own type because callers retry it.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

JsonObject = dict[str, Any]


class KubeError(RuntimeError):
    """The API server refused a request or could not be reached."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}: {message}")


class ConflictError(KubeError):
    """409: the object changed since it was read (a lost compare-and-swap)."""


class NotFoundError(KubeError):
    """404: no such object."""


def load_configuration(kubeconfig: str | None = None) -> k8s_client.Configuration:
    """In-cluster service account when available, else the kubeconfig (KUBECONFIG)."""
    configuration = k8s_client.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    return configuration


class KubeClient:
    """JSON in, JSON out; one aiohttp session per client."""

    def __init__(
        self, configuration: k8s_client.Configuration, timeout_seconds: float = 10
    ) -> None:
        self._host = str(configuration.host).rstrip("/")
        self._headers = {"Accept": "application/json"}
        token = configuration.api_key.get("authorization") or configuration.api_key.get(
            "BearerToken"
        )
        if token:
            prefix = configuration.api_key_prefix.get("authorization", "")
            self._headers["Authorization"] = (
                f"{prefix} {token}".strip()
                if prefix
                else (token if token.lower().startswith("bearer ") else f"Bearer {token}")
            )
        self._ssl = self._ssl_context(configuration)
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    @staticmethod
    def _ssl_context(configuration: k8s_client.Configuration) -> ssl.SSLContext | bool:
        if not configuration.verify_ssl:
            return False
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        if configuration.cert_file and configuration.key_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
        return context

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=64)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, timeout=self._timeout
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: object | None = None,
        *,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
    ) -> JsonObject:
        session = self._ensure_session()
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else None
        try:
            async with session.request(
                method, self._host + path, data=data, headers=headers, params=query
            ) as response:
                text = await response.text()
                if response.status >= 400:
                    raise _error(response.status, text)
                parsed: JsonObject = json.loads(text) if text else {}
                return parsed
        except aiohttp.ClientError as error:
            raise KubeError(0, "Unreachable", f"{method} {path}: {error}") from error
        except TimeoutError as error:
            raise KubeError(0, "Timeout", f"{method} {path} timed out") from error

    async def get(self, path: str) -> JsonObject:
        return await self.request("GET", path)

    async def put(self, path: str, body: JsonObject) -> JsonObject:
        return await self.request("PUT", path, body)

    async def merge_patch(self, path: str, body: JsonObject) -> JsonObject:
        return await self.request("PATCH", path, body, content_type="application/merge-patch+json")

    async def post(self, path: str, body: JsonObject) -> JsonObject:
        return await self.request("POST", path, body)


def _error(status: int, text: str) -> KubeError:
    try:
        payload = json.loads(text)
        reason = str(payload.get("reason", ""))
        message = str(payload.get("message", text))
    except (json.JSONDecodeError, AttributeError):
        reason, message = "", text[:500]
    if status == 409:
        return ConflictError(status, reason or "Conflict", message)
    if status == 404:
        return NotFoundError(status, reason or "NotFound", message)
    return KubeError(status, reason, message)


def custom_object_path(plural: str, namespace: str, name: str, subresource: str = "") -> str:
    """The REST path of a smartspec.dev object (or its subresource)."""
    suffix = f"/{subresource}" if subresource else ""
    return f"/apis/smartspec.dev/v1alpha1/namespaces/{namespace}/{plural}/{name}{suffix}"
