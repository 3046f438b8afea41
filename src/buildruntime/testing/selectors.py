"""Label and field selectors, parsed and matched the way the API server does.

Label selectors follow ``k8s.io/apimachinery/pkg/labels``: comma-separated requirements,
all of which must hold (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``,
``k notin (a,b)``). Field selectors follow ``k8s.io/apimachinery/pkg/fields``: only
``=``, ``==`` and ``!=`` on the fields a resource supports; any other field is rejected
with the server's 400 ``field label not supported``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from buildruntime.cluster.port import ApiError

JSON = dict[str, object]

_KEY = re.compile(
    r"^(?:[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One requirement: ``op`` is one of ``=``, ``!=``, ``in``, ``notin``, ``exists``,
    ``!``."""

    key: str
    op: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # != and notin match objects that lack the key, as in Kubernetes.
        return not present or labels[self.key] not in self.values


@dataclass(frozen=True, slots=True)
class Selector:
    """A parsed selector: every requirement must match. Empty matches everything."""

    requirements: tuple[Requirement, ...]

    def matches(self, values: Mapping[str, str]) -> bool:
        return all(r.matches(values) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


EVERYTHING = Selector(())


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _bad_label(text: str, why: str) -> ApiError:
    return ApiError(400, "BadRequest", f"unable to parse requirement: {why}: {text!r}")


def _check_key(key: str, whole: str) -> str:
    if not key or len(key.rsplit("/", 1)[-1]) > 63 or not _KEY.match(key):
        raise _bad_label(whole, f"invalid label key {key!r}")
    return key


def _check_value(value: str, whole: str) -> str:
    if len(value) > 63 or not _VALUE.match(value):
        raise _bad_label(whole, f"invalid label value: {value!r}")
    return value


_SET = re.compile(r"^\s*(?P<key>[^\s!=()]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)\s*$")


def parse_label_selector(text: str | None) -> Selector:
    """Parse a label selector; raises :class:`ApiError` 400 on a malformed one."""
    if text is None or not text.strip():
        return EVERYTHING
    requirements: list[Requirement] = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if not part:
            raise _bad_label(text, "empty requirement")
        set_match = _SET.match(part)
        if set_match:
            key = _check_key(set_match.group("key"), part)
            values = frozenset(
                _check_value(v.strip(), part) for v in set_match.group("values").split(",")
            )
            requirements.append(Requirement(key, set_match.group("op"), values))
            continue
        for op_text, op in (("!=", "!="), ("==", "="), ("=", "=")):
            if op_text in part:
                key, _, value = part.partition(op_text)
                requirements.append(
                    Requirement(
                        _check_key(key.strip(), part),
                        op,
                        frozenset({_check_value(value.strip(), part)}),
                    )
                )
                break
        else:
            if part.startswith("!"):
                requirements.append(
                    Requirement(_check_key(part[1:].strip(), part), "!", frozenset())
                )
            else:
                requirements.append(Requirement(_check_key(part, part), "exists", frozenset()))
    return Selector(tuple(requirements))


POD_FIELDS = frozenset(
    {
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    }
)
EVENT_FIELDS = frozenset(
    {
        "metadata.name",
        "metadata.namespace",
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    }
)


def parse_field_selector(text: str | None, supported: frozenset[str]) -> Selector:
    """Parse a field selector against the fields a resource supports."""
    if text is None or not text.strip():
        return EVERYTHING
    requirements: list[Requirement] = []
    for raw in text.split(","):
        part = raw.strip()
        for op_text, op in (("!=", "!="), ("==", "="), ("=", "=")):
            if op_text in part:
                key, _, value = part.partition(op_text)
                key = key.strip()
                if key not in supported:
                    raise ApiError(400, "BadRequest", f"field label not supported: {key}")
                requirements.append(Requirement(key, op, frozenset({value.strip()})))
                break
        else:
            raise ApiError(
                400, "BadRequest", f"invalid selector: '{text}'; can't understand '{part}'"
            )
    return Selector(tuple(requirements))


def _get(obj: Mapping[str, object], path: str) -> object:
    current: object = obj
    for key in path.split("."):
        if not isinstance(current, Mapping):
            return None
        current = current.get(key)
    return current


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def pod_fields(pod: Mapping[str, Any]) -> dict[str, str]:
    """The selectable fields of a pod (``pkg/registry/core/pod.ToSelectableFields``)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    return {
        "metadata.name": _text(meta.get("name")),
        "metadata.namespace": _text(meta.get("namespace")),
        "spec.nodeName": _text(spec.get("nodeName")),
        "spec.restartPolicy": _text(spec.get("restartPolicy")),
        "spec.schedulerName": _text(spec.get("schedulerName")),
        "spec.serviceAccountName": _text(spec.get("serviceAccountName")),
        "spec.hostNetwork": _text(spec.get("hostNetwork", False)),
        "status.phase": _text(status.get("phase")),
        "status.podIP": _text(status.get("podIP")),
        "status.nominatedNodeName": _text(status.get("nominatedNodeName")),
    }


def event_fields(event: Mapping[str, object]) -> dict[str, str]:
    """The selectable fields of an event (``pkg/registry/core/event.ToSelectableFields``)."""
    fields = {name: _text(_get(event, name)) for name in EVENT_FIELDS if name != "source"}
    fields["source"] = _text(_get(event, "source.component"))
    return fields


SECRET_FIELDS = frozenset({"metadata.name", "metadata.namespace", "type"})
"""Secrets' selectable fields (``pkg/registry/core/secret.SelectableFields``)."""


def secret_fields(secret: Mapping[str, Any]) -> dict[str, str]:
    meta = secret.get("metadata") or {}
    return {
        "metadata.name": _text(meta.get("name")),
        "metadata.namespace": _text(meta.get("namespace")),
        "type": _text(secret.get("type")),
    }


def labels_of(obj: Mapping[str, object]) -> dict[str, str]:
    """An object's labels as a plain ``str -> str`` dict."""
    labels = _get(obj, "metadata.labels")
    if not isinstance(labels, Mapping):
        return {}
    return {str(k): _text(v) for k, v in labels.items()}


LEASE_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
"""Leases' selectable fields (the defaults every resource has)."""


def lease_fields(lease: Mapping[str, Any]) -> dict[str, str]:
    meta = lease.get("metadata") or {}
    return {
        "metadata.name": _text(meta.get("name")),
        "metadata.namespace": _text(meta.get("namespace")),
    }
