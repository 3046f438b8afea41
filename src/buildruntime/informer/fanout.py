"""The fan-out: one build's cache deltas split into per-step streams and domain events.

Each step (container) gets a stream of :class:`StepView` items, one per change of its
container status, and a buffer of the Kubernetes Events about it (routed by
``involvedObject.fieldPath``); the build gets a stream of :class:`BuildEvent`. Late
followers of a step stream see the current state first, then every change after it.

Which container status is the step's own matters: after ``run_container`` patches the
image, the status first still shows the pause placeholder, then the placeholder's
termination, then the step image. A status counts as the step's only once the pod spec
names the step image and the status is not the placeholder's instance, judged by what
cannot be aliased (:mod:`buildruntime.informer.instances`). When the spec names the
placeholder again after the step image, the runtime stopped the step (at its timeout):
the step's view is then its own instance's end, marked ``stopped``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from buildruntime import diagnosis
from buildruntime.events import BuildEvent, EventKind
from buildruntime.informer.instances import PlaceholderImages, StepInstances
from buildruntime.informer.snapshots import ContainerSnapshot, EventSnapshot, PodSnapshot
from buildruntime.informer.store import Delta
from buildruntime.informer.topic import Topic
from buildruntime.labels import BUILD_ID
from buildruntime.results import Failure
from buildruntime.spec import PAUSE_ANNOTATION, STEPS_ANNOTATION


@dataclass(frozen=True, slots=True)
class StepView:
    """A step's container as the cache sees it after one change."""

    step: str
    container: ContainerSnapshot | None
    """The container status (placeholder or step image), None before the kubelet reports one."""
    is_step: bool
    """Whether ``container`` is the step image's instance (not the placeholder's)."""
    patched: bool
    """Whether the pod spec names the step image yet."""
    pod_gone: bool
    """The pod was deleted (or is being deleted, or vanished)."""
    failure: diagnosis.StepFailure | None = None
    """Why the step image will never run, when a kubelet Warning event said so."""
    stopped: bool = False
    """The runtime patched the placeholder back to stop the step (its timeout passed);
    ``container`` is then the step's own instance, terminated once the kubelet ended it."""

    @property
    def step_container(self) -> ContainerSnapshot | None:
        """The step image's container status, or None while only the placeholder exists."""
        return self.container if self.is_step else None

    @property
    def started(self) -> bool:
        """The step image's container has started (and may have ended since)."""
        container = self.step_container
        return container is not None and container.phase in ("running", "terminated")

    @property
    def ended(self) -> bool:
        """Nothing more will happen to the step's container: it terminated, or the pod
        is gone with it."""
        container = self.step_container
        return self.pod_gone or (container is not None and container.phase == "terminated")

    @property
    def settled(self) -> bool:
        """The step's result is known: it ended, or a Warning event said it never will run."""
        return self.ended or self.failure is not None


def _now() -> datetime:
    return datetime.now(UTC)


