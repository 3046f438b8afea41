"""The errors buildruntime raises. Each says, in one line, what happened to which build
and step, and keeps the Kubernetes reason and message it came from."""

from __future__ import annotations


class BuildRuntimeError(Exception):
    """Base of every error this library raises on purpose."""

    def __init__(
        self,
        summary: str,
        *,
        build_id: str | None = None,
        step: str | None = None,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        self.summary = summary
        self.build_id = build_id
        self.step = step
        self.reason = reason
        self.message = message
        super().__init__(self._one_line())

    def _one_line(self) -> str:
        where = []
        if self.build_id:
            where.append(f"build {self.build_id}")
        if self.step:
            where.append(f"step {self.step}")
        prefix = f"{', '.join(where)}: " if where else ""
        text = f"{prefix}{self.summary}"
        if self.message and self.message not in self.summary:
            text += f": {self.message}"
        if self.reason and self.reason not in text:
            text += f" ({self.reason})"
        return " ".join(text.split())


class SpecError(BuildRuntimeError, ValueError):
    """A build or step spec (or pipeline file) is invalid. ``field`` names the field."""

    def __init__(self, field: str, problem: str, *, build_id: str | None = None) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}", build_id=build_id)


class UsageError(BuildRuntimeError):
    """A call made out of order or on a build it cannot apply to: a step tailed or
    awaited before ``run_container``, a build used before ``assemble_build`` or after
    ``remove_build``, a build id set up twice. The spec itself is fine."""


class AdmissionError(BuildRuntimeError):
    """The API server refused to create the build's pod (an admission webhook, a quota,
    a policy). ``message`` is the API server's message, verbatim."""


class SchedulingError(BuildRuntimeError):
    """The pod was not scheduled within ``schedule_timeout``; ``message`` is the
    scheduler's last word (a FailedScheduling event) when there was one."""


class ImagePullError(BuildRuntimeError):
    """A step's image cannot be pulled (or may not be pulled, or is not a valid name)."""


class ContainerCreateError(BuildRuntimeError):
    """The kubelet could not create a step's container (CreateContainerError,
    CreateContainerConfigError, ContainerCannotRun)."""


class ServiceError(BuildRuntimeError):
    """A detached step (a service) ended before its ports accepted connections;
    ``message`` holds its last log lines."""


class PodGoneError(BuildRuntimeError):
    """The build's pod was deleted, evicted or lost while the build still needed it."""


class StepTimeoutError(BuildRuntimeError):
    """A step ran longer than its ``timeout``."""


class BuildAdoptedError(BuildRuntimeError):
    """``attach_build`` found the build held by another worker: one that adopted it
    first, or one that still runs it. ``worker`` names the holder."""

    def __init__(self, summary: str, *, build_id: str, worker: str | None) -> None:
        self.worker = worker
        super().__init__(summary, build_id=build_id, reason="Adopted")


class ClusterUnavailableError(BuildRuntimeError):
    """The API server could not be reached for longer than the runtime waits."""


class LeaseError(BuildRuntimeError):
    """The API server refused the worker's Lease (a Role without ``leases``, a quota):
    without it the worker cannot create builds that Kubernetes cleans up if it dies."""


__all__ = [
    "AdmissionError",
    "BuildAdoptedError",
    "BuildRuntimeError",
    "ClusterUnavailableError",
    "ContainerCreateError",
    "ImagePullError",
    "LeaseError",
    "PodGoneError",
    "SchedulingError",
    "ServiceError",
    "SpecError",
    "StepTimeoutError",
    "UsageError",
]
