"""Build and step specs: validation on construction, and the pod they render to.

The rendered pod has one container per step. Each starts on the placeholder with the
step's final command line already in place, because a running pod's spec is immutable
except for its images: ``run_container`` later swaps only the image, and the kubelet
restarts the container with the step image and that command line (see
:mod:`buildruntime.launch`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from buildruntime.cluster.port import JSON
from buildruntime.errors import SpecError
from buildruntime.images import image_problem
from buildruntime.labels import BUILD_ID, MANAGED_BY, MANAGED_BY_VALUE, WORKER
from buildruntime.launch import step_process
from buildruntime.names import DNS1123_SUBDOMAIN, dns1123_label_problem
from buildruntime.pod_policy import POD_FIELDS, apply_overrides, check_policy_value
from buildruntime.quantities import QUANTITY
from buildruntime.reservations import shared_requests
from buildruntime.secrets import (
    ExistingSecret,
    RegistryCredentials,
    SecretValue,
    check_build_secrets,
    check_registries,
    check_step_secrets,
    pull_secret_name,
    secret_name,
)
from buildruntime.volumes import (
    DEFAULT_WORKSPACE_PATH,
    WORKSPACE_ENV,
    Workspace,
    check_mounts,
    check_volumes,
)
from buildruntime.volumes import render as render_volumes

STEPS_ANNOTATION = "buildruntime.io/steps"
"""Lists the pod's step containers, so a monitor can tell them from injected sidecars."""
PAUSE_ANNOTATION = "buildruntime.io/pause-image"
"""The placeholder image the steps start on, so a monitor can tell placeholder from step."""

PullPolicy = Literal["Always", "IfNotPresent", "Never"]
PULL_POLICIES: tuple[str, ...] = ("Always", "IfNotPresent", "Never")

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_RESOURCE_KEYS = ("requests", "limits")
_RESERVED_LABELS = (MANAGED_BY, BUILD_ID, WORKER)


def _require(value: object, field_name: str, kind: type, *, build_id: str | None = None) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SpecError(
            field_name, f"must be a {kind.__name__}, not {type(value).__name__}", build_id=build_id
        )


