"""One build, driven through its life: assembled, its steps started, stopped at their
timeouts, their results read, removed.

A :class:`BuildController` owns the build's parts and is the only thing that touches
them. Data flows one way::

    informer (reflectors → store) → fan-out (routing) → build view → step APIs, captures

The informer watches the build's pod and, once the pod exists, the Events about it; the
fan-out routes the cache's deltas to the steps; the build view keeps what they mean
(step views with failures, domain events); the log captures and the step APIs read the
view. What the runtime itself decides about a step (that it started it, that its
timeout passed) is kept in :class:`StepRecord`, beside the view, and never written
into it. Everything runs in one task group that removing the build cancels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, NoReturn, TypeVar

import anyio
from anyio.abc import TaskStatus

from buildruntime import api_calls, diagnosis, exception_groups
from buildruntime.build_view import BuildView, StepView
from buildruntime.cluster.port import JSON, ApiError, Cluster, ConflictError, NotFoundError
from buildruntime.errors import (
    AdmissionError,
    BuildRuntimeError,
    ClusterUnavailableError,
    ContainerCreateError,
    ImagePullError,
    SchedulingError,
    ServiceError,
    StepTimeoutError,
)
from buildruntime.events import BuildEvent
from buildruntime.informer.fanout import PodFanout
from buildruntime.informer.informer import Informer
from buildruntime.informer.shared_events import ExpectedPod, SharedEventWatch
from buildruntime.informer.shared_pods import SharedPodWatch
from buildruntime.informer.snapshots import PodSnapshot
from buildruntime.informer.topic import Topic
from buildruntime.labels import build_selector
from buildruntime.logs import LogBuffer, LogCapture
from buildruntime.results import Failure, StepResult
from buildruntime.secrets import Masker, owned_by_pod, render_pull_secret, render_secret
from buildruntime.settings import RuntimeSettings
from buildruntime.spec import PAUSE_ANNOTATION, BuildSpec, StepSpec
from buildruntime.telemetry import BuildTelemetry, instruments_for

log = logging.getLogger("buildruntime")

T = TypeVar("T")

STOP_WAIT = 30.0
"""How long, past a step's timeout, ``wait_container`` waits to see the kubelet stop the
step (the pod's 5 s grace period, and a kubelet that syncs the patch late) before it
raises :class:`StepTimeoutError` anyway."""


@dataclass
class StepRecord:
    """What the runtime itself decided about a step (the cache shows the rest)."""

    patched: bool = False
    """``run_container`` sent the step's image patch."""
    never_ran: StepResult | None = None
    """The step image will not run (a failed pull or create), as ``run_container`` found."""
    started_at: float | None = None
    """Event-loop time at which the cache first showed the step image running."""
    timed_out: bool = False
    """The step's timeout passed before it ended: the runtime is stopping it."""


class BuildController:
    """The informer, the view, the log captures and the lifecycle of one build."""

    def __init__(
        self,
        cluster: Cluster,
        spec: BuildSpec,
        namespace: str,
        manifest: JSON,
        settings: RuntimeSettings,
        *,
        runtime_events: Topic[BuildEvent],
        adopted: bool = False,
        shared_events: SharedEventWatch | None = None,
        shared_pods: SharedPodWatch | None = None,
    ) -> None:
        self.telemetry = BuildTelemetry(
            instruments_for(settings.tracer_provider, settings.meter_provider), spec, namespace
        )
        self.cluster = cluster = self.telemetry.cluster(cluster)
        self.spec = spec
        self.namespace = namespace
        self.manifest = manifest
        self.settings = settings
        # What render_pod chose (the build's, the runtime's own, or the pause image);
        # for an adopted build, what its first worker's chose.
        self.placeholder: str = manifest["metadata"]["annotations"][PAUSE_ANNOTATION]
        self.adopted = adopted
        """Adopted from another worker (``attach_build``) rather than assembled here."""
        self._shared_events = shared_events
        """The runtime's watch of the namespace's pod Events, if it has one."""
        steps = [s.name for s in spec.steps]
        self.masker = Masker(
            [*spec.secret_values.values(), *(c.secret for c in spec.registries.values())]
        )
        self.view = BuildView(
            spec.build_id,
            steps,
            publish=[runtime_events, self.telemetry],
            mask=self.masker.text if self.masker else None,
        )
        self.fanout = PodFanout(
            steps,
            self.placeholder,
            self.view,
            step_images={s.name: s.image for s in spec.steps},
        )
        self.informer = Informer(
            cluster,
            namespace,
            pod_labels=build_selector(spec.build_id),
            on_pod=self.fanout.on_pod,
            on_event=self.fanout.on_event,
            settings=settings.reflector,
            observer=self.telemetry,
            # An adopted pod carries its first worker's label, which the shared watch
            # does not select.
            shared_pods=(shared_pods, spec.pod_name) if shared_pods and not adopted else None,
        )
        self.steps = {name: StepRecord() for name in steps}
        mask = self.masker.lines if self.masker else None
        self.buffers = {name: LogBuffer(settings.log_memory_limit, mask=mask) for name in steps}
        self._cancel = anyio.CancelScope()
        self._secrets_created: list[str] = []
        """The build's own Secrets created so far (the pod owns them once it exists)."""
        self.started = False
        self.removed = False
        self.released = False
        """Left to another worker (``release_builds``): its handle answers no more."""
        self.finished = anyio.Event()
        self.crash: Exception | None = None
        """What stopped the build's watches and captures, if not its removal: a bug, not
        a fault of the cluster (those are retried)."""

    @property
    def build_id(self) -> str:
        return self.spec.build_id

    # -- running ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the informer, the capture starters and the timeout keepers until removed."""
        self.telemetry.build_started()
        try:
            with self._cancel:
                async with anyio.create_task_group() as tg:
                    self.started = True
                    await tg.start(self.informer.run)
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
            leaves = exception_groups.leaves(error) if isinstance(error, ExceptionGroup) else []
            crash = leaves[0] if len(leaves) == 1 else error
            self.crash = crash if isinstance(crash, Exception) else error
            self.telemetry.build_failed(self.crash)
            log.error(
                "build %s: its watches stopped on an unexpected error",
                self.build_id,
                exc_info=self.crash,
            )
        finally:
            for buffer in self.buffers.values():
                buffer.finish()
            self.view.close()
            self.telemetry.build_ended()
            self.finished.set()

    def stop(self) -> None:
        """Cancel every task of the build (watches, captures)."""
        self._cancel.cancel()

    async def _send(self, step: str | None, what: str, call: Callable[[], Awaitable[T]]) -> T:
        return await api_calls.send(
            call,
            api_timeout=self.settings.api_timeout,
            build_id=self.build_id,
            step=step,
            what=what,
        )

    # -- assemble -----------------------------------------------------------------------

    async def assemble(self) -> None:
        """Create the pod once the informer has listed, bind the fan-out to it, watch
        its Events, and wait until it is scheduled and its placeholders run."""
        await self._wait_listed()
        for manifest in self._secret_manifests():
            name = manifest["metadata"]["name"]
            await self._send(None, f"create the Secret {name}", self._create_secret_once(manifest))
        shared = self._shared_events
        # The shared events watch must start no later than this pod's creation, whichever
        # build's pod it starts with (see SharedEventWatch.expect).
        expected = shared.expect(self.informer.pod_reflector.resource_version) if shared else None
        try:
            await self._create_pod_and_follow(expected)
        finally:
            if expected is not None:
                expected.cancel()
        await self._wait_scheduled()
        await self._wait_placeholders()
        with anyio.move_on_after(self.settings.api_timeout):
            await self.informer.wait_synced()

    async def _create_pod_and_follow(self, expected: ExpectedPod | None) -> None:
        created = await self._send(None, "create the pod", self._create_once())
        uid = (created.get("metadata") or {}).get("uid", "")
        self.fanout.bind(uid)
        # Events name the pod's uid, so none exists before its creation: the events
        # watch starts there, with no list (see Reflector's empty_at). Followed at once,
        # before anything else is awaited: a shared watch holds the Events of a pod
        # nobody follows only for a while.
        created_at = (created.get("metadata") or {}).get("resourceVersion") or None
        if self._shared_events is not None:
            self.informer.follow_events(
                self._shared_events, uid, created_at=created_at, expected=expected
            )
        else:
            self.informer.watch_events(self._events_selector(uid), empty_at=created_at)
        for name in self._secrets_created:
            # From now on the Secret goes with the pod, whoever deletes it: the garbage
            # collector does not need this worker to be alive.
            await self._send(
                None,
                f"hand the Secret {name} to its pod",
                partial(
                    self.cluster.patch_secret,
                    self.namespace,
                    name,
                    owned_by_pod(self.spec.pod_name, uid),
                ),
            )

    async def _wait_listed(self) -> None:
        with anyio.move_on_after(self.settings.api_timeout):
            await self.informer.pod_reflector.synced.wait()
        if not self.informer.pod_reflector.synced.is_set():
            raise ClusterUnavailableError(
                "cannot list pods",
                build_id=self.build_id,
                message=str(
                    self.informer.pod_reflector.last_error or "no answer from the API server"
                ),
            )

    async def adopt(self, pod_uid: str, secrets: list[str]) -> None:
        """Take over a pod another worker created (``attach_build``): bind the fan-out
        to it, watch its Events, and take the steps its spec already names as started.

        Each step's capture starts from the cache as for a build assembled here, so a
        step that runs or ran has its log read from its first line (the node holds it
        until the pod goes); a running step's timeout counts from its ``startedAt``.
        """
        self.fanout.bind(pod_uid)
        self._secrets_created.extend(secrets)
        await self._wait_listed()
        self.informer.watch_events(self._events_selector(pod_uid))
        with anyio.move_on_after(self.settings.api_timeout):
            await self.informer.wait_synced()
        if self.view.pod is None or self.view.gone:
            raise self.gone_error(None)
        for name, record in self.steps.items():
            view = self.view.states[name].latest
            if view is not None and (view.patched or view.is_step):
                # The previous worker started it: run_container must not patch again.
                record.patched = True
                record.timed_out = view.stopped

    def _first_seen_running(self, view: StepView) -> float:
        """The event-loop time to count a step's timeout from: now, for a step this
        worker saw start; for an adopted build, the container's own ``startedAt``
        (whole seconds), however long ago that was."""
        now = anyio.current_time()
        container = view.step_container
        started = diagnosis.parse_time(container.started_at) if container else None
        if not self.adopted or started is None:
            return now
        elapsed = (datetime.now(UTC) - started).total_seconds()
        return now - max(elapsed, 0.0)

    def _secret_manifests(self) -> list[JSON]:
        """The Secrets the build owns: its values, its registry credentials."""
        spec, manifests = self.spec, []
        if spec.secrets:
            manifests.append(
                render_secret(spec.pod_name, self.namespace, self.build_id, spec.secret_values)
            )
        if spec.registries:
            manifests.append(
                render_pull_secret(spec.pod_name, self.namespace, self.build_id, spec.registries)
            )
        return manifests

    def _create_secret_once(self, manifest: JSON) -> Callable[[], Awaitable[None]]:
        name = manifest["metadata"]["name"]
        attempts = 0

        async def create() -> None:
            nonlocal attempts
            attempts += 1
            try:
                await self.cluster.create_secret(self.namespace, manifest)
            except ApiError as error:
                # A conflict after a retry: an earlier attempt got through before its
                # connection broke.
                if not (isinstance(error, ConflictError) and attempts > 1):
                    self._raise_refused(error, f"a Secret named {name}", "the build's Secret")
            self._secrets_created.append(name)

        return create

    def _create_once(self) -> Callable[[], Awaitable[dict[str, Any]]]:
        attempts = 0

        async def create() -> dict[str, Any]:
            nonlocal attempts
            attempts += 1
            try:
                return await self.cluster.create_pod(self.namespace, self.manifest)
            except ApiError as error:
                cached = self.view.pod
                if isinstance(error, ConflictError) and attempts > 1 and cached is not None:
                    # An earlier attempt got through before its connection broke.
                    return {"metadata": {"uid": cached.uid}}
                self._raise_refused(error, f"a pod named {self.spec.pod_name}", "the build's pod")

        return create

    def _raise_refused(self, error: ApiError, named: str, what: str) -> NoReturn:
        """Raise what a create the API server answered with ``error`` means: the name is
        taken (:class:`AdmissionError`), the object was refused (400/403/422 carry an
        admission webhook's or a policy's message; a 404 names a namespace that does not
        exist), or ``error`` itself (an outage, retried by the caller)."""
        if isinstance(error, ConflictError):
            summary = f"{named} already exists"
        elif error.status in (400, 403, 404, 422):
            summary = f"the API server refused {what}"
        else:
            raise error
        raise AdmissionError(
            summary, build_id=self.build_id, reason=error.reason, message=error.message
        ) from error

    def _events_selector(self, pod_uid: str) -> str:
        """The Events of exactly this pod (by uid, so a previous pod of the same name
        never leaks in)."""
        return ",".join(
            [
                "involvedObject.kind=Pod",
                f"involvedObject.namespace={self.namespace}",
                f"involvedObject.name={self.spec.pod_name}",
                f"involvedObject.uid={pod_uid}",
            ]
        )

    async def _wait_scheduled(self) -> None:
        view = self.view
        timeout = self.settings.schedule_timeout
        with anyio.move_on_after(timeout):
            async for pod in view.pods.follow():
                if pod is not None and pod.scheduled:
                    return
                if view.gone:
                    raise self.gone_error(None)
            # The streams closed: the build was stopped while it was assembling.
            raise self.gone_error(None)
        message = view.pod.unschedulable_message if view.pod is not None else None
        for event in view.pod_events.items_from(0)[0]:
            if event.reason == "FailedScheduling":
                message = event.message
        raise SchedulingError(
            f"the build's pod was not scheduled within {timeout:g}s",
            build_id=self.build_id,
            reason="Unschedulable" if message else "Timeout",
            message=message,
        )

    async def _wait_placeholders(self) -> None:
        """Wait until every step's placeholder has started (the pod can run steps), or
        fail naming the placeholder when it cannot: a placeholder image the nodes cannot
        pull is the whole build's configuration problem, not the first step's."""
        steps = list(self.steps)

        def started(pod: PodSnapshot) -> bool:
            phases = {status.name: status.phase for status in pod.containers}
            return all(phases.get(step, "waiting") != "waiting" for step in steps)

        waiting: PodSnapshot | None = None
        timeout = self.settings.schedule_timeout
        with anyio.move_on_after(timeout):
            async for pod in self.view.pods.follow(from_latest=True):
                if pod is None or self.view.gone:
                    raise self.gone_error(None)
                waiting = pod
                failed = diagnosis.placeholder_failure(pod, steps, self.placeholder)
                if failed is not None:
                    events = [
                        event
                        for step in steps
                        for event in self.view.step_events[step].items_from(0)[0]
                    ]
                    raise diagnosis.placeholder_error(
                        self.build_id, self.placeholder, failed, events
                    )
                if started(pod):
                    return
            raise self.gone_error(None)
        stuck = next(
            (c for c in (waiting.containers if waiting else ()) if c.phase == "waiting"), None
        )
        raise SchedulingError(
            f"the build's pod was scheduled but its containers did not start within {timeout:g}s",
            build_id=self.build_id,
            reason=(stuck.reason if stuck else None) or "Timeout",
            message=stuck.message if stuck else None,
        )

    # -- steps --------------------------------------------------------------------------

    async def start_step(self, spec: StepSpec) -> None:
        """Patch the step's image in (once); return once it runs or has finished."""
        step = spec.name
        record = self.steps[step]
        if not record.patched:
            if self.view.gone:
                raise self.gone_error(step)
            self.telemetry.step_patched(spec)
            await self._patch_image(step, spec.image, f"start step {step}")
            record.patched = True
        try:
            await self._wait_started(spec)
            latest = self.view.states[step].latest
            if record.started_at is None and latest is not None:
                record.started_at = self._first_seen_running(latest)
            if spec.detach and spec.ports:
                await self._wait_ready(spec)
        except (ImagePullError, ContainerCreateError) as error:
            failure = (
                Failure.IMAGE_PULL
                if isinstance(error, ImagePullError)
                else Failure.CONTAINER_CREATE
            )
            record.never_ran = StepResult(
                step=step,
                state="waiting",
                reason=error.reason,
                message=error.message,
                failure=failure,
            )
            self.buffers[step].finish(lost_reason=str(error))
            raise

    async def _patch_image(self, step: str, image: str, what: str) -> None:
        """The one change a running pod's containers allow: a new image for one of them."""
        patch = {"spec": {"containers": [{"name": step, "image": image}]}}

        async def send() -> None:
            try:
                await self.cluster.patch_pod(self.namespace, self.spec.pod_name, patch)
            except NotFoundError as error:
                raise diagnosis.pod_gone_error(self.build_id, step, None) from error

        await self._send(step, what, send)

    async def _wait_started(self, spec: StepSpec) -> None:
        async for view in self.view.states[spec.name].follow(from_latest=True):
            container = view.step_container
            if container is not None and container.phase in ("running", "terminated"):
                return
            events = self.view.step_events[spec.name].items_from(0)[0]
            if view.failure is not None:
                raise diagnosis.step_failure_error(
                    self.build_id, spec.name, spec.image, view.failure, events
                )
            if container is not None and diagnosis.waiting_failure(container) is not None:
                raise diagnosis.step_failure_error(
                    self.build_id,
                    spec.name,
                    spec.image,
                    diagnosis.status_failure(container),
                    events,
                )
            if view.pod_gone:
                break
        raise self.gone_error(spec.name)

    async def _wait_ready(self, spec: StepSpec) -> None:
        """A service is ready once its readinessProbe passes (the kubelet checks its
        first port; the pod watch brings the ``ready`` flag); one that ends first fails
        with its exit code and last lines."""
        step = spec.name
        try:
            view = await self.wait_step(
                step,
                lambda view: view.ended or bool(view.step_container and view.step_container.ready),
            )
        except anyio.EndOfStream:
            raise self.gone_error(step) from None
        container = view.step_container
        if container is not None and container.ready and container.phase == "running":
            return
        if container is None or container.phase != "terminated":
            raise self.gone_error(step)
        buffer = self.buffers[step]
        with anyio.move_on_after(5.0):
            await buffer.wait_complete()  # its last lines, before they are quoted
        last = [
            line.decode(errors="replace")
            for line in buffer.lines(max(len(buffer) - 5, 0), len(buffer))
        ]
        raise ServiceError(
            f"service {step} exited with code {container.exit_code} before port "
            f"{spec.ports[0]} accepted connections",
            build_id=self.build_id,
            step=step,
            reason=container.reason,
            message=("last lines: " + " | ".join(last)) if last else "it printed nothing",
        )

    async def step_result(self, spec: StepSpec) -> StepResult:
        """Wait until the step ended; its result, or :class:`StepTimeoutError` once a
        step that outran its timeout was stopped."""
        step = spec.name
        record = self.steps[step]
        if record.never_ran is not None:
            return record.never_ran
        if spec.timeout is None:
            return await self._wait_terminated(step)
        # The deadline the build enforces (see _enforce_timeout), plus the time the
        # kubelet takes to stop the step: the result is then the stopped step's, which
        # inspect reports too.
        started = record.started_at if record.started_at is not None else anyio.current_time()
        remaining = spec.timeout - (anyio.current_time() - started)
        with anyio.move_on_after(max(remaining, 0.0) + STOP_WAIT):
            result = await self._wait_terminated(step)
            latest = self.view.states[step].latest
            if not (record.timed_out or (latest is not None and latest.stopped)):
                return result
        raise StepTimeoutError(
            f"the step ran longer than its timeout of {spec.timeout:g}s and was stopped",
            build_id=self.build_id,
            step=step,
            reason=diagnosis.TIMEOUT_REASON,
        )

    async def _wait_terminated(self, step: str) -> StepResult:
        try:
            view = await self.wait_step(step, lambda view: view.settled)
        except anyio.EndOfStream:
            raise self.gone_error(step) from None
        container = view.step_container
        if container is not None and container.phase == "terminated":
            result = diagnosis.step_result(step, container, self.view.pod)
            if result.failure not in diagnosis.POD_GONE_FAILURES:
                return result
            # Killed because the pod was deleted, evicted or lost: that is the news.
        elif view.failure is not None:
            # The step image will never run (a failed pull or create).
            return StepResult(
                step=step,
                state="waiting",
                reason=view.failure.reason,
                message=view.failure.message,
                failure=view.failure.failure,
            )
        raise self.gone_error(step)

    def inspect(self, step: str) -> StepResult:
        """The step's current state, from the view and the runtime's own decisions."""
        record = self.steps[step]
        view = self.view.states[step].latest
        container = view.step_container if view is not None else None
        if record.never_ran is not None and (container is None or container.phase != "terminated"):
            return record.never_ran
        pod = self.view.pod  # kept when the pod failed (deadline, eviction); None once deleted
        if view is not None and view.stopped and container is not None:
            return diagnosis.step_result(step, container, pod, stopped=True)
        if record.timed_out and (container is None or container.phase != "terminated"):
            # Being stopped: the kubelet has not ended it yet.
            return StepResult(
                step=step,
                state="running",
                reason=diagnosis.TIMEOUT_REASON,
                message=diagnosis.STOPPED_MESSAGE,
                started_at=diagnosis.parse_time(container.started_at) if container else None,
                failure=Failure.TIMEOUT,
            )
        if container is None and not self.view.gone:
            return StepResult(step=step, state="waiting")
        return diagnosis.step_result(step, container, pod)

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
            record.started_at = self._first_seen_running(view)
        remaining = limit - (anyio.current_time() - record.started_at)
        with anyio.move_on_after(max(remaining, 0.0)):
            with contextlib.suppress(anyio.EndOfStream):
                await self.wait_step(step, lambda view: view.ended)
            return
        record.timed_out = True
        try:
            await self._patch_image(step, self.placeholder, f"stop step {step}")
        except BuildRuntimeError as error:
            # The pod's activeDeadlineSeconds (when the build has a timeout) and
            # remove_build still end it; the waiters see the timeout either way.
            log.warning(
                "build %s: could not stop step %s at its timeout: %s", self.build_id, step, error
            )

    # -- waiting on the view ------------------------------------------------------------

    async def wait_step(self, step: str, ready: Callable[[StepView], bool]) -> StepView:
        """The first view of ``step`` (the current one first) for which ``ready`` holds.

        Raises :class:`anyio.EndOfStream` if the build's streams close first.
        """
        async for view in self.view.states[step].follow(from_latest=True):
            if ready(view):
                return view
        raise anyio.EndOfStream

    async def step_ended(self, step: str, within: float) -> bool:
        """Whether, within ``within`` seconds, the step's container is seen terminated or
        the pod gone."""
        with anyio.move_on_after(within):
            try:
                await self.wait_step(step, lambda view: view.ended)
            except anyio.EndOfStream:
                return True
            return True
        return False

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
            pod_gone=lambda: self.view.gone,
            observer=self.telemetry,
        )
        await capture.run()

    def tail(self, step: str) -> AsyncIterator[bytes]:
        """The step's captured lines (masked as they were captured)."""
        return self.buffers[step].follow()

    def masked(self, result: StepResult) -> StepResult:
        """``result`` with the build's secrets masked in its message (a failing step's
        termination message is its last log lines)."""
        if result.message and self.masker:
            return dataclasses.replace(result, message=self.masker.text(result.message))
        return result

    @contextlib.contextmanager
    def masking_errors(self) -> Iterator[None]:
        """Errors raised in the block say nothing of the build's secrets."""
        try:
            yield
        except BuildRuntimeError as error:
            raise self.masker.error(error) from error.__cause__

    def gone_error(self, step: str | None) -> BuildRuntimeError:
        """The error for a step API that found the build's streams ended or its pod gone."""
        if self.crash is not None:
            error = BuildRuntimeError(
                "the build's watches stopped on an unexpected error",
                build_id=self.build_id,
                step=step,
                reason=type(self.crash).__name__,
                message=str(self.crash),
            )
            error.__cause__ = self.crash
            return error
        return diagnosis.pod_gone_error(self.build_id, step, self.view.pod)

    # -- removal ------------------------------------------------------------------------

    async def remove(self) -> None:
        """Let every capture of a step that ended drain, delete the pod and wait until
        the deletion is seen (bounded by ``delete_timeout``), then stop every task."""
        with anyio.move_on_after(self.settings.delete_timeout):
            for name, buffer in self.buffers.items():
                view = self.view.states[name].latest
                container = view.step_container if view is not None else None
                if container is not None and container.phase == "terminated":
                    await buffer.wait_complete()
            pod_left = not self.view.gone or self.view.pod is not None
            if pod_left and (self.fanout.seen_pod or self.fanout.pod_uid):
                await self._send(None, "delete the pod", self._delete)
                async for pod in self.view.pods.follow(from_latest=True):
                    if pod is None:
                        break
            for name in self._secrets_created:
                await self._send(
                    None, f"delete the Secret {name}", partial(self._delete_secret, name)
                )
        self.stop()
        with anyio.CancelScope(shield=True):
            await self.finished.wait()

    async def _delete(self) -> None:
        try:
            await self.cluster.delete_pod(self.namespace, self.spec.pod_name)
        except NotFoundError:
            return

    async def _delete_secret(self, name: str) -> None:
        """The pod owns the Secret, so the garbage collector deletes it too; deleting it
        here makes ``remove_build`` leave nothing behind at once."""
        try:
            await self.cluster.delete_secret(self.namespace, name)
        except NotFoundError:
            return

    async def abandon(self) -> None:
        """After a failed assemble: delete what may have been created, stop the tasks."""
        with anyio.move_on_after(self.settings.delete_timeout), contextlib.suppress(Exception):
            if self.fanout.pod_uid:
                await self.cluster.delete_pod(self.namespace, self.spec.pod_name)
            for name in self._secrets_created:
                await self._delete_secret(name)
        self.stop()
        await self.finished.wait()

    def close_unstarted(self) -> None:
        """A build removed before it was assembled: end its streams."""
        self.view.close()
