"""One build's moving parts: its informer (two reflectors, the store, the fan-out) and its
log captures, all living in one task group that removing the build cancels."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup, TaskStatus

from buildruntime import diagnosis
from buildruntime.cluster.port import JSON, Cluster
from buildruntime.errors import BuildRuntimeError, SpecError
from buildruntime.events import BuildEvent
from buildruntime.informer.decoders import EVENT_EVENTS, POD_EVENTS
from buildruntime.informer.fanout import PodFanout, StepView
from buildruntime.informer.reflector import Reflector, ReflectorSettings
from buildruntime.informer.snapshots import EventSnapshot, PodSnapshot
from buildruntime.informer.store import Store
from buildruntime.informer.topic import Topic
from buildruntime.labels import build_selector
from buildruntime.logs import LogBuffer, LogCapture
from buildruntime.results import StepResult
from buildruntime.spec import BuildSpec

log = logging.getLogger("buildruntime")


@dataclass
class StepRecord:
    """What the runtime itself decided about a step (beyond what the cache shows)."""

    patched: bool = False
    result: StepResult | None = None
    """A result the runtime settled on: an image that cannot be pulled."""
    started_at: float | None = None
    """Event-loop time at which the cache first showed the step image running."""
    timed_out: bool = False
    """The step's timeout passed before it ended: the runtime is stopping it."""


@dataclass(eq=False)
class Build:
    """The handle of one build, returned by ``Runtime.setup_build``."""

    spec: BuildSpec
    namespace: str
    pod_manifest: JSON
    _state: BuildState = field(repr=False)

    @property
    def build_id(self) -> str:
        return self.spec.build_id

    @property
    def pod_name(self) -> str:
        return self.spec.pod_name

    def events(self) -> AsyncIterator[BuildEvent]:
        """The build's domain events from its first, in the order the cache saw them,
        until the build is removed."""
        return self._state.fanout.build_events.follow()

    def step_states(self, step: str) -> AsyncIterator[StepView]:
        """The step container's state stream: the current state first, then every change
        the cache sees (placeholder and step image alike; ``is_step`` tells them apart),
        until the build is removed."""
        topic = self._state.fanout.states.get(step)
        if topic is None:
            raise SpecError("step", f"build {self.build_id} has no step {step!r}")
        return topic.follow(from_latest=True)


