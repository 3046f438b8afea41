"""Error mapping: what the client and its transport raise, as the port's exceptions.

Kubernetes and client behaviour handled here:

- An error response from the API server carries a ``Status`` object whose ``reason``
  (``NotFound``, ``AlreadyExists``, ``Expired``...) and ``message`` are kept verbatim: an
  admission webhook's denial text is in that message. A body that is not a Status (a
  proxy's or load balancer's error page) becomes the message as text.
- 429 (API Priority and Fairness, or a rate-limiting proxy) and 500/502/503/504 mean
  "try again later": :class:`~buildruntime.cluster.port.UnavailableError`, like a refused
  or reset connection. Everything else goes through the port's own
  :func:`~buildruntime.cluster.port.error_for_status` (404, 409, 410...).
- ``ApiClient.call_api`` raises ``ApiException`` itself for some failures, including
  ``status=0`` for a TLS failure below HTTP (rest.py wraps urllib3's SSLError); urllib3,
  ``http.client`` and the socket raise their own exceptions for a broken transport, and
  our chunked reader raises :class:`~.chunked.BrokenStream`: all of those are
  :data:`TRANSPORT_ERRORS`, which callers turn into UnavailableError.
- A streamed read that times out means the connection went silent (a watch that did not
  even get its minute's bookmark): :func:`broken_stream_error` says so.
"""

from __future__ import annotations

import http.client
import json

import urllib3.exceptions

from ..port import UnavailableError, error_for_status
from .chunked import BrokenStream

TRANSPORT_ERRORS = (
    # MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError...
    urllib3.exceptions.HTTPError,
    OSError,  # ConnectionError, TimeoutError, ssl.SSLError from reads past urllib3
    http.client.HTTPException,  # IncompleteRead, RemoteDisconnected...
    BrokenStream,
)

_UNAVAILABLE_STATUSES = frozenset({0, 429, 500, 502, 503, 504})
"""HTTP statuses that mean "try again later". 0 is what the client reports for a TLS
failure below HTTP (rest.py wraps urllib3's SSLError into ``ApiException(status=0)``)."""


def error_for_response(status: int, http_reason: str, body: bytes | str | None) -> Exception:
    """The port's exception for an error response: its HTTP status, the HTTP reason
    phrase and its body (a ``Status`` object, usually).

    The body of an API server error is a ``Status`` object; its ``message`` is kept
    verbatim (an admission webhook's denial text is in there). A body that is not a
    Status (a proxy's error page) becomes the message as text.
    """
    decoded = _decode_status(body)
    if decoded is not None:
        reason, message = decoded
        reason = reason or http_reason
    else:
        reason = http_reason
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        message = (body or "").strip()[:1000] or http_reason
    if status in _UNAVAILABLE_STATUSES:
        return UnavailableError(f"{status} {reason}: {message}")
    return error_for_status(status, reason, message)


def _decode_status(body: bytes | str | None) -> tuple[str, str] | None:
    """(reason, message) of a ``Status`` body, or None if the body is not one."""
    if not body:
        return None
    try:
        status = json.loads(body)
    except ValueError:
        return None
    if not isinstance(status, dict):
        return None
    return str(status.get("reason") or ""), str(status.get("message") or "")


def broken_stream_error(what: str, exc: BaseException, read_timeout: float) -> UnavailableError:
    """The error for a stream whose read failed: silence past ``read_timeout``, or a
    connection that broke."""
    if isinstance(exc, TimeoutError | urllib3.exceptions.ReadTimeoutError):
        return UnavailableError(
            f"{what}: no data for {read_timeout:g} s "
            "(not even a bookmark): the connection is presumed broken"
        )
    return UnavailableError(f"{what}: the connection broke: {exc}")
