"""Strategic merge patch, as the API server applies it to a pod.

Maps merge recursively and ``null`` deletes a key; lists of objects with a patch merge
key (``containers`` by ``name``, ``volumeMounts`` by ``mountPath``...) merge item by
item, other lists are replaced. The ``$patch`` (``delete``/``replace``/``merge``),
``$deleteFromPrimitiveList/<field>``, ``$setElementOrder/<field>`` and ``$retainKeys``
directives are understood (the last two are accepted and ignored).
"""

from __future__ import annotations

from typing import Any

from buildruntime.testing.objects import JSON

MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "resourceClaims": "name",
    "podIPs": "ip",
    "hostIPs": "ip",
}
PRIMITIVE_MERGE_LISTS = frozenset({"finalizers"})


def copy_value(value: Any) -> Any:
    """A deep copy of a JSON value."""
    if isinstance(value, dict):
        return {k: copy_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_value(v) for v in value]
    return value


def _merge_list(field: str, original: list[Any], patch: list[Any]) -> list[Any]:
    key = MERGE_KEYS.get(field)
    if field in PRIMITIVE_MERGE_LISTS:
        merged = list(original)
        for item in patch:
            if item not in merged:
                merged.append(item)
        return merged
    if key is None or not all(isinstance(item, dict) for item in patch):
        return copy_value(patch)  # type: ignore[no-any-return]
    if any(item.get("$patch") == "replace" for item in patch):
        return [copy_value(i) for i in patch if i.get("$patch") != "replace"]
    merged = list(original)
    for item in patch:
        directive = item.get("$patch")
        position = next(
            (
                index
                for index, existing in enumerate(merged)
                if isinstance(existing, dict) and existing.get(key) == item.get(key)
            ),
            None,
        )
        if directive == "delete":
            if position is not None:
                del merged[position]
            continue
        body = {k: v for k, v in item.items() if k != "$patch"}
        if position is None:
            merged.append(apply_patch({}, body))
        else:
            merged[position] = apply_patch(merged[position], body)
    return merged


def apply_patch(original: JSON, patch: JSON) -> JSON:
    """``original`` with a strategic merge ``patch`` applied. Neither is modified; the
    result shares the parts of ``original`` the patch does not touch (stored objects are
    never modified in place) and owns copies of what comes from ``patch``."""
    if patch.get("$patch") == "replace":
        replaced: JSON = copy_value({k: v for k, v in patch.items() if k != "$patch"})
        return replaced
    if patch.get("$patch") == "delete":
        return {}
    result = dict(original)
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = [v for v in result[field] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = apply_patch(result[key], value)
        elif isinstance(value, dict):
            result[key] = apply_patch({}, value)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(key, result[key], value)
        elif isinstance(value, list):
            result[key] = _merge_list(key, [], value)
        else:
            result[key] = value
    return result
