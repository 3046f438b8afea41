"""The Runtime: the step APIs a CI executor calls, per build, in order.

``setup_build`` renders the pod; ``assemble_build`` starts the build's pod and events
watches, creates the pod and waits until it is scheduled; from then on the step APIs
read the informer cache, and the only requests they cause are one patch per step (the
image swap) and one log stream per step (started in the background when the step
starts). ``remove_build`` deletes the pod once every capture has drained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from buildruntime import diagnosis
from buildruntime.build import Build, BuildState
from buildruntime.cluster.port import (
    ApiError,
    Cluster,
    ConflictError,
    NotFoundError,
    UnavailableError,
)
from buildruntime.errors import (
    AdmissionError,
    BuildRuntimeError,
    ClusterUnavailableError,
    ContainerCreateError,
    ImagePullError,
    SchedulingError,
    SpecError,
    StepTimeoutError,
    UsageError,
)
from buildruntime.events import BuildEvent
from buildruntime.images import DEFAULT_PAUSE_IMAGE, image_problem
from buildruntime.informer.reflector import ReflectorSettings
from buildruntime.informer.snapshots import PodSnapshot
from buildruntime.informer.topic import Topic
from buildruntime.logs import DEFAULT_MEMORY_LIMIT
from buildruntime.results import Failure, StepResult
from buildruntime.spec import BuildSpec, StepSpec, render_pod

log = logging.getLogger("buildruntime")

T = TypeVar("T")

STOP_WAIT = 30.0
"""How long, past a step's timeout, ``wait_container`` waits to see the kubelet stop the
step (the pod's 5 s grace period, and a kubelet that syncs the patch late) before it
raises :class:`StepTimeoutError` anyway."""


class Runtime:
    """Runs builds as pods: one per build, one container per step.

    Use it as an async context manager; builds still present on exit are removed.
    """

    def __init__(
        self,
        cluster: Cluster,
        namespace: str = "default",
        *,
        pause_image: str = DEFAULT_PAUSE_IMAGE,
        schedule_timeout: float = 120.0,
        delete_timeout: float = 60.0,
        resync_period: float = 300.0,
        api_timeout: float = 60.0,
        log_memory_limit: int = DEFAULT_MEMORY_LIMIT,
        reflector: ReflectorSettings | None = None,
        owns_cluster: bool = False,
    ) -> None:
        problem = image_problem(pause_image)
        if problem:
            raise SpecError("pause_image", problem)
        for name, value in (
            ("schedule_timeout", schedule_timeout),
            ("delete_timeout", delete_timeout),
            ("resync_period", resync_period),
            ("api_timeout", api_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise SpecError(name, f"must be a positive number of seconds, not {value!r}")
        self.cluster = cluster
        self.namespace = namespace
        self.pause_image = pause_image
        self.schedule_timeout = float(schedule_timeout)
        self.delete_timeout = float(delete_timeout)
        self.api_timeout = float(api_timeout)
        self._log_memory_limit = log_memory_limit
        base = reflector or ReflectorSettings()
        self._reflector_settings = dataclasses.replace(base, resync_period=float(resync_period))
        self._owns_cluster = owns_cluster
        self._builds: dict[str, BuildState] = {}
        self._events: Topic[BuildEvent] = Topic(retain=10_000)
        self._exit_stack: AsyncExitStack | None = None
        self._task_group: TaskGroup | None = None

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_kubeconfig(
        cls,
        path: str | None = None,
        context: str | None = None,
        namespace: str = "default",
        **settings: Any,
    ) -> Runtime:
        """A runtime for the cluster a kubeconfig names (``KUBECONFIG`` or
        ``~/.kube/config`` when ``path`` is None)."""
        from buildruntime.cluster.kube import KubeCluster

        where = f"the kubeconfig {path}" if path else "a kubeconfig ($KUBECONFIG or ~/.kube/config)"
        if context:
            where += f" (context {context})"
        with _configuration_error(f"cannot load {where}"):
            cluster = KubeCluster.from_kubeconfig(path, context)
        return cls(cluster, namespace, owns_cluster=True, **settings)

    @classmethod
    def in_cluster(cls, namespace: str = "default", **settings: Any) -> Runtime:
        """A runtime for the cluster this process runs in (its service account)."""
        from buildruntime.cluster.kube import KubeCluster

        with _configuration_error("cannot load the in-cluster configuration"):
            cluster = KubeCluster.in_cluster()
        return cls(cluster, namespace, owns_cluster=True, **settings)

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            if self._owns_cluster:
                closer = getattr(self.cluster, "aclose", None)
                if closer is not None:
                    stack.push_async_callback(closer)
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._shutdown)
        except BaseException:
            await stack.aclose()
            raise
        self._exit_stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._exit_stack is not None
        stack, self._exit_stack = self._exit_stack, None
        try:
            return await stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The runtime's own task group wraps whatever left the block: the caller
            # gets it as itself, so that its `except ImagePullError:` around the block
            # matches. Only several unrelated errors at once stay a group.
            leaves = _leaves(group)
            if exc is not None and all(leaf is exc for leaf in leaves):
                return False
            if len(leaves) == 1:
                raise leaves[0] from None
            raise

    async def _shutdown(self) -> None:
        """Remove what is left (bounded), then stop every build's tasks."""
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for state in list(self._builds.values()):
                    if state.started and not state.removed:
                        tg.start_soon(self._remove_quietly, state)
            for state in self._builds.values():
                state.stop()
                for buffer in state.buffers.values():
                    buffer.close()  # spill files go with the runtime
            self._events.close()
        self._task_group = None

    async def _remove_quietly(self, state: BuildState) -> None:
        with contextlib.suppress(BuildRuntimeError), anyio.move_on_after(self.delete_timeout):
            await self._remove(state)

    # -- the step APIs ----------------------------------------------------------------

    async def setup_build(self, spec: BuildSpec) -> Build:
        """Validate ``spec`` and render its pod. Sends nothing."""
        if not isinstance(spec, BuildSpec):
            raise SpecError("spec", f"must be a BuildSpec, not {type(spec).__name__}")
        existing = self._builds.get(spec.build_id)
        if existing is not None and not existing.removed:
            raise UsageError(
                f"build id {spec.build_id!r} is already set up in this runtime: remove that "
                "build first, or choose another build_id",
                build_id=spec.build_id,
            )
        manifest = render_pod(spec, namespace=self.namespace, pause_image=self.pause_image)
        state = BuildState(
            self.cluster,
            spec,
            self.namespace,
            spec.pause_image or self.pause_image,
            reflector_settings=self._reflector_settings,
            log_memory_limit=self._log_memory_limit,
            runtime_events=self._events,
            stop_step=self._stop_step,
        )
        state.owner = self
        self._builds[spec.build_id] = state
        return Build(spec=spec, namespace=self.namespace, pod_manifest=manifest, _state=state)

    async def assemble_build(self, build: Build) -> None:
        """Start the build's watches, create its pod, and wait until it is scheduled.

        Raises :class:`AdmissionError` when the API server refuses the pod,
        :class:`SchedulingError` when it is not scheduled within ``schedule_timeout``,
        :class:`ClusterUnavailableError` when the API server cannot be reached.
        """
        state = self._state(build)
        if state.removed:
            raise UsageError("the build was removed", build_id=build.build_id)
        if state.started:
            raise UsageError("the build was already assembled", build_id=build.build_id)
        task_group = self._require_entered()
        await task_group.start(state.run)
        try:
            await self._assemble(state, build)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._abandon(state)
            raise

    async def _assemble(self, state: BuildState, build: Build) -> None:
        spec = state.spec
        with anyio.move_on_after(self.api_timeout):
            await state.pod_reflector.synced.wait()
        if not state.pod_reflector.synced.is_set():
            raise ClusterUnavailableError(
                "cannot list pods",
                build_id=spec.build_id,
                message=str(state.pod_reflector.last_error or "no answer from the API server"),
            )
        attempts = 0

        async def create() -> dict[str, Any]:
            nonlocal attempts
            attempts += 1
            try:
                return await self.cluster.create_pod(self.namespace, build.pod_manifest)
            except ConflictError as error:
                cached = state.fanout.pod
                if attempts > 1 and cached is not None:
                    # An earlier attempt got through before its connection broke.
                    return {"metadata": {"uid": cached.uid}}
                raise AdmissionError(
                    f"a pod named {spec.pod_name} already exists",
                    build_id=spec.build_id,
                    reason=error.reason,
                    message=error.message,
                ) from error
            except ApiError as error:
                # 400/403/422 carry an admission webhook's or a policy's message; a 404
                # names a namespace that does not exist. Either way the pod was refused.
                if error.status in (400, 403, 404, 422):
                    raise AdmissionError(
                        "the API server refused the build's pod",
                        build_id=spec.build_id,
                        reason=error.reason,
                        message=error.message,
                    ) from error
                raise

        created = await self._call(spec.build_id, None, "create the pod", create)
        uid = (created.get("metadata") or {}).get("uid", "")
        state.fanout.pod_uid = uid
        state.start_events_watch(uid)
        await self._wait_scheduled(state)
        await self._wait_placeholders(state)
        assert state.event_reflector is not None
        with anyio.move_on_after(self.api_timeout):
            await state.event_reflector.synced.wait()

    async def _wait_scheduled(self, state: BuildState) -> None:
        fanout = state.fanout
        with anyio.move_on_after(self.schedule_timeout):
            async for pod in state.fanout.pods.follow():
                if pod is not None and pod.scheduled:
                    return
                if fanout.gone:
                    raise state.gone_error(None)
            # The streams closed: the build was stopped while it was assembling.
            raise state.gone_error(None)
        message = fanout.pod.unschedulable_message if fanout.pod is not None else None
        for event in fanout.pod_events.items_from(0)[0]:
            if event.reason == "FailedScheduling":
                message = event.message
        raise SchedulingError(
            f"the build's pod was not scheduled within {self.schedule_timeout:g}s",
            build_id=state.spec.build_id,
            reason="Unschedulable" if message else "Timeout",
            message=message,
        )

    async def _wait_placeholders(self, state: BuildState) -> None:
        """Wait until every step's placeholder has started (the pod can run steps), or
        fail naming the placeholder when it cannot: a placeholder image the nodes cannot
        pull is the whole build's configuration problem, not the first step's."""
        spec = state.spec
        steps = [s.name for s in spec.steps]

        def started(pod: PodSnapshot) -> bool:
            phases = {status.name: status.phase for status in pod.containers}
            return all(phases.get(step, "waiting") != "waiting" for step in steps)

        waiting: PodSnapshot | None = None
        with anyio.move_on_after(self.schedule_timeout):
            async for pod in state.fanout.pods.follow(from_latest=True):
                if pod is None or state.fanout.gone:
                    raise state.gone_error(None)
                waiting = pod
                failed = diagnosis.placeholder_failure(pod, steps, state.placeholder)
                if failed is not None:
                    events = [
                        event
                        for step in steps
                        for event in state.fanout.step_events[step].items_from(0)[0]
                    ]
                    raise diagnosis.placeholder_error(
                        spec.build_id, state.placeholder, failed, events
                    )
                if started(pod):
                    return
            raise state.gone_error(None)
        stuck = next(
            (c for c in (waiting.containers if waiting else ()) if c.phase == "waiting"), None
        )
        raise SchedulingError(
            "the build's pod was scheduled but its containers did not start within "
            f"{self.schedule_timeout:g}s",
            build_id=spec.build_id,
            reason=(stuck.reason if stuck else None) or "Timeout",
            message=stuck.message if stuck else None,
        )

    async def run_container(self, build: Build, step: str) -> None:
        """Swap the step's placeholder for the step image; return once it runs or has
        already finished.

        Raises :class:`ImagePullError`, :class:`ContainerCreateError` and
        :class:`PodGoneError` (the pod was deleted).
        """
        state = self._state(build)
        spec = self._step(state, step)
        self._require_assembled(state, build)
        record = state.steps[step]
        if not record.patched:
            if state.fanout.gone:
                raise state.gone_error(step)
            patch = {"spec": {"containers": [{"name": step, "image": spec.image}]}}

            async def send() -> dict[str, Any]:
                try:
                    return await self.cluster.patch_pod(self.namespace, build.pod_name, patch)
                except NotFoundError as error:
                    raise diagnosis.pod_gone_error(build.build_id, step, None) from error

            await self._call(build.build_id, step, f"start step {step}", send)
            record.patched = True
        try:
            await self._wait_started(state, spec)
            if record.started_at is None:
                record.started_at = anyio.current_time()
        except (ImagePullError, ContainerCreateError) as error:
            failure = (
                Failure.IMAGE_PULL
                if isinstance(error, ImagePullError)
                else Failure.CONTAINER_CREATE
            )
            record.result = StepResult(
                step=step,
                state="waiting",
                reason=error.reason,
                message=error.message,
                failure=failure,
            )
            state.buffers[step].finish(lost_reason=str(error))
            raise

    async def _wait_started(self, state: BuildState, spec: StepSpec) -> None:
        build_id = state.spec.build_id
        async for view in state.fanout.states[spec.name].follow(from_latest=True):
            container = view.step_container
            if container is not None and container.phase in ("running", "terminated"):
                return
            events = state.fanout.step_events[spec.name].items_from(0)[0]
            if view.failure is not None:
                raise diagnosis.step_failure_error(
                    build_id, spec.name, spec.image, view.failure, events
                )
            if container is not None and diagnosis.waiting_failure(container) is not None:
                raise diagnosis.step_failure_error(
                    build_id,
                    spec.name,
                    spec.image,
                    diagnosis.status_failure(container),
                    events,
                )
            if view.pod_gone:
                break
        raise state.gone_error(spec.name)

    def tail_container(self, build: Build, step: str) -> AsyncIterator[bytes]:
        """The step's log lines (bytes, newline stripped) from the first to the last.

        Capture runs in the background from the moment the step starts, so calling this
        late, or twice, still yields every line from the first, once each, in order. The
        iterator ends when the container has terminated and every line was delivered.
        """
        state = self._state(build)
        self._step(state, step)
        # Not refused after remove_build: what was captured stays readable until the
        # handle goes.
        if not state.started:
            self._require_assembled(state, build)
        self._require_started(state, step)
        return state.buffers[step].follow()

    async def wait_container(self, build: Build, step: str) -> StepResult:
        """Wait until the step's container terminated and return its result.

        Raises :class:`StepTimeoutError` once a step that ran longer than its ``timeout``
        has been stopped (the runtime stops it at the deadline whether or not anyone
        waits), and :class:`PodGoneError` when the pod goes away before the step finished.
        """
        state = self._state(build)
        spec = self._step(state, step)
        self._require_assembled(state, build)
        self._require_started(state, step)
        record = state.steps[step]
        if record.result is not None and record.result.failure is not None:
            return record.result
        if spec.timeout is None:
            return await self._wait_terminated(state, step)
        # The deadline is the one the build enforces (see BuildState._enforce_timeout),
        # plus the time the kubelet takes to stop the step: the result is then the
        # stopped step's, which inspect_container reports too.
        started = record.started_at if record.started_at is not None else anyio.current_time()
        remaining = spec.timeout - (anyio.current_time() - started)
        with anyio.move_on_after(max(remaining, 0.0) + STOP_WAIT):
            result = await self._wait_terminated(state, step)
            if not (record.timed_out or self._stopped(state, step)):
                return result
        raise StepTimeoutError(
            f"the step ran longer than its timeout of {spec.timeout:g}s and was stopped",
            build_id=build.build_id,
            step=step,
            reason=diagnosis.TIMEOUT_REASON,
        )

    @staticmethod
    def _stopped(state: BuildState, step: str) -> bool:
        view = state.fanout.states[step].latest
        return view is not None and view.stopped

    async def _stop_step(self, state: BuildState, step: str) -> None:
        """Stop a running step by patching its image back to the placeholder (see
        BuildState._enforce_timeout for why this way). One patch; a pod already gone has
        nothing left to stop."""
        patch = {"spec": {"containers": [{"name": step, "image": state.placeholder}]}}
        build_id = state.spec.build_id

        async def send() -> None:
            try:
                await self.cluster.patch_pod(self.namespace, state.spec.pod_name, patch)
            except NotFoundError:
                return

        try:
            await self._call(build_id, step, f"stop step {step}", send)
        except BuildRuntimeError as error:
            # The pod's activeDeadlineSeconds (when the build has a timeout) and
            # remove_build still end it; the waiters see the timeout either way.
            log.warning(
                "build %s: could not stop step %s at its timeout: %s", build_id, step, error
            )

    async def _wait_terminated(self, state: BuildState, step: str) -> StepResult:
        try:
            view = await state.wait_step(step, lambda view: view.settled)
        except anyio.EndOfStream:
            raise state.gone_error(step) from None
        container = view.step_container
        if container is not None and container.phase == "terminated":
            result = diagnosis.step_result(step, container, state.fanout.pod)
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
        raise state.gone_error(step)

    async def inspect_container(self, build: Build, step: str) -> StepResult:
        """The step's current state, from the cache. Sends nothing."""
        state = self._state(build)
        self._step(state, step)
        record = state.steps[step]
        view = state.fanout.states[step].latest
        container = view.step_container if view is not None else None
        if record.result is not None and (container is None or container.phase != "terminated"):
            return record.result
        pod = state.fanout.pod  # kept when the pod failed (deadline, eviction); None once deleted
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
        if container is None and not state.fanout.gone:
            return StepResult(step=step, state="waiting")
        return diagnosis.step_result(step, container, pod)

    async def remove_build(self, build: Build) -> None:
        """Let every capture drain, delete the pod, and wait until the deletion is seen
        (bounded by ``delete_timeout``). Idempotent; a pod already gone counts as done."""
        state = self._state(build)
        if state.removed:
            return
        if not state.started:
            self._forget(state)
            state.fanout.close()
            return
        # Shielded: an executor's cancelled build (a timeout of its own, a cancelled job)
        # calls this from a cancelled scope, and a cleanup cut short would leave the
        # pod, the build's watches and its id behind. _remove is bounded by
        # delete_timeout; the caller's cancellation takes effect right after.
        with anyio.CancelScope(shield=True):
            await self._remove(state)
        await anyio.lowlevel.checkpoint_if_cancelled()

    async def _remove(self, state: BuildState) -> None:
        with anyio.move_on_after(self.delete_timeout):
            # Captures of steps that ended read to their end before the pod goes.
            for name, buffer in state.buffers.items():
                view = state.fanout.states[name].latest
                container = view.step_container if view is not None else None
                if container is not None and container.phase == "terminated":
                    await buffer.wait_complete()
            if not state.fanout.gone or state.fanout.pod is not None:

                async def delete() -> None:
                    try:
                        await self.cluster.delete_pod(self.namespace, state.spec.pod_name)
                    except NotFoundError:
                        return

                if state.fanout.seen_pod or state.fanout.pod_uid:
                    await self._call(state.spec.build_id, None, "delete the pod", delete)
                    async for pod in state.fanout.pods.follow(from_latest=True):
                        if pod is None:
                            break
        self._forget(state)
        state.stop()
        with anyio.CancelScope(shield=True):
            await state.finished.wait()

    async def _abandon(self, state: BuildState) -> None:
        """After a failed assemble: delete what may have been created, stop the tasks."""
        if state.fanout.pod_uid:
            with anyio.move_on_after(self.delete_timeout), contextlib.suppress(Exception):
                await self.cluster.delete_pod(self.namespace, state.spec.pod_name)
        state.stop()
        await state.finished.wait()
        self._forget(state)

    def events(self) -> AsyncIterator[BuildEvent]:
        """Domain events of every build of this runtime, from now on."""
        return self._events.follow(start=self._events.next_seq)

    # -- helpers ----------------------------------------------------------------------

    def _require_entered(self) -> TaskGroup:
        if self._task_group is None:
            raise RuntimeError(
                "use the Runtime as an async context manager: async with Runtime(...)"
            )
        return self._task_group

    def _state(self, build: Build) -> BuildState:
        if not isinstance(build, Build):
            raise SpecError(
                "build", f"must be a Build from setup_build, not {type(build).__name__}"
            )
        state = build._state
        if state.owner is not self:
            raise UsageError("the build does not belong to this runtime", build_id=build.build_id)
        return state

    def _forget(self, state: BuildState) -> None:
        """A removed build is held only by its handle: what a worker running builds for
        weeks keeps is what its executors still hold, not every build it ever ran."""
        state.removed = True
        if self._builds.get(state.spec.build_id) is state:
            del self._builds[state.spec.build_id]

    def _step(self, state: BuildState, step: str) -> StepSpec:
        try:
            return state.spec.step(step)
        except KeyError:
            names = ", ".join(s.name for s in state.spec.steps)
            raise SpecError(
                "step", f"build {state.spec.build_id} has no step {step!r} (steps: {names})"
            ) from None

    def _require_assembled(self, state: BuildState, build: Build) -> None:
        if state.removed:
            raise UsageError("the build was removed", build_id=build.build_id)
        if not state.started:
            raise UsageError(
                "the build is not assembled yet: call assemble_build first",
                build_id=build.build_id,
            )

    @staticmethod
    def _require_started(state: BuildState, step: str) -> None:
        if not state.steps[step].patched:
            raise UsageError(
                "the step was not started: call run_container first",
                build_id=state.spec.build_id,
                step=step,
            )

    async def _call(
        self, build_id: str, step: str | None, what: str, call: Callable[[], Awaitable[T]]
    ) -> T:
        """Send one request, retrying while the API server is unreachable (up to
        ``api_timeout``), then giving up with :class:`ClusterUnavailableError`."""
        retrying = AsyncRetrying(
            sleep=anyio.sleep,
            wait=wait_random_exponential(multiplier=0.5, max=5.0),
            stop=stop_after_delay(self.api_timeout),
            retry=retry_if_exception_type(UnavailableError),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await call()
        except UnavailableError as error:
            raise ClusterUnavailableError(
                f"cannot {what}: the API server is unreachable",
                build_id=build_id,
                step=step,
                reason="Unavailable",
                message=str(error),
            ) from error
        raise AssertionError("unreachable")


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions in ``group`` and its nested groups."""
    leaves: list[BaseException] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            leaves.extend(_leaves(error))
        else:
            leaves.append(error)
    return leaves


@contextlib.contextmanager
def _configuration_error(summary: str) -> Iterator[None]:
    """The client's own errors for a missing or broken configuration (``ConfigException``,
    a file that is not YAML) as the library's: no cluster can be reached without one."""
    try:
        yield
    except BuildRuntimeError:
        raise
    except Exception as error:
        raise ClusterUnavailableError(
            summary, reason=type(error).__name__, message=str(error)
        ) from error
