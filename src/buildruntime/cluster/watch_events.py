"""One watch line (``{"type": ..., "object": ...}``) into one event, for every port.

A watch body is a sequence of JSON lines. Two kinds of consumer read them:

- tools and tests, which want each event as the plain dict the API server sent
  (:func:`decode_event`, ``json.loads``);
- the informer, which wants each object straight as the typed snapshot it caches
  (a :class:`WatchDecoder`, e.g. msgspec decoding only the fields it keeps: decoding
  is most of the cost of a watch, and building a full dict only to drop most of it
  would double it).

Either way an ``ERROR`` event, whose object is a ``Status``, becomes an exception
(:func:`watch_error`), so the consumer sees 410 Gone as :class:`ExpiredError` however
the line was decoded. A line that is not an event (a proxy's garbage, a truncated
write) is skipped with a warning: one bad line must not end a watch.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol, TypeVar

from .port import JSON, ApiError, ExpiredError, error_for_status

logger = logging.getLogger("buildruntime.cluster")


class TypedWatchEvent(Protocol):
    """What a :class:`WatchDecoder` returns: an event with its type."""

    @property
    def type(self) -> str: ...


E_co = TypeVar("E_co", bound=TypedWatchEvent, covariant=True)


class WatchDecoder(Protocol[E_co]):
    """Decodes watch lines into typed events.

    ``__call__`` decodes one line, fast and strictly: it raises ValueError for anything
    that does not fit the expected shape (an ``ERROR`` event's Status, usually).
    ``from_json`` converts an event already decoded as a dict, leniently: the slow
    path for a line the strict decoder refused that is still a valid event.
    """

    def __call__(self, line: bytes) -> E_co: ...

    def from_json(self, event: JSON) -> E_co: ...


E = TypeVar("E", bound=TypedWatchEvent)


def decode_event(line: bytes) -> JSON | None:
    """``json.loads`` one watch line; None (and a warning) if it is not an event.

    A malformed line is skipped so that it never ends the stream. ``ERROR`` events are
    returned as they are: see :func:`watch_error`.
    """
    try:
        event = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        if line.strip():
            logger.warning("skipping a watch line that is not JSON: %.200r", line)
        return None
    if type(event) is dict and "type" in event:
        return event
    logger.warning("skipping a watch line that is not an event: %.200r", line)
    return None


def decode_typed_event(line: bytes, decoder: WatchDecoder[E]) -> E | None:
    """One line through ``decoder``; None for a line that is not an event.

    Raises the error an ``ERROR`` event carries (:func:`watch_error`).
    """
    try:
        event = decoder(line)
    except ValueError:
        # Not the shape the decoder expects: an ERROR event's Status, or an event with
        # an unexpected field type. Decode it as plain JSON to find out which.
        generic = decode_event(line)
        if generic is None:
            return None
        if generic.get("type") == "ERROR":
            raise watch_error(generic.get("object")) from None
        try:
            return decoder.from_json(generic)
        except ValueError as error:
            logger.warning("skipping a watch event of unexpected shape (%s): %.200r", error, line)
            return None
    if event.type == "ERROR":
        # A Status the strict decoder happened to accept (its fields are optional).
        raise watch_error(json.loads(line).get("object"))
    return event


def watch_error(status: Any) -> ApiError:
    """The exception for an ``ERROR`` watch event, whose object is a ``Status``."""
    if not isinstance(status, dict):
        return ApiError(500, "InternalError", f"watch ERROR event without a Status: {status!r}")
    try:
        code = int(status.get("code") or 0)
    except (TypeError, ValueError):
        code = 0
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or "")
    if code == 410 or (code == 0 and reason in ("Expired", "Gone")):
        return ExpiredError(message) if message else ExpiredError()
    return error_for_status(code or 500, reason or "InternalError", message)