def _check_str_map(value: object, field_name: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise SpecError(field_name, f"must be a mapping of str to str, not {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise SpecError(
                f"{field_name}[{key!r}]",
                f"keys and values must be strings, got {type(key).__name__} -> "
                f"{type(item).__name__}",
            )
    return dict(value)


def _check_labels(value: object, field_name: str, *, values_too: bool) -> dict[str, str]:
    labels = _check_str_map(value, field_name)
    for key, item in labels.items():
        prefix, _, name = key.rpartition("/")
        if not name or len(name) > 63 or not _LABEL_NAME.match(name):
            raise SpecError(f"{field_name}[{key!r}]", "is not a valid label or annotation key")
        if prefix and (len(prefix) > 253 or not _LABEL_PREFIX.match(prefix)):
            raise SpecError(f"{field_name}[{key!r}]", "has an invalid DNS subdomain prefix")
        if values_too and (len(item) > 63 or not _LABEL_VALUE.match(item)):
            raise SpecError(
                f"{field_name}[{key!r}]",
                f"value {item!r} is not a valid label value (<= 63 of [A-Za-z0-9-_.], "
                "alphanumeric at both ends)",
            )
    return labels


def _check_resources(value: object, field_name: str) -> dict[str, dict[str, str]]:
    if not isinstance(value, Mapping):
        raise SpecError(field_name, "must be a mapping with 'requests' and/or 'limits'")
    out: dict[str, dict[str, str]] = {}
    for key, amounts in value.items():
        if key not in _RESOURCE_KEYS:
            raise SpecError(f"{field_name}.{key}", "unknown key: expected 'requests' or 'limits'")
        if not isinstance(amounts, Mapping):
            raise SpecError(f"{field_name}.{key}", "must be a mapping of resource name to quantity")
        checked: dict[str, str] = {}
        for name, quantity in amounts.items():
            text = str(quantity) if isinstance(quantity, int | float) else quantity
            if not isinstance(name, str) or not isinstance(text, str) or isinstance(quantity, bool):
                raise SpecError(f"{field_name}.{key}.{name}", "must be a quantity such as '64Mi'")
            if not QUANTITY.match(text):
                raise SpecError(
                    f"{field_name}.{key}.{name}",
                    f"{text!r} is not a quantity (e.g. '500m', '64Mi')",
                )
            checked[name] = text
        out[key] = checked
    return out


@dataclass(frozen=True)
class StepSpec:
    """One pipeline step: one container of the build's pod."""

    name: str
    image: str
    commands: Sequence[str] = ()
    entrypoint: Sequence[str] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    pull_policy: PullPolicy = "IfNotPresent"
    timeout: float | None = None
    resources: Mapping[str, Mapping[str, str]] | None = None
    mounts: Mapping[str, str] = field(default_factory=dict)
    """The build's named volumes this step mounts: volume name to path."""
    detach: bool = False
    """A service (a database, a cache): ``run_container`` returns once it runs, or once
    its ``ports`` accept connections; nothing waits for it to end, and ``remove_build``
    stops it. Other steps reach it by its name and on localhost."""
    ports: Sequence[int] = ()
    """TCP ports a detached step serves; it is ready once the first accepts connections
    (its readinessProbe, as the kubelet checks it)."""
    security_context: Mapping[str, Any] | None = None
    """The container's securityContext (runAsUser, capabilities, ...)."""
    privileged: bool = False
    """Run the step's container privileged (``securityContext.privileged``)."""
    secrets: Mapping[str, str | ExistingSecret] | Sequence[str] = field(default_factory=dict)
    """Secrets the step gets as environment variables: a list of the build's secret
    names, or a mapping of variable name to a build secret's name or an
    :class:`ExistingSecret`."""

    def __post_init__(self) -> None:
        problem = dns1123_label_problem(self.name)
        if problem:
            raise SpecError("name", problem)
        where = f"steps[{self.name}]"
        if not isinstance(self.image, str):
            raise SpecError(f"{where}.image", f"must be a string, not {type(self.image).__name__}")
        problem = image_problem(self.image)
        if problem:
            raise SpecError(f"{where}.image", problem)
        if isinstance(self.commands, str) or not isinstance(self.commands, Sequence):
            raise SpecError(f"{where}.commands", "must be a list of shell lines")
        for i, line in enumerate(self.commands):
            if not isinstance(line, str):
                raise SpecError(f"{where}.commands[{i}]", "must be a string")
        object.__setattr__(self, "commands", tuple(self.commands))
        if self.entrypoint is not None:
            if isinstance(self.entrypoint, str) or not isinstance(self.entrypoint, Sequence):
                raise SpecError(f"{where}.entrypoint", "must be a list of strings")
            if not self.entrypoint or not all(isinstance(a, str) and a for a in self.entrypoint):
                raise SpecError(
                    f"{where}.entrypoint", "must be a non-empty list of non-empty strings"
                )
            object.__setattr__(self, "entrypoint", tuple(self.entrypoint))
        env = _check_str_map(self.env, f"{where}.env")
        for key in env:
            if not _ENV_NAME.match(key):
                raise SpecError(
                    f"{where}.env[{key!r}]",
                    "is not a valid environment variable name ([-._a-zA-Z][-._a-zA-Z0-9]*)",
                )
        if WORKSPACE_ENV in env:
            raise SpecError(
                f"{where}.env[{WORKSPACE_ENV!r}]", "is set by the runtime to the workspace path"
            )
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "mounts", check_mounts(self.mounts, where))
        object.__setattr__(self, "secrets", check_step_secrets(self.secrets, where))
        for name in self.secrets:
            if name in env or name == WORKSPACE_ENV:
                raise SpecError(f"{where}.secrets[{name!r}]", "is also set in env")
        if self.working_dir is not None and (
            not isinstance(self.working_dir, str) or not self.working_dir.startswith("/")
        ):
            raise SpecError(f"{where}.working_dir", "must be an absolute path")
        if self.pull_policy not in PULL_POLICIES:
            raise SpecError(
                f"{where}.pull_policy",
                f"{self.pull_policy!r} is not one of {', '.join(PULL_POLICIES)}",
            )
        if self.timeout is not None:
            if isinstance(self.timeout, bool) or not isinstance(self.timeout, int | float):
                raise SpecError(f"{where}.timeout", "must be a number of seconds")
            if not self.timeout > 0 or self.timeout != self.timeout:
                raise SpecError(f"{where}.timeout", "must be greater than 0")
        if self.resources is not None:
            object.__setattr__(
                self, "resources", _check_resources(self.resources, f"{where}.resources")
            )
        if not isinstance(self.detach, bool):
            raise SpecError(f"{where}.detach", "must be true or false")
        if isinstance(self.ports, str | bytes) or not isinstance(self.ports, Sequence):
            raise SpecError(f"{where}.ports", "must be a list of TCP port numbers")
        for i, port in enumerate(self.ports):
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise SpecError(f"{where}.ports[{i}]", f"{port!r} is not a port number")
        if self.ports and not self.detach:
            raise SpecError(f"{where}.ports", "only a detached step (a service) has ports")
        object.__setattr__(self, "ports", tuple(self.ports))
        if self.security_context is not None:
            if not isinstance(self.security_context, Mapping):
                raise SpecError(f"{where}.security_context", "must be a mapping")
            object.__setattr__(self, "security_context", dict(self.security_context))
        if not isinstance(self.privileged, bool):
            raise SpecError(f"{where}.privileged", "must be true or false")

    @property
    def secret_env(self) -> Mapping[str, str | ExistingSecret]:
        """The step's secrets as environment variable to source (a list of names was
        made a mapping on construction)."""
        return cast("Mapping[str, str | ExistingSecret]", self.secrets)


