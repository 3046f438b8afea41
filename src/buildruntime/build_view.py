"""One build as its readers see it: what the informer routed, and what it means.

A :class:`BuildView` is the sink of a build's fan-out. It keeps the build's pod, a
stream of :class:`StepView` per step (the container view, plus the failure a kubelet
Warning event reported before or instead of a status), the Kubernetes Events per step
and for the pod, and derives the build's domain events (:class:`BuildEvent`): scheduled,
pulling, pulled, started, completed, failed, warning, deleted. The step APIs, the log
captures and the namespace monitor read it; nothing writes to it but the fan-out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from buildruntime import diagnosis
from buildruntime.events import BuildEvent, EventKind
from buildruntime.informer.fanout import ContainerView
from buildruntime.informer.snapshots import ContainerStatus, EventSnapshot, PodSnapshot
from buildruntime.informer.topic import Topic
from buildruntime.results import Failure


@dataclass(frozen=True, slots=True)
class StepView(ContainerView):
    """A step's container as the cache sees it after one change, with what it means."""

    failure: diagnosis.StepFailure | None = None
    """Why the step image will never run, when a kubelet Warning event said so."""

    @property
    def settled(self) -> bool:
        """The step's result is known: it ended, or a Warning event said it never will run."""
        return self.ended or self.failure is not None


class EventSink(Protocol):
    """Where else the build's domain events go (the runtime's stream, its telemetry)."""

    def publish(self, item: BuildEvent, /) -> None: ...


def _now() -> datetime:
    return datetime.now(UTC)


