"""Where and how a build pod runs: the scheduling and security fields a build may set,
and ``pod_overrides`` for anything else, checked so that they never change what the
runtime relies on.

``pod_overrides`` is a strategic merge patch applied to the rendered pod, GitLab's
``pod_spec`` patches being the model: mappings merge key by key, lists of named objects
(``containers``, ``volumes``, ``env``...) merge by ``name``, other lists are replaced,
and a ``null`` deletes. It is refused (:class:`SpecError`) when it would change a step's
container name, image, command or args, add or remove a container, touch the runtime's
labels and annotations, its workspace volume, or the pod's restart policy.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from buildruntime.cluster.port import JSON
from buildruntime.errors import SpecError

POD_FIELDS = {
    "tolerations": ("tolerations", list),
    "affinity": ("affinity", dict),
    "runtime_class_name": ("runtimeClassName", str),
    "priority_class_name": ("priorityClassName", str),
    "security_context": ("securityContext", dict),
    "dns_config": ("dnsConfig", dict),
    "dns_policy": ("dnsPolicy", str),
}
"""BuildSpec field → (pod spec key, the JSON type it must have)."""


def check_policy_value(field: str, value: object) -> object:
    """A copy of a policy field's value, checked for its JSON type (the API server checks
    the rest, and refuses the pod with its own message: an AdmissionError)."""
    key, kind = POD_FIELDS[field]
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
            raise SpecError(field, f"must be a list of mappings ({key} of the pod spec)")
        return copy.deepcopy(value)
    if kind is dict:
        if not isinstance(value, Mapping):
            raise SpecError(field, f"must be a mapping ({key} of the pod spec)")
        return copy.deepcopy(dict(value))
    if not isinstance(value, str) or not value:
        raise SpecError(field, f"must be a non-empty string ({key} of the pod spec)")
    return value


def strategic_merge(target: Any, patch: Any) -> Any:
    """``patch`` merged into ``target`` (neither changed) as a strategic merge patch."""
    if isinstance(target, Mapping) and isinstance(patch, Mapping):
        merged = dict(copy.deepcopy(target))
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(target, list) and isinstance(patch, list) and _named(target) and _named(patch):
        merged_list = [copy.deepcopy(item) for item in target]
        index = {item["name"]: i for i, item in enumerate(merged_list)}
        for item in patch:
            if item["name"] in index:
                merged_list[index[item["name"]]] = strategic_merge(
                    merged_list[index[item["name"]]], item
                )
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return all(isinstance(item, Mapping) and isinstance(item.get("name"), str) for item in items)


def apply_overrides(pod: JSON, overrides: Mapping[str, Any], reserved: Mapping[str, str]) -> JSON:
    """The rendered ``pod`` with ``overrides`` merged in; ``reserved`` are the runtime's
    own labels and annotations (key to value)."""
    merged: JSON = strategic_merge(pod, overrides)
    before = {c["name"]: c for c in pod["spec"]["containers"]}
    after = {c.get("name"): c for c in merged.get("spec", {}).get("containers") or []}
    if set(after) != set(before):
        raise SpecError("pod_overrides", "must not add or remove containers")
    for name, container in before.items():
        for key in ("image", "command", "args"):
            if after[name].get(key) != container.get(key):
                raise SpecError(
                    "pod_overrides", f"must not change the {key} of step {name}'s container"
                )
    meta = merged.get("metadata") or {}
    for kind in ("labels", "annotations"):
        ours = {k: v for k, v in reserved.items() if k in (pod["metadata"].get(kind) or {})}
        theirs = meta.get(kind) or {}
        for key, value in ours.items():
            if theirs.get(key) != value:
                raise SpecError("pod_overrides", f"must not change the runtime's {key}")
    for key in ("name", "namespace"):
        if meta.get(key) != pod["metadata"][key]:
            raise SpecError("pod_overrides", f"must not change the pod's {key}")
    spec = merged.get("spec") or {}
    if spec.get("restartPolicy") != pod["spec"]["restartPolicy"]:
        raise SpecError("pod_overrides", "must not change the restart policy")
    workspace = [v for v in pod["spec"].get("volumes") or [] if v.get("name") == "workspace"]
    if [v for v in spec.get("volumes") or [] if v.get("name") == "workspace"] != workspace:
        raise SpecError("pod_overrides", "must not change the workspace volume")
    return merged
