"""Raw JSON calls to the Kubernetes API through a ``kubernetes.client.ApiClient``.

The ``kubernetes`` client (v37+) validates request bodies into its pydantic models, which
would silently drop fields it does not know (newer status fields, unknown CRD content).
The test environment writes exact objects (kubelet-style Pod status, CRDs), so it
sends plain dicts through the ApiClient's own TLS/auth/impersonation settings instead.
See specs/TEST-001-control-plane.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

__all__ = ["ApiException", "Obj", "Rest"]

Obj = dict[str, Any]


class Rest:
    """JSON-in/JSON-out requests; non-2xx answers raise ``ApiException`` (or its
    status-specific subclasses) with ``.status`` and the server's ``.body``."""

    def __init__(self, api_client: client.ApiClient, timeout: float = 30.0) -> None:
        self.api_client = api_client
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> Obj:
        resp = self._send(
            method, path, body, query=query, content_type=content_type, timeout=timeout
        )
        data = resp.read()
        if not 200 <= resp.status <= 299:
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        result: Obj = json.loads(data) if data else {}
        return result

    def get(self, path: str, **query: Any) -> Obj:
        return self.request("GET", path, query=query)

    def table(self, path: str) -> Obj:
        """The server-side table `kubectl get` prints (printer columns and their cells)."""
        accept = "application/json;as=Table;v=v1;g=meta.k8s.io"
        resp = self._send("GET", path, None, query=None, timeout=None, accept=accept)
        data = resp.read()
        if not 200 <= resp.status <= 299:
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        table: Obj = json.loads(data)
        return table

    def text(self, path: str) -> str:
        """A non-JSON GET, such as the API server's /metrics."""
        resp = self._send("GET", path, None, query=None, content_type="text/plain", timeout=None)
        data = resp.read()
        if not 200 <= resp.status <= 299:
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        return data.decode() if isinstance(data, bytes) else str(data)

    def post(self, path: str, body: Obj, **query: Any) -> Obj:
        return self.request("POST", path, body, query=query)

    def put(self, path: str, body: Obj, **query: Any) -> Obj:
        return self.request("PUT", path, body, query=query)

    def patch(
        self, path: str, body: Obj | list[Obj], content_type: str = "application/merge-patch+json"
    ) -> Obj:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, body: Obj | None = None, **query: Any) -> Obj:
        return self.request("DELETE", path, body, query=query)

    def watch(self, path: str, **query: Any) -> Iterator[Obj]:
        """Yield watch events ({"type", "object"}) until the server closes the stream
        (pass ``timeoutSeconds``); an ERROR event raises ``ApiException``."""
        query = {**query, "watch": "true"}
        timeout = float(query.get("timeoutSeconds", 0)) + 30
        resp = self._send("GET", path, None, query=query, timeout=timeout)
        if not 200 <= resp.status <= 299:
            resp.read()
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        buf = b""
        try:
            for chunk in resp.response.stream(64 * 1024, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event: Obj = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object", {})
                        raise ApiException(status=status.get("code"), reason=status.get("message"))
                    yield event
        finally:
            resp.response.release_conn()

    def _send(
        self,
        method: str,
        path: str,
        body: Any,
        *,
        query: Mapping[str, Any] | None,
        content_type: str = "application/json",
        timeout: float | None,
        accept: str = "application/json",
    ) -> Any:
        headers = {"Accept": accept, "Content-Type": content_type}
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        _, url, headers, body, _ = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=params or None,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        return self.api_client.call_api(
            method, url, header_params=headers, body=body, _request_timeout=timeout or self.timeout
        )