class PodFanout:
    """Splits one pod's deltas into per-step streams, event buffers and domain events."""

    def __init__(
        self,
        build_id: str,
        steps: list[str],
        placeholder: str,
        *,
        pod_uid: str | None = None,
        publish: list[Topic[BuildEvent]] | None = None,
        step_images: dict[str, str] | None = None,
    ) -> None:
        self.build_id = build_id
        self.steps = list(steps)
        self.placeholder = placeholder
        self._placeholder_images = PlaceholderImages(placeholder)
        images = step_images or {}
        self._instances = {s: StepInstances(images.get(s)) for s in steps}
        self.pod_uid = pod_uid
        self.pod: PodSnapshot | None = None
        self.seen_pod = False
        self.gone = False
        self.states: dict[str, Topic[StepView]] = {s: Topic(retain=1_000) for s in steps}
        self.step_events: dict[str, Topic[EventSnapshot]] = {s: Topic(retain=1_000) for s in steps}
        self.pod_events: Topic[EventSnapshot] = Topic(retain=1_000)
        self.build_events: Topic[BuildEvent] = Topic(retain=10_000)
        # Readers want the latest pod or wait for one condition: a few snapshots do.
        self.pods: Topic[PodSnapshot | None] = Topic(retain=4)
        """The build-level stream: every snapshot of the pod, None once it is deleted."""
        self._also_publish = publish or []
        self._emitted: set[tuple[str | None, str]] = set()
        self._warned: set[tuple[str | None, str, str]] = set()
        self._scheduled = False
        self._failures: dict[str, diagnosis.StepFailure] = {}

    @classmethod
    def for_pod(
        cls, pod: PodSnapshot, *, publish: list[Topic[BuildEvent]] | None = None
    ) -> PodFanout | None:
        """A fan-out for a pod the runtime made, from its own annotations (for the monitor)."""
        steps = pod.annotation(STEPS_ANNOTATION)
        placeholder = pod.annotation(PAUSE_ANNOTATION)
        build_id = pod.label(BUILD_ID)
        if not steps or not placeholder or not build_id:
            return None
        return cls(build_id, steps.split(","), placeholder, pod_uid=pod.uid, publish=publish)

    # -- inputs -------------------------------------------------------------------------

    def on_pod(self, delta: Delta[PodSnapshot]) -> None:
        """Apply a pod delta from the store."""
        new = delta.new
        if new is not None and self.pod_uid is not None and new.uid != self.pod_uid:
            # Another pod under the same name (an earlier build's, or a recreation):
            # not ours; if ours was replaced, the old one is gone.
            if self.pod is not None and not self.gone:
                self._mark_gone(None)
            return
        if new is None:
            if delta.old is not None and (self.pod_uid is None or delta.old.uid == self.pod_uid):
                self._mark_gone(None)
                self.pod = None
                self.pods.publish(None)
            return
        self.pod = new
        self.pods.publish(new)
        self.seen_pod = True
        if self.pod_uid is None:
            self.pod_uid = new.uid
        if new.scheduled and not self._scheduled:
            self._scheduled = True
            self._emit(
                None, "scheduled", reason="Scheduled", message=f"assigned to {new.node_name}"
            )
        spec_images = new.spec_images
        statuses = {status.name: status for status in new.containers}
        for step in self.steps:
            status = statuses.get(step)
            if status is not None and spec_images.get(step) == self.placeholder:
                self._placeholder_images.learn(status)
        for step in self.steps:
            self._update_step(step, new, spec_images.get(step), statuses.get(step))
        if new.deleting or diagnosis.pod_failure(new) is not None:
            self._mark_gone(new)

    def on_event(self, delta: Delta[EventSnapshot]) -> None:
        """Apply an event delta from the store: buffer it, and derive domain events."""
        event = delta.new
        if event is None:
            return
        if self.pod_uid is not None and event.pod_uid and event.pod_uid != self.pod_uid:
            return  # about an earlier pod of the same name
        step = event.container if event.container in self.states else None
        if event.container is not None and step is None:
            return  # an injected sidecar or init container: not a step
        (self.step_events[step] if step else self.pod_events).publish(event)
        if delta.old is not None:
            return  # a repeat (count rising) of an event already reported
        # A pull message quotes the image. Decide by that, not by the pod spec: the
        # events watch may deliver it before the pod watch shows the image patch.
        if (
            step is not None
            and event.reason in ("Pulling", "Pulled")
            and not _names_image(event.message, self.placeholder)
        ):
            kind: EventKind = "pulling" if event.reason == "Pulling" else "pulled"
            self._emit(step, kind, reason=event.reason, message=event.message, at=event.last_seen)
        if (
            step is not None
            and step not in self._failures
            and self._about_step_image(step, event.message)
        ):
            failure = diagnosis.event_failure(event)
            if failure is not None:
                self._step_failed(step, failure)
        if event.type == "Warning":
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

    def _about_step_image(self, step: str, message: str) -> bool:
        """Whether a kubelet event about ``step``'s container is about its step image,
        not the placeholder it started on (which failing to pull is the whole build's
        problem, see :func:`buildruntime.diagnosis.placeholder_failure`)."""
        if _names_image(message, self.placeholder):
            return False
        if _QUOTED_IMAGE in message:
            return True  # a message quoting another image: the step's
        # "Error: ErrImagePull" and the like quote no image: the spec says whose it is.
        latest = self.states[step].latest
        return latest is not None and latest.patched

    def close(self) -> None:
        """End every stream (the build was removed)."""
        for state in self.states.values():
            state.close()
        for events in self.step_events.values():
            events.close()
        self.pod_events.close()
        self.build_events.close()
        self.pods.close()

    # -- derivation ---------------------------------------------------------------------

    def _update_step(
        self,
        step: str,
        pod: PodSnapshot,
        spec_image: str | None,
        container: ContainerSnapshot | None,
    ) -> None:
        patched = spec_image is not None and spec_image != self.placeholder
        failure = self._failures.get(step)
        topic = self.states[step]
        latest = topic.latest
        instances = self._instances[step]
        stopped = False
        if container is None:
            is_step = False
        elif patched:
            is_step = instances.is_step(container, self._placeholder_images)
            if is_step:
                instances.step_seen(container)
        else:
            own = instances.stopped_view(container)
            if own is None:
                instances.placeholder_seen(container)
                is_step = False
            else:
                container, is_step, stopped = own, True, True
        if (
            latest is not None
            and latest.container == container
            and latest.patched == patched
            and latest.pod_gone == self.gone
            and latest.failure == failure
            and latest.stopped == stopped
        ):
            return  # most pod updates leave most steps as they were
        view = StepView(step, container, is_step, patched, self.gone, failure, stopped)
        topic.publish(view)
        if is_step and container is not None:
            self._step_domain_events(step, container, pod, stopped=stopped)

    def _step_domain_events(
        self, step: str, container: ContainerSnapshot, pod: PodSnapshot, *, stopped: bool
    ) -> None:
        if container.phase in ("running", "terminated"):
            # A step that ran and ended between two observations still started.
            self._emit(step, "started", reason="Started", at=container.started_at)
        if container.phase == "terminated" and stopped:
            self._emit(
                step,
                "failed",
                reason=diagnosis.TIMEOUT_REASON,
                message=diagnosis.STOPPED_MESSAGE,
                exit_code=container.exit_code,
                failure=Failure.TIMEOUT,
                at=container.finished_at,
            )
        elif container.phase == "terminated":
            result = diagnosis.step_result(step, container, pod)
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
                    reason=container.reason,
                    message=container.message,
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
            else StepView(step, None, False, False, self.gone, failure)
        )
        self._emit(
            step,
            "failed",
            reason=failure.reason,
            message=failure.message,
            failure=failure.failure,
        )

    def _mark_gone(self, pod: PodSnapshot | None) -> None:
        if self.gone:
            return
        self.gone = True
        if pod is None:
            self.pod = None
        self._emit(
            None,
            "deleted",
            reason=(pod.reason if pod else None) or "Deleted",
            message=pod.message if pod else None,
        )
        for step, topic in self.states.items():
            latest = topic.latest
            if latest is None:
                topic.publish(StepView(step, None, False, False, True, self._failures.get(step)))
            elif not latest.pod_gone:
                topic.publish(replace(latest, pod_gone=True))

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


_QUOTED_IMAGE = 'image "'
"""How kubelet event messages quote the image they are about ("Pulling image \"x\"")."""


def _names_image(message: str, image: str) -> bool:
    """Whether a Pulling/Pulled message is about ``image`` (messages quote the spec image)."""
    return f'"{image}"' in message
