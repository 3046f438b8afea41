"""Requests: one HTTP request through the official client's ``ApiClient``, blocking.

What the client does for us and what it does not:

- ``ApiClient.param_serialize`` builds the URL (host, path parameters, query), the auth
  headers (``BearerToken``: a static token, or one an exec/OIDC hook refreshed) and the
  JSON body, exactly as the generated ``CoreV1Api`` methods do; ``call_api`` sends it on
  the client's urllib3 pool with its TLS settings.
- We do not call the generated methods: in client 37 they validate every argument with
  pydantic and turn a ``body`` dict into a ``V1Pod`` model first, so a manifest with a
  field newer than the client is rejected (``extra_forbidden``), and models are the slow
  part of the client. Bodies are left unread by the client (``preload_content=False`` is
  ``call_api``'s default) and decoded here with ``json.loads``.
- ``_request_timeout`` is one number for a unary call (its total time), or
  ``(connect, read)`` for a stream, where the read timeout applies to the response's
  headers and then to every read of its body.

Every function here blocks: call it through :class:`~.threads.ThreadLimiter`.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client.exceptions import ApiException

from ..port import JSON, UnavailableError
from .errors import TRANSPORT_ERRORS, error_for_response

JSON_MEDIA_TYPE = "application/json"

Query = list[tuple[str, str]]
"""Query parameters in order, as ``param_serialize`` takes them."""


def query_params(**params: str | int | None) -> Query:
    """The query of the parameters that are set (``None`` ones are left out)."""
    return [(key, str(value)) for key, value in params.items() if value is not None]


def send(
    api_client: Any,
    what: str,
    method: str,
    path: str,
    path_params: dict[str, str],
    *,
    query: Query,
    body: JSON | None,
    content_type: str | None,
    timeout: float | tuple[float, float],
    accept: str = JSON_MEDIA_TYPE,
) -> Any:
    """Send one request, return the unread urllib3 response of a 2xx; raise the port's
    error for anything else. ``what`` names the request in error messages."""
    headers = {"Accept": accept}
    if content_type is not None:
        headers["Content-Type"] = content_type
    params = api_client.param_serialize(
        method=method,
        resource_path=path,
        path_params=path_params,
        query_params=query,
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    try:
        response = api_client.call_api(*params, _request_timeout=timeout).response
    except ApiException as exc:
        raise error_for_response(exc.status or 0, exc.reason or "", exc.body) from exc
    except TRANSPORT_ERRORS as exc:
        raise UnavailableError(f"{what}: {exc}") from exc
    status = response.status
    if 200 <= status < 300:
        return response
    try:
        data = response.data
    except TRANSPORT_ERRORS:
        data = b""
    finally:
        response.release_conn()
    raise error_for_response(status, response.reason or "", data)


def request_json(
    api_client: Any,
    what: str,
    method: str,
    path: str,
    path_params: dict[str, str],
    *,
    timeout: float,
    query: Query | None = None,
    body: JSON | None = None,
    content_type: str | None = None,
    decode: bool = True,
) -> JSON:
    """One request, its whole body read and decoded with ``json.loads`` into a JSON
    object (the connection goes back to the pool once the body is read).
    ``decode=False`` reads the body but ignores it (a delete: the pod or a Status,
    unused) and returns ``{}``."""
    response = send(
        api_client,
        what,
        method,
        path,
        path_params,
        query=query or [],
        body=body,
        content_type=content_type,
        timeout=timeout,
    )
    try:
        data = response.data
    except TRANSPORT_ERRORS as exc:
        raise UnavailableError(f"{what}: {exc}") from exc
    finally:
        response.release_conn()
    if not decode:
        return {}
    try:
        decoded = json.loads(data)
    except ValueError:
        decoded = None
    if not isinstance(decoded, dict):
        raise UnavailableError(f"{what}: the response is not a JSON object: {data[:200]!r}")
    return decoded
