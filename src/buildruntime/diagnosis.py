"""From what Kubernetes reports (container state, pod status, Warning events) to one
``Failure``, one ``StepResult`` and one clear error."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from buildruntime.errors import ContainerCreateError, ImagePullError, PodGoneError
from buildruntime.informer.snapshots import ContainerStatus, EventSnapshot, PodSnapshot
from buildruntime.results import Failure, StepResult

PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
"""Waiting reasons meaning the step image will not run until something outside changes."""

CREATE_REASONS = frozenset(
    {
        "CreateContainerError",
        "CreateContainerConfigError",
        "RunContainerError",
        "PreCreateHookError",
    }
)
"""Waiting reasons meaning the kubelet could not create the container."""

_TERMINATED_FAILURES = {
    "OOMKilled": Failure.OOM_KILLED,
    "ContainerCannotRun": Failure.CONTAINER_CREATE,
    "StartError": Failure.CONTAINER_CREATE,
    "DeadlineExceeded": Failure.DEADLINE_EXCEEDED,
    "Evicted": Failure.EVICTED,
}

_POD_FAILURES = {
    "Evicted": Failure.EVICTED,
    "NodeLost": Failure.NODE_LOST,
    "DeadlineExceeded": Failure.DEADLINE_EXCEEDED,
}


@dataclass(frozen=True, slots=True)
class StepFailure:
    """A failure the kubelet reported in a Warning event, before or instead of a status."""

    failure: Failure
    reason: str
    """The waiting reason it stands for (ErrImagePull, CreateContainerError, ...)."""
    message: str
    """The kubelet's own words."""


def event_failure(event: EventSnapshot) -> StepFailure | None:
    """The failure a kubelet Warning event about a step container reports, if any.

    After the image swap the kubelet makes one attempt to start the step image (the
    pod's restartPolicy is Never), so a failed pull or create shows up as Warning
    events while the status keeps showing the placeholder's termination.
    """
    if event.type != "Warning":
        return None
    message = event.message
    if event.reason == "Failed" and message.startswith("Failed to pull image"):
        return StepFailure(Failure.IMAGE_PULL, "ErrImagePull", message)
    if event.reason == "ErrImageNeverPull":
        return StepFailure(Failure.IMAGE_PULL, "ErrImageNeverPull", message)
    if event.reason in ("InspectFailed", "InvalidImageName"):
        return StepFailure(Failure.IMAGE_PULL, "InvalidImageName", message)
    if event.reason == "BackOff" and message.startswith("Back-off pulling image"):
        return StepFailure(Failure.IMAGE_PULL, "ImagePullBackOff", message)
    if event.reason == "Failed" and message.startswith("Error: "):
        reason = message[len("Error: ") :].split(":", 1)[0].strip()
        if reason in PULL_REASONS:
            return StepFailure(Failure.IMAGE_PULL, reason, message)
        return StepFailure(Failure.CONTAINER_CREATE, reason or "CreateContainerError", message)
    return None


TIMEOUT_REASON = "Timeout"
"""The reason of a step the runtime stopped at its timeout."""
STOPPED_MESSAGE = "stopped by the runtime: the step ran longer than its timeout"


POD_GONE_FAILURES = frozenset({Failure.POD_DELETED, Failure.EVICTED, Failure.NODE_LOST})
"""Failures that mean the pod itself went away, not the step."""


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 timestamp from the API server as an aware datetime."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def terminated_failure(container: ContainerStatus) -> Failure | None:
    """The failure a terminated container stands for, or None for success."""
    by_reason = _TERMINATED_FAILURES.get(container.reason or "")
    if by_reason is not None:
        return by_reason
    if container.exit_code == 0:
        return None
    return Failure.APP_ERROR if container.exit_code is not None else Failure.UNKNOWN


def waiting_failure(container: ContainerStatus) -> Failure | None:
    """The failure a waiting container's reason stands for, or None while it may still start."""
    if container.reason in PULL_REASONS:
        return Failure.IMAGE_PULL
    if container.reason in CREATE_REASONS:
        return Failure.CONTAINER_CREATE
    return None


def pod_failure(pod: PodSnapshot | None) -> Failure | None:
    """The failure a pod-level state stands for: evicted, node lost, deleted, gone."""
    if pod is None:
        return Failure.POD_DELETED
    by_reason = _POD_FAILURES.get(pod.reason or "")
    if by_reason is not None:
        return by_reason
    if pod.deleting:
        return Failure.POD_DELETED
    return None


