"""What the API server does to a pod on create and update: defaulting, admission's
additions, validation, and the immutability of a running pod's spec.

Mimics ``pkg/apis/core/v1/defaults.go`` (restartPolicy Always, grace period 30,
imagePullPolicy Always for ``:latest``/untagged images, IfNotPresent otherwise...), the
ServiceAccount and DefaultTolerationSeconds admission plugins, and the messages of
``pkg/apis/core/validation`` for the checks that matter here.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from buildruntime.cluster.port import ApiError
from buildruntime.testing import objects
from buildruntime.testing.objects import JSON

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    "regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or "
    "'123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
UPDATE_FORBIDDEN = (
    "spec: Forbidden: pod updates may not change fields other than "
    "`spec.containers[*].image`,`spec.initContainers[*].image`,"
    "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing "
    "tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
    "previously negative)"
)
SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def invalid(name: str, errors: list[str]) -> ApiError:
    """The 422 Invalid of a pod, with the server's way of joining several causes."""
    detail = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
    return ApiError(422, "Invalid", f'Pod "{name}" is invalid: {detail}')


def _label_errors(path: str, labels: Any) -> list[str]:
    errors: list[str] = []
    if labels is None:
        return errors
    if not isinstance(labels, dict):
        return [f"{path}: Invalid value: must be a map of strings"]
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        if (
            not name
            or len(name) > 63
            or not _QUALIFIED_NAME.match(name)
            or (prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)))
        ):
            errors.append(
                f'{path}: Invalid value: "{key}": name part must consist of '
                "alphanumeric characters, '-', '_' or '.', and must start and end "
                "with an alphanumeric character"
            )
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            errors.append(
                f'{path}: Invalid value: "{value}": a valid label must be an empty '
                "string or consist of alphanumeric characters, '-', '_' or '.', and "
                "must start and end with an alphanumeric character"
            )
    return errors


def _container_errors(containers: Any) -> list[str]:
    if not isinstance(containers, list) or not containers:
        return ["spec.containers: Required value"]
    errors: list[str] = []
    seen: set[str] = set()
    for index, container in enumerate(containers):
        path = f"spec.containers[{index}]"
        if not isinstance(container, dict):
            errors.append(f"{path}: Invalid value: must be an object")
            continue
        name = container.get("name")
        if not name:
            errors.append(f"{path}.name: Required value")
        elif not isinstance(name, str) or len(name) > 63 or not _DNS1123_LABEL.match(name):
            errors.append(f'{path}.name: Invalid value: "{name}": {LABEL_MESSAGE}')
        elif name in seen:
            errors.append(f'{path}.name: Duplicate value: "{name}"')
        else:
            seen.add(name)
        errors.extend(_image_errors(path, container.get("image")))
        policy = container.get("imagePullPolicy")
        if policy is not None and policy not in ("Always", "IfNotPresent", "Never"):
            errors.append(
                f'{path}.imagePullPolicy: Unsupported value: "{policy}": supported '
                'values: "Always", "IfNotPresent", "Never"'
            )
    return errors


def _image_errors(path: str, image: Any) -> list[str]:
    if not image:
        return [f"{path}.image: Required value"]
    if not isinstance(image, str) or image != image.strip():
        return [
            f'{path}.image: Invalid value: "{image}": must not have leading or trailing whitespace'
        ]
    return []


def default_pull_policy(image: str) -> str:
    """``Always`` for ``:latest`` or untagged images, else ``IfNotPresent``."""
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    if "@" in image:
        return "IfNotPresent"
    if ":" not in last or last.endswith(":latest"):
        return "Always"
    return "IfNotPresent"