@dataclass(frozen=True)
class BuildSpec:
    """A build: one pod, its steps in order."""

    build_id: str
    steps: Sequence[StepSpec]
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    service_account: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    pause_image: str | None = None
    timeout: float | None = None
    """The whole build's deadline in seconds, from the pod's start: Kubernetes itself ends
    the pod then (``activeDeadlineSeconds``), even when no worker is left to do it."""
    workspace: Workspace | None = None
    """Where the steps share files; None: an emptyDir at the runtime's workspace path."""
    volumes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Named Kubernetes volume sources (configMap, secret, emptyDir,
    persistentVolumeClaim, hostPath) that steps mount by name."""
    secrets: Mapping[str, str | SecretValue] = field(default_factory=dict)
    """Secret values by name, given to the steps that name them through the build's own
    Secret; never in the pod spec, masked in every line the library shows."""
    image_pull_secrets: Sequence[str] = ()
    """Existing ``kubernetes.io/dockerconfigjson`` Secrets the kubelet pulls with."""
    registries: Mapping[str, RegistryCredentials] = field(default_factory=dict)
    """Credentials by registry host: the runtime makes the build an image pull Secret of
    them, owned by the pod like the build's other Secret."""
    tolerations: Sequence[Mapping[str, Any]] | None = None
    affinity: Mapping[str, Any] | None = None
    runtime_class_name: str | None = None
    priority_class_name: str | None = None
    security_context: Mapping[str, Any] | None = None
    """The pod's securityContext."""
    dns_config: Mapping[str, Any] | None = None
    dns_policy: str | None = None
    pod_overrides: Mapping[str, Any] | None = None
    """A strategic merge patch applied to the rendered pod, for what the spec does not
    model (see :mod:`buildruntime.pod_policy`)."""

    def __post_init__(self) -> None:
        problem = dns1123_label_problem(self.build_id)
        if problem:
            raise SpecError("build_id", problem)
        bid = self.build_id
        if isinstance(self.steps, str | bytes) or not isinstance(self.steps, Sequence):
            raise SpecError("steps", "must be a list of StepSpec", build_id=bid)
        if not self.steps:
            raise SpecError("steps", "must hold at least one step", build_id=bid)
        seen: set[str] = set()
        for i, step in enumerate(self.steps):
            if not isinstance(step, StepSpec):
                raise SpecError(
                    f"steps[{i}]", f"must be a StepSpec, not {type(step).__name__}", build_id=bid
                )
            if step.name in seen:
                raise SpecError(
                    f"steps[{i}].name", f"duplicate step name {step.name!r}", build_id=bid
                )
            seen.add(step.name)
        object.__setattr__(self, "steps", tuple(self.steps))
        labels = _check_labels(self.labels, "labels", values_too=True)
        for reserved in _RESERVED_LABELS:
            if reserved in labels:
                raise SpecError(
                    f"labels[{reserved!r}]", "is set by the runtime itself", build_id=bid
                )
        object.__setattr__(self, "labels", labels)
        object.__setattr__(
            self, "annotations", _check_labels(self.annotations, "annotations", values_too=False)
        )
        object.__setattr__(
            self,
            "node_selector",
            _check_labels(self.node_selector, "node_selector", values_too=True),
        )
        if self.service_account is not None:
            problem = dns1123_label_problem(self.service_account)
            if problem and not (
                isinstance(self.service_account, str)
                and DNS1123_SUBDOMAIN.match(self.service_account)
            ):
                raise SpecError("service_account", problem, build_id=bid)
        if self.pause_image is not None:
            if not isinstance(self.pause_image, str):
                raise SpecError("pause_image", "must be a string", build_id=bid)
            problem = image_problem(self.pause_image)
            if problem:
                raise SpecError("pause_image", problem, build_id=bid)
        if self.workspace is not None and not isinstance(self.workspace, Workspace):
            raise SpecError(
                "workspace", f"must be a Workspace, not {type(self.workspace).__name__}"
            )
        object.__setattr__(self, "volumes", check_volumes(self.volumes))
        object.__setattr__(self, "secrets", check_build_secrets(self.secrets))
        object.__setattr__(self, "registries", check_registries(self.registries))
        if isinstance(self.image_pull_secrets, str) or not all(
            isinstance(name, str) and DNS1123_SUBDOMAIN.match(name)
            for name in self.image_pull_secrets
        ):
            raise SpecError("image_pull_secrets", "must be a list of Secret names", build_id=bid)
        object.__setattr__(self, "image_pull_secrets", tuple(self.image_pull_secrets))
        for name in POD_FIELDS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_policy_value(name, value))
        if self.pod_overrides is not None and not isinstance(self.pod_overrides, Mapping):
            raise SpecError("pod_overrides", "must be a mapping (a patch of the pod)", build_id=bid)
        for step in self.steps:
            for env, source in step.secret_env.items():
                if isinstance(source, str) and source not in self.secrets:
                    known = ", ".join(sorted(self.secrets)) or "none declared"
                    raise SpecError(
                        f"steps[{step.name}].secrets[{env!r}]",
                        f"no secret {source!r} in the build's secrets ({known})",
                        build_id=bid,
                    )
        if self.timeout is not None:
            if isinstance(self.timeout, bool) or not isinstance(self.timeout, int | float):
                raise SpecError("timeout", "must be a number of seconds", build_id=bid)
            if not self.timeout > 0 or self.timeout == float("inf"):
                raise SpecError("timeout", "must be a finite number greater than 0", build_id=bid)

    @property
    def secret_values(self) -> Mapping[str, SecretValue]:
        """The build's secrets (plain strings were wrapped on construction)."""
        return cast("Mapping[str, SecretValue]", self.secrets)

    def step(self, name: str) -> StepSpec:
        """The step called ``name``; KeyError when there is none."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    @property
    def pod_name(self) -> str:
        """The pod's name: the build id itself, which is already unique per namespace."""
        return self.build_id


