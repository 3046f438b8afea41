"""The fan-out: one pod's cache deltas routed to its steps.

Each step (container) gets a :class:`ContainerView` whenever what the cache shows of its
container changes, and each Kubernetes Event about the pod goes to the step it names
(``involvedObject.fieldPath``) or to the pod; a sink (the build's view, outside the
informer) receives both in the order the cache saw them and derives what they mean.

Which container status is the step's own matters: after ``run_container`` patches the
image, the status first still shows the pause placeholder, then the placeholder's
termination, then the step image. A status counts as the step's only once the pod spec
names the step image and the status is not the placeholder's instance, judged by what
cannot be aliased (:mod:`buildruntime.informer.instances`). When the spec names the
placeholder again after the step image, the runtime stopped the step (at its timeout):
the step's view is then its own instance's end, marked ``stopped``.

Only deltas of the bound pod uid count: another pod under the same name (an earlier
build's, or a recreation) is not this build's, and its events are dropped; containers
the spec does not list as steps (injected sidecars, init containers) are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from buildruntime.informer.changes import changed_containers
from buildruntime.informer.instances import PlaceholderImages, StepInstances
from buildruntime.informer.snapshots import ContainerStatus, EventSnapshot, PodSnapshot
from buildruntime.informer.store import Delta

GONE_REASONS = frozenset({"Evicted", "NodeLost", "DeadlineExceeded"})
"""Pod-level reasons after which nothing of the pod runs again (the pod stays listed)."""


@dataclass(frozen=True, slots=True)
class ContainerView:
    """A step's container as the cache sees it after one change."""

    step: str
    container: ContainerStatus | None
    """The container status (placeholder or step image), None before the kubelet reports one."""
    is_step: bool
    """Whether ``container`` is the step image's instance (not the placeholder's)."""
    patched: bool
    """Whether the pod spec names the step image."""
    pod_gone: bool
    """The pod was deleted (or is being deleted, or failed as a whole, or vanished)."""
    stopped: bool = False
    """The runtime patched the placeholder back to stop the step (its timeout passed);
    ``container`` is then the step's own instance, terminated once the kubelet ended it."""

    @property
    def step_container(self) -> ContainerStatus | None:
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


class FanoutSink(Protocol):
    """Where a fan-out delivers one pod's routed changes, in the order the cache saw them."""

    def pod_changed(self, pod: PodSnapshot | None) -> None:
        """A new snapshot of the pod; None once it is deleted."""

    def pod_scheduled(self, pod: PodSnapshot) -> None:
        """The pod was bound to a node (once)."""

    def pod_gone(self, pod: PodSnapshot | None) -> None:
        """The pod is deleted, being deleted or failed as a whole (once); ``pod`` is its
        last snapshot, None when it vanished."""

    def step_changed(self, view: ContainerView, pod: PodSnapshot | None) -> None:
        """What the cache shows of a step's container changed."""

    def event(
        self, step: str | None, event: EventSnapshot, *, first: bool, about_step: bool
    ) -> None:
        """An Event about the pod (``step`` None) or one of its steps. ``first``: not a
        repeat of one already delivered; ``about_step``: about the step image, not the
        placeholder the step started on."""