class BuildView:
    """The state of one build's pod, its steps and its events, fed by its fan-out."""

    def __init__(
        self,
        build_id: str,
        steps: list[str],
        *,
        publish: Sequence[EventSink] = (),
        mask: Callable[[str], str] | None = None,
    ) -> None:
        self.build_id = build_id
        self._mask = mask
        """Masks the build's secrets in the messages of its domain events."""
        self.pod: PodSnapshot | None = None
        """The pod's latest snapshot; kept when the pod failed as a whole, None once deleted."""
        self.gone = False
        self.states: dict[str, Topic[StepView]] = {s: Topic(retain=1_000) for s in steps}
        self.step_events: dict[str, Topic[EventSnapshot]] = {s: Topic(retain=1_000) for s in steps}
        self.pod_events: Topic[EventSnapshot] = Topic(retain=1_000)
        self.build_events: Topic[BuildEvent] = Topic(retain=10_000)
        # Readers want the latest pod or wait for one condition: a few snapshots do.
        self.pods: Topic[PodSnapshot | None] = Topic(retain=4)
        """Every snapshot of the pod, None once it is deleted."""
        self._also_publish = publish
        self._emitted: set[tuple[str | None, str]] = set()
        self._warned: set[tuple[str | None, str, str]] = set()
        self._failures: dict[str, diagnosis.StepFailure] = {}

    def close(self) -> None:
        """End every stream (the build was removed)."""
        for state in self.states.values():
            state.close()
        for events in self.step_events.values():
            events.close()
        self.pod_events.close()
        self.build_events.close()
        self.pods.close()

    # -- the fan-out's deliveries ---------------------------------------------------------

    def pod_changed(self, pod: PodSnapshot | None) -> None:
        self.pod = pod
        self.pods.publish(pod)

    def pod_scheduled(self, pod: PodSnapshot) -> None:
        self._emit(None, "scheduled", reason="Scheduled", message=f"assigned to {pod.node_name}")

    def pod_gone(self, pod: PodSnapshot | None) -> None:
        self.gone = True
        if pod is None:
            self.pod = None
        self._emit(
            None,
            "deleted",
            reason=(pod.reason if pod else None) or "Deleted",
            message=pod.message if pod else None,
        )

    def step_changed(self, view: ContainerView, pod: PodSnapshot | None) -> None:
        step = view.step
        self.states[step].publish(_with_failure(view, self._failures.get(step)))
        container = view.step_container
        if container is not None:
            self._step_domain_events(step, container, pod, stopped=view.stopped)

    def event(
        self, step: str | None, event: EventSnapshot, *, first: bool, about_step: bool
    ) -> None:
        (self.step_events[step] if step else self.pod_events).publish(event)
        if not first:
            return  # a repeat (count rising) of an event already reported
        if step is not None and about_step and event.reason in ("Pulling", "Pulled"):
            kind: EventKind = "pulling" if event.reason == "Pulling" else "pulled"
            self._emit(step, kind, reason=event.reason, message=event.message, at=event.last_seen)
        if step is not None and about_step and step not in self._failures:
            failure = diagnosis.event_failure(event)
            if failure is not None:
                self._step_failed(step, failure)
        if event.type == "Warning" and not _probing(event):
            key = (step, event.reason, event.message)
            if key not in self._warned:
                self._warned.add(key)
                self._emit(
                    step,
                    "warning",
                    reason=event.reason,
                    message=event.message,
                    count=event.count,
                    at=event.last_seen,
                )

    # -- derivation ---------------------------------------------------------------------

    def _step_domain_events(
        self,
        step: str,
        container: ContainerStatus,
        pod: PodSnapshot | None,
        *,
        stopped: bool,
    ) -> None:
        if container.phase in ("running", "terminated"):
            # A step that ran and ended between two observations still started.
            self._emit(step, "started", reason="Started", at=container.started_at)
        if container.phase == "terminated":
            result = diagnosis.step_result(step, container, pod, stopped=stopped)
            if result.failure is None:
                self._emit(
                    step,
                    "completed",
                    reason=container.reason,
                    exit_code=container.exit_code,
                    at=container.finished_at,
                )
            else:
                self._emit(
                    step,
                    "failed",
                    reason=result.reason,
                    message=result.message,
                    exit_code=container.exit_code,
                    failure=result.failure,
                    at=container.finished_at,
                )
        else:
            failure = diagnosis.waiting_failure(container)
            if failure is not None:
                self._emit(
                    step,
                    "failed",
                    reason=container.reason,
                    message=container.message,
                    failure=failure,
                )

    def _step_failed(self, step: str, failure: diagnosis.StepFailure) -> None:
        """A Warning event said the step image will not run: with restartPolicy Never
        the kubelet makes one attempt after the swap, so the status alone never says."""
        self._failures[step] = failure
        topic = self.states[step]
        latest = topic.latest
        topic.publish(
            replace(latest, failure=failure)
            if latest is not None
            else StepView(step, None, False, False, self.gone, failure=failure)
        )
        self._emit(
            step,
            "failed",
            reason=failure.reason,
            message=failure.message,
            failure=failure.failure,
        )

    def _emit(
        self,
        step: str | None,
        kind: EventKind,
        *,
        reason: str | None = None,
        message: str | None = None,
        exit_code: int | None = None,
        failure: Failure | None = None,
        count: int = 1,
        at: str | None = None,
    ) -> None:
        # One domain event of each kind per step: a relist or a duplicated watch event
        # must not report a step as started twice, nor ErrImagePull and then
        # ImagePullBackOff as two failures.
        if kind != "warning":
            key = (step, kind)
            if key in self._emitted:
                return
            self._emitted.add(key)
        if message is not None and self._mask is not None:
            message = self._mask(message)
        event = BuildEvent(
            build_id=self.build_id,
            step=step,
            kind=kind,
            at=diagnosis.parse_time(at) or _now(),
            reason=reason,
            message=message,
            exit_code=exit_code,
            failure=failure,
            count=count,
        )
        self.build_events.publish(event)
        for topic in self._also_publish:
            topic.publish(event)


def _with_failure(view: ContainerView, failure: diagnosis.StepFailure | None) -> StepView:
    return StepView(
        view.step,
        view.container,
        view.is_step,
        view.patched,
        view.pod_gone,
        view.stopped,
        failure=failure,
    )


def _probing(event: EventSnapshot) -> bool:
    """A readiness probe failing: a service (or its placeholder) not listening yet. Its
    readiness is the container's ``ready`` flag; the runtime reports a service that
    never gets there, so these are no warnings."""
    return event.reason == "Unhealthy" and event.message.startswith("Readiness probe failed")