class BuildState:
    """The informer and log captures of one build."""

    def __init__(
        self,
        cluster: Cluster,
        spec: BuildSpec,
        namespace: str,
        placeholder: str,
        *,
        reflector_settings: ReflectorSettings,
        log_memory_limit: int,
        runtime_events: Topic[BuildEvent],
        stop_step: Callable[[BuildState, str], Awaitable[None]],
    ) -> None:
        self.cluster = cluster
        self._stop_step = stop_step
        self.spec = spec
        self.namespace = namespace
        self.placeholder = placeholder
        self.store = Store()
        step_names = [s.name for s in spec.steps]
        self.fanout = PodFanout(
            spec.build_id,
            step_names,
            placeholder,
            publish=[runtime_events],
            step_images={s.name: s.image for s in spec.steps},
        )
        self.steps = {name: StepRecord() for name in step_names}
        self.buffers = {name: LogBuffer(log_memory_limit) for name in step_names}
        self._settings = reflector_settings
        self.pod_reflector = Reflector(
            cluster,
            "pods",
            namespace,
            label_selector=build_selector(spec.build_id),
            decoder=POD_EVENTS,
            replace=self._replace_pods,
            apply=self._apply_pod,
            settings=reflector_settings,
        )
        self.event_reflector: Reflector[EventSnapshot] | None = None
        self._task_group: TaskGroup | None = None
        self._cancel = anyio.CancelScope()
        self.owner: object = None
        """The runtime this build belongs to."""
        self.started = False
        self.removed = False
        self.finished = anyio.Event()
        self.crash: Exception | None = None
        """What stopped the build's watches and captures, if not its removal: a bug, not
        a fault of the cluster (those are retried)."""

    # -- store → fan-out --------------------------------------------------------------

    def _replace_pods(self, items: list[PodSnapshot]) -> None:
        for delta in self.store.replace_pods(items):
            self.fanout.on_pod(delta)

    def _apply_pod(self, kind: str, pod: PodSnapshot) -> None:
        delta = self.store.apply_pod(kind, pod)
        if delta is not None:
            self.fanout.on_pod(delta)

    def _replace_events(self, items: list[EventSnapshot]) -> None:
        for delta in self.store.replace_events(items):
            self.fanout.on_event(delta)

    def _apply_event(self, kind: str, event: EventSnapshot) -> None:
        delta = self.store.apply_event(kind, event)
        if delta is not None:
            self.fanout.on_event(delta)

    # -- lifecycle --------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the pod reflector and the capture starters until cancelled."""
        try:
            with self._cancel:
                async with anyio.create_task_group() as tg:
                    self._task_group = tg
                    self.started = True
                    tg.start_soon(self.pod_reflector.run)
                    for name in self.steps:
                        tg.start_soon(self._capture_when_started, name)
                    for step_spec in self.spec.steps:
                        if step_spec.timeout is not None:
                            tg.start_soon(self._enforce_timeout, step_spec.name, step_spec.timeout)
                    task_status.started()
                    await anyio.sleep_forever()
        except Exception as error:
            # Contained here, so that one build's failure neither cancels the other
            # builds of the runtime nor hides behind "the pod was deleted": the step
            # APIs waiting on this build raise it (see gone_error).
            leaves = error.exceptions if isinstance(error, ExceptionGroup) else (error,)
            self.crash = leaves[0] if len(leaves) == 1 else error
            log.error(
                "build %s: its watches stopped on an unexpected error",
                self.spec.build_id,
                exc_info=self.crash,
            )
        finally:
            self._task_group = None
            for buffer in self.buffers.values():
                buffer.finish()
            self.fanout.close()
            self.finished.set()

    def start_events_watch(self, pod_uid: str) -> None:
        """Watch the events of exactly this pod (by uid, so a previous pod of the same
        name never leaks in)."""
        assert self._task_group is not None
        selector = ",".join(
            [
                "involvedObject.kind=Pod",
                f"involvedObject.namespace={self.namespace}",
                f"involvedObject.name={self.spec.pod_name}",
                f"involvedObject.uid={pod_uid}",
            ]
        )
        self.event_reflector = Reflector(
            self.cluster,
            "events",
            self.namespace,
            field_selector=selector,
            decoder=EVENT_EVENTS,
            replace=self._replace_events,
            apply=self._apply_event,
            settings=self._settings,
        )
        self._task_group.start_soon(self.event_reflector.run)

    def gone_error(self, step: str | None) -> BuildRuntimeError:
        """The error for a step API that found the build's streams ended or its pod gone."""
        if self.crash is not None:
            error = BuildRuntimeError(
                "the build's watches stopped on an unexpected error",
                build_id=self.spec.build_id,
                step=step,
                reason=type(self.crash).__name__,
                message=str(self.crash),
            )
            error.__cause__ = self.crash
            return error
        return diagnosis.pod_gone_error(self.spec.build_id, step, self.fanout.pod)

    def stop(self) -> None:
        """Cancel every task of the build (watches, captures)."""
        self._cancel.cancel()

    # -- waiting on the cache ---------------------------------------------------------

    async def wait_step(self, step: str, ready: Callable[[StepView], bool]) -> StepView:
        """The first view of ``step`` (the current one first) for which ``ready`` holds.

        Raises :class:`anyio.EndOfStream` if the build's streams close first.
        """
        async for view in self.fanout.states[step].follow(from_latest=True):
            if ready(view):
                return view
        raise anyio.EndOfStream

    async def step_ended(self, step: str, within: float) -> bool:
        """Whether, within ``within`` seconds, the step's container is seen terminated or the
        pod gone."""
        with anyio.move_on_after(within):
            try:
                await self.wait_step(step, lambda view: view.ended)
            except anyio.EndOfStream:
                return True
            return True
        return False

    async def _enforce_timeout(self, step: str, limit: float) -> None:
        """Stop the step at its timeout, whatever its executor is waiting on (a tail, a
        wait, nothing at all).

        The clock starts when the cache first shows the step image running (measured on
        the local clock: the API's ``startedAt`` has whole seconds only). At the deadline
        the step's image is patched back to the placeholder. A running pod's images are
        the one part of its containers that can be changed, and the kubelet restarts a
        container whose image changed whatever the restartPolicy: it stops the step
        (SIGTERM, then SIGKILL after the pod's grace period) and starts the placeholder,
        which runs nothing, while the pod and the build's other steps live on. The
        step's log stream ends with its last line, and the fan-out shows the step's own
        instance terminated and ``stopped``.
        """
        record = self.steps[step]
        try:
            view = await self.wait_step(step, lambda view: view.started or view.settled)
        except anyio.EndOfStream:
            return
        if not view.started:
            return  # it never ran: a failed pull or create, or the pod went
        if record.started_at is None:
            record.started_at = anyio.current_time()
        remaining = limit - (anyio.current_time() - record.started_at)
        with anyio.move_on_after(max(remaining, 0.0)):
            with contextlib.suppress(anyio.EndOfStream):
                await self.wait_step(step, lambda view: view.ended)
            return
        record.timed_out = True
        await self._stop_step(self, step)

    async def _capture_when_started(self, step: str) -> None:
        """Start the step's log capture the moment its step-image container runs or has
        run; finish the buffer if the step can no longer start."""
        buffer = self.buffers[step]
        try:
            view = await self.wait_step(step, lambda view: view.started or view.pod_gone)
        except anyio.EndOfStream:
            buffer.finish()
            return
        container = view.step_container
        if container is None or container.phase == "waiting":
            buffer.finish(lost_reason="the step never started")
            return
        capture = LogCapture(
            self.cluster,
            self.namespace,
            self.spec.pod_name,
            step,
            buffer,
            step_ended=lambda timeout: self.step_ended(step, timeout),
            pod_gone=lambda: self.fanout.gone,
        )
        await capture.run()