def qos_class(containers: list[JSON]) -> str:
    """The pod's QoS class (``pkg/apis/core/v1/helper/qos``)."""
    any_set = False
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        requests = resources.get("requests") or {}
        limits = resources.get("limits") or {}
        if any(r in requests or r in limits for r in ("cpu", "memory")):
            any_set = True
        for resource in ("cpu", "memory"):
            if resource not in limits or str(requests.get(resource, limits[resource])) != str(
                limits[resource]
            ):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def create_pod_object(manifest: JSON, namespace: str) -> JSON:
    """Validate and default a pod to be created; raises 400/422 :class:`ApiError`."""
    if not isinstance(manifest, dict):
        raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
    pod = objects.clone(manifest)
    meta = pod.setdefault("metadata", {})
    if meta.get("namespace") not in (None, "", namespace):
        raise ApiError(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        )
    name = meta.get("name")
    if not name and meta.get("generateName"):
        name = f"{meta['generateName']}{objects.name_suffix()}"
        meta["name"] = name
    if not name:
        raise invalid("", ["metadata.name: Required value: name or generateName is required"])
    errors: list[str] = []
    if not isinstance(name, str) or len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        errors.append(f'metadata.name: Invalid value: "{name}": {SUBDOMAIN_MESSAGE}')
    errors.extend(_label_errors("metadata.labels", meta.get("labels")))
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        errors.append("spec.containers: Required value")
        spec = {}
    else:
        errors.extend(_container_errors(spec.get("containers")))
        policy = spec.get("restartPolicy")
        if policy is not None and policy not in ("Always", "OnFailure", "Never"):
            errors.append(
                f'spec.restartPolicy: Unsupported value: "{policy}": supported values: '
                '"Always", "OnFailure", "Never"'
            )
    if errors:
        raise invalid(str(name), errors)

    pod["kind"] = "Pod"
    pod["apiVersion"] = "v1"
    now = objects.api_time()
    meta.update(
        namespace=namespace,
        uid=str(uuid.uuid4()),
        creationTimestamp=now,
        generation=1,
    )
    for key in (
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
    ):
        meta.pop(key, None)
    _default_spec(pod["spec"])
    pod["status"] = {
        "phase": "Pending",
        "conditions": [],
        "qosClass": qos_class(pod["spec"]["containers"]),
    }
    manifest_fields = {k: v for k, v in manifest.items() if k != "status"}
    objects.record_manager(pod, "OpenAPI-Generator", manifest_fields)
    return pod


def _default_spec(spec: JSON) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec["serviceAccount"] = spec["serviceAccountName"]
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    tolerations: list[JSON] = spec.setdefault("tolerations", [])
    for taint in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if not any(t.get("key") == taint for t in tolerations):
            tolerations.append(
                {
                    "key": taint,
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
            )
    automount = spec.get("automountServiceAccountToken", True)
    volume_name = f"kube-api-access-{objects.name_suffix()}"
    if automount:
        spec.setdefault("volumes", []).append(
            {
                "name": volume_name,
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {
                                            "apiVersion": "v1",
                                            "fieldPath": "metadata.namespace",
                                        },
                                    }
                                ]
                            }
                        },
                    ],
                    "defaultMode": 420,
                },
            }
        )
    for container in spec["containers"]:
        container.setdefault("imagePullPolicy", default_pull_policy(container["image"]))
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        resources = container.setdefault("resources", {})
        limits = resources.get("limits")
        if limits:
            requests = resources.setdefault("requests", {})
            for resource, quantity in limits.items():
                requests.setdefault(resource, quantity)
        if automount:
            container.setdefault("volumeMounts", []).append(
                {"name": volume_name, "readOnly": True, "mountPath": SERVICE_ACCOUNT_MOUNT}
            )


def _tolerations_added_only(old: list[Any], new: list[Any]) -> bool:
    return all(item in new for item in old)


def validate_update(old: JSON, new: JSON) -> None:
    """Refuse what a pod update may not change; raises 422 :class:`ApiError`."""
    name = old["metadata"]["name"]
    errors = _label_errors("metadata.labels", new.get("metadata", {}).get("labels"))
    old_spec, new_spec = old.get("spec", {}), new.get("spec")
    if not isinstance(new_spec, dict):
        raise invalid(name, ["spec: Required value"])
    new_containers = new_spec.get("containers")
    old_containers = old_spec.get("containers", [])
    if isinstance(new_containers, list) and len(new_containers) == len(old_containers):
        for index, container in enumerate(new_containers):
            if isinstance(container, dict):
                errors.extend(_image_errors(f"spec.containers[{index}]", container.get("image")))
    if errors:
        raise invalid(name, errors)
    # Everything but the mutable fields must be equal.
    mutable = ("activeDeadlineSeconds", "containers")
    comparable_old = {k: v for k, v in old_spec.items() if k not in mutable}
    comparable_new = {k: v for k, v in new_spec.items() if k not in mutable}
    if isinstance(new_containers, list) and len(new_containers) == len(old_containers):
        comparable_old["containers"] = [{**c, "image": None} for c in old_containers]
        comparable_new["containers"] = [
            {**c, "image": None} if isinstance(c, dict) else c for c in new_containers
        ]
    else:
        comparable_old["containers"], comparable_new["containers"] = old_containers, new_containers
    if _tolerations_added_only(old_spec.get("tolerations", []), new_spec.get("tolerations", [])):
        comparable_old.pop("tolerations", None)
        comparable_new.pop("tolerations", None)
    if comparable_old != comparable_new:
        raise invalid(name, [UPDATE_FORBIDDEN])
