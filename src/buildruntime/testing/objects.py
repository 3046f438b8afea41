"""Small helpers for the shapes of API objects: timestamps, identifiers, JSON copies and
``managedFields``, as a real API server and kubelet produce them."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from calendar import timegm
from typing import Any

JSON = dict[str, Any]

_last_ns = 0


def dump(obj: JSON) -> str:
    """Compact JSON, the form an object is stored and copied in."""
    return json.dumps(obj, separators=(",", ":"))


def load(raw: str) -> JSON:
    """A fresh deep copy of a stored object."""
    value: JSON = json.loads(raw)
    return value


def clone(obj: JSON) -> JSON:
    """A deep copy of a JSON object (faster than :func:`copy.deepcopy`)."""
    return load(dump(obj))


def now_ns() -> int:
    """Wall-clock nanoseconds, strictly increasing within this process (log lines read in
    the same nanosecond still get distinct, ordered timestamps)."""
    global _last_ns
    value = max(time.time_ns(), _last_ns + 1)
    _last_ns = value
    return value


def api_time(seconds: float | None = None) -> str:
    """A ``metav1.Time``: RFC 3339 in UTC with whole seconds."""
    return time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if seconds is None else seconds)
    )


_second_prefix: tuple[int, str] = (-1, "")


def log_time(ns: int) -> str:
    """The kubelet's log timestamp: RFC 3339 with exactly nine fractional digits, UTC."""
    global _second_prefix
    seconds, fraction = divmod(ns, 1_000_000_000)
    if _second_prefix[0] != seconds:
        _second_prefix = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{_second_prefix[1]}.{fraction:09d}Z"


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(Z|z|[+-]\d{2}:\d{2})$"
)


def parse_time_seconds(text: str) -> int:
    """Seconds since the epoch of an RFC 3339 time, the fraction dropped (the API's
    ``sinceTime`` has one-second granularity). Raises ValueError when malformed."""
    match = _RFC3339.match(text.strip())
    if not match:
        raise ValueError(f"parsing time {text!r} as RFC 3339")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    seconds = timegm((year, month, day, hour, minute, second, 0, 0, 0))
    zone = match.group(7)
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds


def random_hex(length: int) -> str:
    return secrets.token_hex((length + 1) // 2)[:length]


def container_id() -> str:
    """A containerd container ID, as the kubelet reports it."""
    return f"containerd://{random_hex(64)}"


def image_id(normalized_image: str) -> str:
    """A repo digest for an image (``docker.io/library/busybox@sha256:...``), stable per
    image name."""
    repository = normalized_image.split("@", 1)[0]
    last = repository.rsplit("/", 1)[-1]
    if ":" in last:
        repository = repository[: -(len(last) - last.index(":"))]
    digest = hashlib.sha256(normalized_image.encode()).hexdigest()
    return f"{repository}@sha256:{digest}"


_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def name_suffix(length: int = 5) -> str:
    """The random suffix the API server appends to ``generateName``."""
    return "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(length))


def fields_v1(value: Any) -> JSON:
    """A ``FieldsV1`` set describing the fields present in ``value`` (lists of named
    items keyed by name, as server-side apply tracks them)."""
    if isinstance(value, dict):
        return {f"f:{key}": fields_v1(item) for key, item in value.items()}
    if (
        isinstance(value, list)
        and value
        and all(isinstance(item, dict) and "name" in item for item in value)
    ):
        out: JSON = {}
        for item in value:
            key = "k:" + json.dumps({"name": item["name"]}, separators=(",", ":"))
            out[key] = {".": {}, **fields_v1(item)}
        return out
    return {}


def evolve(obj: JSON, **changes: Any) -> JSON:
    """A new version of a stored object: top-level fields replaced, ``metadata`` copied
    (the store sets the new resourceVersion in it), everything else shared. Stored
    objects are never modified in place, so sharing unchanged parts is safe."""
    new = {**obj, **changes}
    new["metadata"] = dict(new["metadata"])
    return new


def record_manager(
    obj: JSON,
    manager: str,
    part: JSON,
    subresource: str | None = None,
    *,
    fields: JSON | None = None,
) -> None:
    """Add or refresh the ``managedFields`` entry of one field manager (``fields``: a
    precomputed ``fieldsV1`` of ``part``). Replaces the list, never edits it in place."""
    entry: JSON = {
        "manager": manager,
        "operation": "Update",
        "apiVersion": "v1",
        "time": api_time(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields if fields is not None else fields_v1(part),
    }
    if subresource:
        entry["subresource"] = subresource
    meta = obj.setdefault("metadata", {})
    entries: list[JSON] = list(meta.get("managedFields") or [])
    for index, existing in enumerate(entries):
        if existing.get("manager") == manager and existing.get("subresource") == subresource:
            entries[index] = entry
            break
    else:
        entries.append(entry)
    meta["managedFields"] = entries
