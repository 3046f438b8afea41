"""The kubelet's log timestamps: parsing, comparing, and the ``sinceTime`` of a resume."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime

STAMP_PATTERN = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z ")
"""A timestamp and its space at the start of a line, with any number of fraction digits."""

STAMP_WIDTH = len("2006-01-02T15:04:05.000000000Z")
"""The kubelet writes every log timestamp with exactly nine fractional digits (its
``RFC3339NanoFixed``), so for one time zone (UTC, which nodes use and the parsing here
assumes) byte order is time order."""


@functools.lru_cache(maxsize=4096)
def _epoch_second(whole_second: bytes) -> int:
    return int(datetime.fromisoformat(whole_second.decode()).replace(tzinfo=UTC).timestamp())


def timestamp_second(stamp: bytes) -> int:
    """The whole second, since the epoch, of a kubelet log timestamp (RFC 3339, UTC, up
    to ns): all that ``sinceTime`` can express. The second repeats from line to line,
    so its parse is cached. Raises ValueError for anything that is not a timestamp."""
    fraction = stamp[20:].rstrip(b"Z") if stamp[19:20] == b"." else b""
    if fraction and not fraction.isdigit():
        raise ValueError(f"not a timestamp: {stamp[:40]!r}")
    return _epoch_second(stamp[:19])


def since_time_of(second: int) -> str:
    """``sinceTime`` for a resume from the whole second the last delivered line fell in."""
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fixed_stamp(raw: bytes) -> bool:
    """Whether a line starts with a fixed-width stamp and a space (the kubelet's form)."""
    return (
        len(raw) > STAMP_WIDTH
        and raw[STAMP_WIDTH] == 32
        and raw[STAMP_WIDTH - 1] == 90
        and raw[19] == 46
        and raw[10] == 84
    )


def parse_stamp(raw: bytes) -> tuple[bytes, bytes] | None:
    """(the fixed-width stamp, the text) of a line as the log endpoint sends it with
    timestamps; None for a line that does not start with a timestamp."""
    if fixed_stamp(raw):
        return raw[:STAMP_WIDTH], raw[STAMP_WIDTH + 1 :]
    match = STAMP_PATTERN.match(raw)
    if match is None:
        return None
    # Another server may trim the fraction's zeros: pad it so that stamps compare as time.
    whole, _, fraction = raw[: match.end() - 2].partition(b".")
    return whole + b"." + fraction.ljust(9, b"0") + b"Z", raw[match.end() :]


def stamp_ns(stamp: bytes) -> int:
    """Nanoseconds since the epoch of a fixed-width stamp."""
    return timestamp_second(stamp) * 1_000_000_000 + int(stamp[20:29])
