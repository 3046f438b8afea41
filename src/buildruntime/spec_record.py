"""The build's spec, carried by its pod as an annotation, so that another worker can
adopt the build (``Runtime.attach_build``) and still know its steps.

The record is compact versioned JSON (msgspec; fields left at their defaults are
omitted) of every field of the :class:`BuildSpec` but secret values: a build's secrets
are recorded by name, its registry credentials by user name. The steps' environment
still gets the values, from the build's own Secret that the pod references; the adopting
worker reads that Secret back to mask the values again.

Kubernetes caps a pod's annotations at 256 KiB in total; a spec that does not fit is a
:class:`SpecError` at ``setup_build`` naming its largest field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from buildruntime.cluster.port import JSON
from buildruntime.errors import SpecError
from buildruntime.secrets import (
    ExistingSecret,
    RegistryCredentials,
    SecretValue,
    pull_secret_name,
    secret_name,
)
from buildruntime.spec import BuildSpec, StepSpec
from buildruntime.volumes import Workspace

SPEC_ANNOTATION = "buildruntime.io/spec"
VERSION = 1
ANNOTATIONS_LIMIT = 256 * 1024
"""Kubernetes' limit on the total size of an object's annotations (keys and values)."""

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class RecordedBuild:
    """What an adopting worker learns from the pod's annotations."""

    spec: BuildSpec
    """The build's spec; its secret and registry values are those given to :func:`read`
    (empty when unknown)."""
    secret_names: tuple[str, ...]
    """The names of the build's secrets (the keys of its Secret)."""
    registry_hosts: tuple[str, ...]
    """The registries the build has credentials for (in its pull Secret)."""

    @property
    def secret_objects(self) -> list[str]:
        """The names of the Secrets the build owns (removed with it)."""
        pod = self.spec.pod_name
        return [
            *([secret_name(pod)] if self.secret_names else []),
            *([pull_secret_name(pod)] if self.registry_hosts else []),
        ]


def _defaults(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _plain(value: Any) -> Any:
    """``value`` as JSON data (tuples become lists, dataclasses dicts)."""
    if isinstance(value, SecretValue):
        raise TypeError("a secret value is never recorded")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _changed(obj: Any, defaults: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of a spec dataclass that differ from their defaults, as JSON data."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if f.name in defaults and _plain(value) == _plain(defaults[f.name]):
            continue
        out[f.name] = _plain(value)
    return out


def record_of(spec: BuildSpec) -> JSON:
    """The record of ``spec`` as JSON data (no secret value in it)."""
    step_defaults = _defaults(StepSpec)
    build: dict[str, Any] = _changed(
        spec, _defaults(BuildSpec), skip=("steps", "secrets", "registries")
    )
    build["steps"] = [_changed(step, step_defaults) for step in spec.steps]
    if spec.secrets:
        build["secrets"] = sorted(spec.secrets)
    if spec.registries:
        build["registries"] = {host: cred.username for host, cred in spec.registries.items()}
    return {"v": VERSION, "spec": build}


def annotate(manifest: JSON, spec: BuildSpec) -> None:
    """Add the spec's record to the pod ``manifest``; :class:`SpecError` naming the
    largest field when the pod's annotations would pass Kubernetes' limit."""
    record = record_of(spec)
    text = _encoder.encode(record).decode()
    annotations = manifest["metadata"].setdefault("annotations", {})
    annotations[SPEC_ANNOTATION] = text
    total = sum(len(key.encode()) + len(value.encode()) for key, value in annotations.items())
    if total > ANNOTATIONS_LIMIT:
        field, size = _largest_field(record["spec"], spec)
        raise SpecError(
            field,
            f"is {size // 1024} KiB: the build's spec travels with its pod as an annotation, "
            f"and the pod's annotations would be {total // 1024} KiB, above Kubernetes' "
            f"limit of {ANNOTATIONS_LIMIT // 1024} KiB",
            build_id=spec.build_id,
        )


def _largest_field(build: JSON, spec: BuildSpec) -> tuple[str, int]:
    sizes: dict[str, int] = {}
    for name, value in build.items():
        if name == "steps":
            for step in value:
                for key, item in step.items():
                    sizes[f"steps[{step['name']}].{key}"] = len(_encoder.encode(item))
        else:
            sizes[name] = len(_encoder.encode(value))
    for key, value in spec.annotations.items():
        sizes[f"annotations[{key!r}]"] = len(key.encode()) + len(value.encode())
    field = max(sizes, key=lambda name: sizes[name])
    return field, sizes[field]


def read(
    pod: JSON,
    *,
    secret_values: Mapping[str, str] | None = None,
    registry_passwords: Mapping[str, str] | None = None,
) -> RecordedBuild:
    """The build recorded in ``pod``'s annotations. :class:`SpecError` (naming the
    annotation) when it has none or one this version cannot read."""
    metadata = pod.get("metadata") or {}
    name = metadata.get("name")
    annotations = metadata.get("annotations") or {}
    field = f"annotations[{SPEC_ANNOTATION!r}]"
    text = annotations.get(SPEC_ANNOTATION)
    if text is None:
        raise SpecError(
            field,
            "is missing: the pod was not created by a buildruntime that records its spec",
            build_id=name,
        )
    try:
        record = msgspec.json.decode(text)
    except msgspec.DecodeError as error:
        raise SpecError(field, f"is not JSON: {error}", build_id=name) from None
    if not isinstance(record, dict) or record.get("v") != VERSION:
        version = record.get("v") if isinstance(record, dict) else None
        raise SpecError(
            field, f"has version {version!r}; this buildruntime reads {VERSION}", build_id=name
        )
    build = dict(record["spec"])
    secret_names = tuple(build.pop("secrets", ()))
    registries: dict[str, str] = build.pop("registries", {})
    values = secret_values or {}
    passwords = registry_passwords or {}
    build["steps"] = [_step(step) for step in build["steps"]]
    if "workspace" in build and build["workspace"] is not None:
        build["workspace"] = Workspace(**build["workspace"])
    build["secrets"] = {name: SecretValue(values.get(name, "")) for name in secret_names}
    build["registries"] = {
        host: RegistryCredentials(user, passwords.get(host, ""))
        for host, user in registries.items()
    }
    spec = BuildSpec(**build)
    return RecordedBuild(spec, secret_names, tuple(registries))


def _step(step: JSON) -> StepSpec:
    secrets = step.get("secrets")
    if isinstance(secrets, dict):
        step = {
            **step,
            "secrets": {
                env: ExistingSecret(**source) if isinstance(source, dict) else source
                for env, source in secrets.items()
            },
        }
    return StepSpec(**step)
