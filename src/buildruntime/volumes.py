"""The build's shared workspace and its named volumes: specs, checks and rendering.

Every step of a build mounts one workspace volume at the same path (``/workspace`` by
default), which is also its default working directory and its ``CI_WORKSPACE``: what one
step writes there, the next reads. The workspace is an ``emptyDir`` (it lives and dies
with the pod; optionally size-limited or in memory) or an existing
PersistentVolumeClaim. A build may also declare named Kubernetes volume sources, and a
step mounts them by name at a path of its own.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from buildruntime.cluster.port import JSON
from buildruntime.errors import SpecError
from buildruntime.names import DNS1123_SUBDOMAIN, dns1123_label_problem

DEFAULT_WORKSPACE_PATH = "/workspace"
WORKSPACE_VOLUME = "workspace"
"""The workspace's volume name in the pod (reserved: a build's own volumes take others)."""
WORKSPACE_ENV = "CI_WORKSPACE"

VOLUME_KINDS = ("configMap", "secret", "emptyDir", "persistentVolumeClaim", "hostPath")
"""The volume sources a build may declare."""

_QUANTITY = re.compile(r"^(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


def check_path(value: object, field: str) -> str:
    """An absolute, normalised container path."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise SpecError(field, f"must be an absolute path, not {value!r}")
    normal = posixpath.normpath(value)
    if normal == "/":
        raise SpecError(field, "must not be the container's root directory")
    return normal


@dataclass(frozen=True)
class Workspace:
    """Where a build's steps share their files."""

    path: str | None = None
    """Mounted at this path in every step; each step's default working directory. None:
    the runtime's ``workspace_path``."""
    size_limit: str | None = None
    """The emptyDir's ``sizeLimit`` (a quantity such as ``"2Gi"``)."""
    medium: Literal["Memory"] | None = None
    """``"Memory"``: a tmpfs, counted against the pod's memory."""
    claim: str | None = None
    """An existing PersistentVolumeClaim's name, used instead of an emptyDir."""

    def __post_init__(self) -> None:
        if self.path is not None:
            object.__setattr__(self, "path", check_path(self.path, "workspace.path"))
        if self.size_limit is not None and (
            not isinstance(self.size_limit, str) or not _QUANTITY.match(self.size_limit)
        ):
            raise SpecError(
                "workspace.size_limit", f"{self.size_limit!r} is not a quantity (e.g. '2Gi')"
            )
        if self.medium not in (None, "Memory"):
            raise SpecError("workspace.medium", f"must be 'Memory' or None, not {self.medium!r}")
        if self.claim is not None:
            if not isinstance(self.claim, str) or not DNS1123_SUBDOMAIN.match(self.claim):
                raise SpecError("workspace.claim", f"{self.claim!r} is not a claim name")
            if self.size_limit is not None or self.medium is not None:
                raise SpecError(
                    "workspace", "size_limit and medium apply to an emptyDir, not to a claim"
                )

    def source(self) -> JSON:
        if self.claim is not None:
            return {"persistentVolumeClaim": {"claimName": self.claim}}
        empty: dict[str, Any] = {}
        if self.size_limit is not None:
            empty["sizeLimit"] = self.size_limit
        if self.medium is not None:
            empty["medium"] = self.medium
        return {"emptyDir": empty}


def check_volumes(value: object) -> dict[str, JSON]:
    """Named volume sources: each a mapping with exactly one of :data:`VOLUME_KINDS`."""
    if not isinstance(value, Mapping):
        raise SpecError(
            "volumes", f"must be a mapping of name to volume source, not {type(value).__name__}"
        )
    volumes: dict[str, JSON] = {}
    for name, source in value.items():
        field = f"volumes[{name!r}]"
        if not isinstance(name, str) or dns1123_label_problem(name) is not None:
            raise SpecError(field, "the name must be a DNS-1123 label")
        if name == WORKSPACE_VOLUME:
            raise SpecError(field, f"{WORKSPACE_VOLUME!r} is the workspace's own volume")
        if not isinstance(source, Mapping) or len(source) != 1:
            raise SpecError(field, f"must hold exactly one of {', '.join(VOLUME_KINDS)}")
        ((kind, detail),) = source.items()
        if kind not in VOLUME_KINDS:
            raise SpecError(field, f"{kind!r} is not one of {', '.join(VOLUME_KINDS)}")
        if not isinstance(detail, Mapping):
            raise SpecError(f"{field}.{kind}", "must be a mapping")
        volumes[name] = {kind: dict(detail)}
    return volumes


def check_mounts(value: object, where: str) -> dict[str, str]:
    """A step's mounts: volume name to an absolute path."""
    field = f"{where}.mounts"
    if not isinstance(value, Mapping):
        raise SpecError(
            field, f"must be a mapping of volume name to path, not {type(value).__name__}"
        )
    mounts: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name, path in value.items():
        if not isinstance(name, str):
            raise SpecError(field, "volume names must be strings")
        normal = check_path(path, f"{field}[{name!r}]")
        if normal in seen:
            raise SpecError(field, f"{name!r} and {seen[normal]!r} are both mounted at {normal}")
        seen[normal] = name
        mounts[name] = normal
    return mounts


def render(
    workspace: Workspace,
    path: str,
    volumes: Mapping[str, Mapping[str, Any]],
    steps: Mapping[str, Mapping[str, str]],
) -> tuple[list[JSON], dict[str, list[JSON]]]:
    """The pod's volumes and each step's volumeMounts, the workspace at ``path``;
    collisions are a :class:`SpecError`."""
    for step, mounts in steps.items():
        for name, mount in mounts.items():
            field = f"steps[{step}].mounts[{name!r}]"
            if name not in volumes:
                known = ", ".join(sorted(volumes)) or "none declared"
                raise SpecError(field, f"no volume {name!r} in the build's volumes ({known})")
            if mount == path:
                raise SpecError(field, f"{mount} is the workspace's path")
    pod_volumes = [{"name": WORKSPACE_VOLUME, **workspace.source()}]
    pod_volumes += [{"name": name, **source} for name, source in volumes.items()]
    container_mounts = {
        step: [
            {"name": WORKSPACE_VOLUME, "mountPath": path},
            *({"name": name, "mountPath": mount} for name, mount in mounts.items()),
        ]
        for step, mounts in steps.items()
    }
    return pod_volumes, container_mounts