def step_result(
    step: str,
    container: ContainerStatus | None,
    pod: PodSnapshot | None,
    *,
    stopped: bool = False,
) -> StepResult:
    """The step's result from its step-image container status (None: not started yet);
    ``stopped``: the runtime stopped it at its timeout."""
    if stopped and container is not None and container.phase == "terminated":
        return StepResult(
            step=step,
            state="terminated",
            exit_code=container.exit_code,
            reason=TIMEOUT_REASON,
            message=STOPPED_MESSAGE,
            started_at=parse_time(container.started_at),
            finished_at=parse_time(container.finished_at),
            failure=Failure.TIMEOUT,
        )
    if container is None:
        failure = pod_failure(pod)
        return StepResult(
            step=step,
            state="waiting",
            reason=pod.reason if pod is not None and failure else None,
            message=pod.message if pod is not None and failure else None,
            failure=failure,
        )
    if container.phase == "terminated":
        failure = terminated_failure(container)
        pod_level = pod_failure(pod)
        if failure is not None and pod_level is not None and container.exit_code in (137, 143):
            # Killed because the pod went away, not because the step failed on its own.
            failure = pod_level
        return StepResult(
            step=step,
            state="terminated",
            exit_code=container.exit_code,
            reason=container.reason,
            message=container.message,
            started_at=parse_time(container.started_at),
            finished_at=parse_time(container.finished_at),
            failure=failure,
        )
    if container.phase == "running":
        return StepResult(step=step, state="running", started_at=parse_time(container.started_at))
    return StepResult(
        step=step,
        state="waiting",
        reason=container.reason,
        message=container.message,
        failure=waiting_failure(container) or pod_failure(pod),
    )


def _latest_warning(events: Iterable[EventSnapshot], *prefixes: str) -> EventSnapshot | None:
    """The last Warning event whose message starts with one of ``prefixes``."""
    found: EventSnapshot | None = None
    for event in events:
        if event.type == "Warning" and event.message.startswith(prefixes):
            found = event
    return found


def status_failure(container: ContainerStatus) -> StepFailure:
    """A waiting status with a failure reason, as a :class:`StepFailure`."""
    return StepFailure(
        waiting_failure(container) or Failure.UNKNOWN,
        container.reason or "",
        container.message or container.reason or "",
    )


def step_failure_error(
    build_id: str,
    step: str,
    image: str,
    failure: StepFailure,
    events: Iterable[EventSnapshot],
) -> ImagePullError | ContainerCreateError:
    """The error for a step whose image will not run, in the kubelet's own words.

    For a pull failure the "Failed to pull image ...: rpc error: ..." event says why;
    the later "Error: ErrImagePull" one only repeats the reason, so the former wins.
    """
    if failure.failure == Failure.IMAGE_PULL:
        event = _latest_warning(
            events,
            "Failed to pull image",
            "Container image",
            "Failed to apply default image tag",
            "Back-off pulling image",
        )
        message = event.message if event is not None else failure.message
        return ImagePullError(
            f"cannot pull image {image!r}",
            build_id=build_id,
            step=step,
            reason=failure.reason,
            message=message,
        )
    return ContainerCreateError(
        f"cannot start a container from image {image!r}",
        build_id=build_id,
        step=step,
        reason=failure.reason,
        message=failure.message,
    )


def placeholder_failure(
    pod: PodSnapshot, steps: Iterable[str], placeholder: str
) -> ContainerStatus | None:
    """A step container still on the placeholder whose image cannot be pulled or run, or
    that ended before any step started (a placeholder that cannot start as the step's
    command, see :mod:`buildruntime.launch`): no step of the build can ever start."""
    spec_images = pod.spec_images
    statuses = {status.name: status for status in pod.containers}
    for step in steps:
        status = statuses.get(step)
        if (
            status is not None
            and spec_images.get(step) == placeholder
            and (waiting_failure(status) is not None or status.phase == "terminated")
        ):
            return status
    return None


def placeholder_error(
    build_id: str,
    placeholder: str,
    container: ContainerStatus,
    events: Iterable[EventSnapshot],
) -> ImagePullError | ContainerCreateError:
    """The error for a build whose placeholder cannot run: a setting of the runtime (or
    of the build) is wrong for this cluster, not any step's image."""
    failure = status_failure(container)
    quoted = f'"{placeholder}"'
    event = None
    for candidate in events:
        if candidate.type == "Warning" and quoted in candidate.message:
            event = candidate
    message = event.message if event is not None else failure.message
    setting = (
        "set the runtime's pause_image (the CLI's --pause-image or BUILDRUNTIME_PAUSE_IMAGE, "
        "or BuildSpec.pause_image) to a pause image the cluster's nodes can pull, or its "
        "placeholder_image (--placeholder-image, BUILDRUNTIME_PLACEHOLDER_IMAGE) to an "
        "image built from deploy/placeholder"
    )
    if failure.failure == Failure.IMAGE_PULL:
        return ImagePullError(
            f"cannot pull the placeholder image {placeholder!r} that every step starts on; "
            + setting,
            build_id=build_id,
            reason=failure.reason,
            message=message,
        )
    return ContainerCreateError(
        f"cannot run the placeholder image {placeholder!r} that every step starts on; " + setting,
        build_id=build_id,
        reason=failure.reason,
        message=message,
    )


def pod_gone_error(build_id: str, step: str | None, pod: PodSnapshot | None) -> PodGoneError:
    """The error for a build whose pod was deleted, evicted or lost."""
    if pod is not None and pod.reason in _POD_FAILURES:
        what = {"Evicted": "evicted", "NodeLost": "lost with its node"}.get(
            pod.reason or "", "stopped"
        )
        return PodGoneError(
            f"the build's pod was {what}",
            build_id=build_id,
            step=step,
            reason=pod.reason,
            message=pod.message or pod.disruption_message,
        )
    return PodGoneError(
        "the build's pod was deleted" + (" before the step finished" if step else ""),
        build_id=build_id,
        step=step,
        reason="Deleted",
        message=pod.disruption_message if pod is not None else None,
    )