class PodFanout:
    """Routes one pod's deltas to its steps, and delivers them to a sink."""

    def __init__(
        self,
        steps: list[str],
        placeholder: str,
        sink: FanoutSink,
        *,
        pod_uid: str | None = None,
        step_images: dict[str, str] | None = None,
    ) -> None:
        self.steps = list(steps)
        self.placeholder = placeholder
        self.pod_uid = pod_uid
        """The uid of the pod this fan-out routes; the first pod seen when not bound."""
        self.seen_pod = False
        self.gone = False
        self._sink = sink
        self._live = False
        """A snapshot of the bound pod is current (not deleted, not replaced)."""
        self._scheduled = False
        self._views: dict[str, ContainerView] = {}
        self._inputs: dict[str, tuple[ContainerStatus | None, bool, bool]] = {}
        """What each step's view was made from: an unchanged status makes no new view."""
        self._routed: PodSnapshot | None = None
        """The last snapshot every step was brought up to date with."""
        self._routed_gone = False
        """What ``gone`` was then."""
        self._placeholder_images = PlaceholderImages(placeholder)
        images = step_images or {}
        self._instances = {s: StepInstances(images.get(s)) for s in steps}

    def bind(self, pod_uid: str) -> None:
        """Route only the pod with this uid from now on (the one the runtime created)."""
        self.pod_uid = pod_uid

    def latest(self, step: str) -> ContainerView | None:
        return self._views.get(step)

    # -- inputs -------------------------------------------------------------------------

    def on_pod(self, delta: Delta[PodSnapshot]) -> None:
        """Apply a pod delta from the store."""
        new = delta.new
        if new is not None and self.pod_uid is not None and new.uid != self.pod_uid:
            # Another pod under the same name: not ours; if ours was replaced, it is gone.
            if self._live and not self.gone:
                self._mark_gone(None)
            return
        if new is None:
            if delta.old is not None and (self.pod_uid is None or delta.old.uid == self.pod_uid):
                self._mark_gone(None)
                self._live = False
                self._routed = None
                self._sink.pod_changed(None)
            return
        self._live = True
        self._sink.pod_changed(new)
        self.seen_pod = True
        if self.pod_uid is None:
            self.pod_uid = new.uid
        if new.scheduled and not self._scheduled:
            self._scheduled = True
            self._sink.pod_scheduled(new)
        self._route(new)
        if new.deleting or new.reason in GONE_REASONS:
            self._mark_gone(new)

    def on_event(self, delta: Delta[EventSnapshot]) -> None:
        """Apply an event delta from the store."""
        event = delta.new
        if event is None:
            return
        if self.pod_uid is not None and event.pod_uid and event.pod_uid != self.pod_uid:
            return  # about an earlier pod of the same name
        step = event.container if event.container in self._instances else None
        if event.container is not None and step is None:
            return  # an injected sidecar or init container: not a step
        about_step = step is not None and self._about_step_image(step, event.message)
        self._sink.event(step, event, first=delta.old is None, about_step=about_step)

    # -- routing ------------------------------------------------------------------------

    def _about_step_image(self, step: str, message: str) -> bool:
        """Whether a kubelet event about ``step``'s container is about its step image,
        not the placeholder it started on. A pull message quotes the image: decide by
        that, not by the pod spec (the events watch may deliver it before the pod watch
        shows the image patch)."""
        if f'"{self.placeholder}"' in message:
            return False
        if _QUOTED_IMAGE in message:
            return True  # a message quoting another image: the step's
        # "Error: ErrImagePull" and the like quote no image: the spec says whose it is.
        latest = self._views.get(step)
        return latest is not None and latest.patched

    def _route(self, pod: PodSnapshot) -> None:
        """Bring every step's view up to date with ``pod``: only the steps whose
        container may have changed since the last snapshot routed are looked at."""
        changed = changed_containers(self._routed, pod) if self.gone == self._routed_gone else None
        self._routed = pod
        self._routed_gone = self.gone
        steps = self.steps if changed is None else [s for s in self.steps if s in changed]
        if not steps:
            return
        spec_images = pod.spec_images
        statuses = {status.name: status for status in pod.containers}
        if not self._placeholder_images.image_ids:
            # Learnt once: all of a pod's placeholders run the one image. A status
            # unchanged since the last snapshot taught nothing then and would not now.
            for step in steps:
                status = statuses.get(step)
                if status is not None and spec_images.get(step) == self.placeholder:
                    self._placeholder_images.learn(status)
        for step in steps:
            self._update_step(step, pod, spec_images.get(step), statuses.get(step))

    def _update_step(
        self,
        step: str,
        pod: PodSnapshot,
        spec_image: str | None,
        container: ContainerStatus | None,
    ) -> None:
        patched = spec_image is not None and spec_image != self.placeholder
        inputs = (container, patched, self.gone)
        if self._inputs.get(step) == inputs:
            return  # most pod updates leave most steps as they were
        self._inputs[step] = inputs
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
        view = ContainerView(step, container, is_step, patched, self.gone, stopped)
        if self._views.get(step) == view:
            return
        self._views[step] = view
        self._sink.step_changed(view, pod)

    def _mark_gone(self, pod: PodSnapshot | None) -> None:
        if self.gone:
            return
        self.gone = True
        self._sink.pod_gone(pod)
        for step in self.steps:
            latest = self._views.get(step)
            view = (
                ContainerView(step, None, False, False, True)
                if latest is None
                else replace(latest, pod_gone=True)
            )
            if view != latest:
                self._views[step] = view
                self._sink.step_changed(view, pod)


_QUOTED_IMAGE = 'image "'
"""How kubelet event messages quote the image they are about ("Pulling image \\"x\\"")."""