def _secret_env(spec: BuildSpec, env: str, source: str | ExistingSecret) -> JSON:
    if isinstance(source, ExistingSecret):
        ref = {"name": source.name, "key": source.key}
    else:
        ref = {"name": secret_name(spec.pod_name), "key": source}
    return {"name": env, "valueFrom": {"secretKeyRef": ref}}


def render_pod(
    spec: BuildSpec,
    *,
    namespace: str,
    pause_image: str,
    placeholder_image: str | None = None,
    workspace_path: str = DEFAULT_WORKSPACE_PATH,
) -> JSON:
    """The pod manifest for ``spec``: every step a container on the placeholder, all of
    them mounting the build's workspace.

    The placeholder is the build's own ``pause_image`` if it names one, else
    ``placeholder_image`` if the runtime has one, else ``pause_image``; only on
    ``placeholder_image`` do the steps' commands go into ``command`` (see
    :mod:`buildruntime.launch`)."""
    placeholder = spec.pause_image or placeholder_image or pause_image
    placeholder_runs_commands = spec.pause_image is None and placeholder_image is not None
    workspace = spec.workspace or Workspace()
    path = workspace.path or workspace_path
    try:
        volumes, mounts = render_volumes(
            workspace, path, spec.volumes, {step.name: step.mounts for step in spec.steps}
        )
    except SpecError as error:
        raise SpecError(error.field, error.problem, build_id=spec.build_id) from None
    # The pod requests its peak, not its sum: see buildruntime.reservations.
    reserved = shared_requests([(step.name, step.resources, step.detach) for step in spec.steps])
    containers: list[JSON] = []
    for step in spec.steps:
        container: dict[str, Any] = {
            "name": step.name,
            "image": placeholder,
            "imagePullPolicy": step.pull_policy,
            "env": [
                {"name": WORKSPACE_ENV, "value": path},
                *({"name": k, "value": v} for k, v in step.env.items()),
                *(_secret_env(spec, env, source) for env, source in step.secret_env.items()),
            ],
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": mounts[step.name],
            # A step starts in the workspace unless it says otherwise.
            "workingDir": step.working_dir or path,
        }
        try:
            process = step_process(
                step.name,
                step.commands,
                step.entrypoint,
                placeholder_runs_commands=placeholder_runs_commands,
            )
        except SpecError as error:
            raise SpecError(error.field, error.problem, build_id=spec.build_id) from None
        container.update(process)
        if step.name in reserved:
            container["resources"] = reserved[step.name]
        if step.security_context is not None or step.privileged:
            context = dict(step.security_context or {})
            if step.privileged:
                context["privileged"] = True
            container["securityContext"] = context
        if step.ports:
            container["ports"] = [{"containerPort": port} for port in step.ports]
            # Checked by the kubelet, seen by the runtime as the container's `ready` flag
            # through the pod watch: nothing polls the service from outside.
            container["readinessProbe"] = {
                "tcpSocket": {"port": step.ports[0]},
                "periodSeconds": 1,
                "failureThreshold": 1,
            }
        containers.append(container)
    labels = {**spec.labels, MANAGED_BY: MANAGED_BY_VALUE, BUILD_ID: spec.build_id}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": containers,
        # Steps run one at a time; a short grace period keeps removal quick.
        "terminationGracePeriodSeconds": 5,
        "automountServiceAccountToken": spec.service_account is not None,
        "volumes": volumes,
    }
    services = [step.name for step in spec.steps if step.detach]
    if services:
        # Services are reached by name as on Drone, Vela and GitLab: every container of
        # the pod shares its network namespace, so the name stands for localhost.
        pod_spec["hostAliases"] = [{"ip": "127.0.0.1", "hostnames": services}]
    if spec.service_account:
        pod_spec["serviceAccountName"] = spec.service_account
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.timeout is not None:
        # Whole seconds, at least one, rounded up: never shorter than asked.
        pod_spec["activeDeadlineSeconds"] = max(1, math.ceil(spec.timeout))
    pull_secrets = [*spec.image_pull_secrets]
    if spec.registries:
        pull_secrets.append(pull_secret_name(spec.pod_name))
    if pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in pull_secrets]
    for name, (key, _) in POD_FIELDS.items():
        value = getattr(spec, name)
        if value is not None:
            pod_spec[key] = value
    pod: JSON = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": spec.pod_name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {
                **spec.annotations,
                STEPS_ANNOTATION: ",".join(step.name for step in spec.steps),
                PAUSE_ANNOTATION: placeholder,
            },
        },
        "spec": pod_spec,
    }
    if spec.pod_overrides:
        runtime_keys = {
            **{key: labels[key] for key in (MANAGED_BY, BUILD_ID)},
            STEPS_ANNOTATION: pod["metadata"]["annotations"][STEPS_ANNOTATION],
            PAUSE_ANNOTATION: placeholder,
        }
        try:
            pod = apply_overrides(pod, spec.pod_overrides, runtime_keys)
        except SpecError as error:
            raise SpecError(error.field, error.problem, build_id=spec.build_id) from None
    return pod
