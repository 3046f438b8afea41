"""The Runtime: the step APIs a CI executor calls, per build, in order.

``setup_build`` renders the pod; ``assemble_build`` follows the build's pod (through the
runtime's one watch of its pods, or a watch of the build's own, see ``shared_pod_watch``),
creates the pod, follows its Events (through the runtime's one events watch of the
namespace, or a watch of the build's own, see ``shared_event_watch``) and waits until it
can run steps; from then on the step APIs read the build's view of the informer cache,
and the only requests they cause are one patch per step (the image swap; one more for a
step stopped at its timeout) and one log stream per step (started in the background when
the step starts). ``remove_build`` deletes the pod once every capture has drained. Each
build is driven by its own :class:`~buildruntime.controller.BuildController`; the methods
here check the call and hand it on.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self, Unpack

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from buildruntime import adoption, exception_groups, spec_record
from buildruntime.build import Build
from buildruntime.cluster.port import Cluster
from buildruntime.controller import BuildController
from buildruntime.errors import (
    BuildRuntimeError,
    ClusterUnavailableError,
    SpecError,
    UsageError,
)
from buildruntime.events import BuildEvent
from buildruntime.informer.shared_events import SharedEventWatch
from buildruntime.informer.shared_pods import SharedPodWatch
from buildruntime.informer.topic import Topic
from buildruntime.labels import WORKER, managed_selector
from buildruntime.names import dns1123_label_problem
from buildruntime.reaper import Reaper
from buildruntime.results import StepResult
from buildruntime.settings import RuntimeOptions, RuntimeSettings, resolve
from buildruntime.spec import BuildSpec, StepSpec, render_pod
from buildruntime.telemetry import MeteredCluster, WatchTelemetry, instruments_for
from buildruntime.worker_lease import WorkerLease

log = logging.getLogger("buildruntime")


class Runtime:
    """Runs builds as pods: one per build, one container per step.

    Use it as an async context manager. While it runs it holds its worker's Lease
    (created on entry, renewed in the background, see :mod:`buildruntime.worker_lease`)
    and reaps dead workers' Leases (on entry and every ``reap_interval``, see
    :mod:`buildruntime.reaper`). On exit, builds still present are removed and then the
    Lease is deleted.
    Settings come as a :class:`RuntimeSettings`, as keywords (``delete_timeout=30``), or
    both (keywords win).
    """

    def __init__(
        self,
        cluster: Cluster,
        namespace: str = "default",
        settings: RuntimeSettings | None = None,
        *,
        owns_cluster: bool = False,
        **options: Unpack[RuntimeOptions],
    ) -> None:
        self.settings = resolve(settings, options)
        self.cluster = cluster
        self.namespace = namespace
        self._owns_cluster = owns_cluster
        self._builds: dict[str, BuildController] = {}
        """Builds not removed yet, by id."""
        self._mine: weakref.WeakSet[BuildController] = weakref.WeakSet()
        """Every build this runtime set up whose handle is still held."""
        self._events: Topic[BuildEvent] = Topic(retain=10_000)
        self._exit_stack: AsyncExitStack | None = None
        self._task_group: TaskGroup | None = None
        self.reaper = Reaper(cluster, namespace, grace=self.settings.reap_grace)
        self.lease = WorkerLease(cluster, namespace, self.settings, on_lapse=self.reaper.lost_sight)
        self.reaper.own_lease = self.lease.name
        self._lease_tasks: anyio.CancelScope | None = None
        self._released = False
        """Some builds were released for another worker (``release_builds``)."""
        resolved = self.settings
        instruments = instruments_for(resolved.tracer_provider, resolved.meter_provider)
        self._shared_events: SharedEventWatch | None = None
        if resolved.shared_event_watch:
            self._shared_events = SharedEventWatch(
                MeteredCluster(cluster, instruments.requests),
                namespace,
                settings=resolved.reflector,
                observer=WatchTelemetry(instruments),
            )
        self._shared_pods: SharedPodWatch | None = None
        if resolved.shared_pod_watch:
            self._shared_pods = SharedPodWatch(
                MeteredCluster(cluster, instruments.requests),
                namespace,
                f"{managed_selector()},{WORKER}={resolved.worker_id}",
                settings=resolved.reflector,
                observer=WatchTelemetry(instruments),
            )

    @property
    def worker_id(self) -> str:
        return self.settings.worker_id

    @property
    def pause_image(self) -> str:
        return self.settings.pause_image

    @property
    def schedule_timeout(self) -> float:
        return self.settings.schedule_timeout

    @property
    def delete_timeout(self) -> float:
        return self.settings.delete_timeout

    @property
    def api_timeout(self) -> float:
        return self.settings.api_timeout

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_kubeconfig(
        cls,
        path: str | None = None,
        context: str | None = None,
        namespace: str = "default",
        settings: RuntimeSettings | None = None,
        **options: Unpack[RuntimeOptions],
    ) -> Runtime:
        """A runtime for the cluster a kubeconfig names (``KUBECONFIG`` or
        ``~/.kube/config`` when ``path`` is None)."""
        from buildruntime.cluster.kube import KubeCluster

        resolved = resolve(settings, options)
        where = f"the kubeconfig {path}" if path else "a kubeconfig ($KUBECONFIG or ~/.kube/config)"
        if context:
            where += f" (context {context})"
        with _configuration_error(f"cannot load {where}"):
            cluster = KubeCluster.from_kubeconfig(path, context)
        return cls(cluster, namespace, resolved, owns_cluster=True)

    @classmethod
    def in_cluster(
        cls,
        namespace: str = "default",
        settings: RuntimeSettings | None = None,
        **options: Unpack[RuntimeOptions],
    ) -> Runtime:
        """A runtime for the cluster this process runs in (its service account)."""
        from buildruntime.cluster.kube import KubeCluster

        resolved = resolve(settings, options)
        with _configuration_error("cannot load the in-cluster configuration"):
            cluster = KubeCluster.in_cluster()
        return cls(cluster, namespace, resolved, owns_cluster=True)

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            if self._owns_cluster:
                closer = getattr(self.cluster, "aclose", None)
                if closer is not None:
                    stack.push_async_callback(closer)
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
            for shared in (self._shared_events, self._shared_pods):
                if shared is not None:
                    shared.open(self._task_group)
                    stack.callback(shared.close)
            # Pushed after the shared watches' close, so it runs before it: the builds
            # still present are removed while their watches still see the deletions.
            stack.push_async_callback(self._shutdown)
            await self.lease.acquire()
            # Made here, not in the task: an exit that comes before the task has started
            # must still be able to stop it.
            self._lease_tasks = anyio.CancelScope()
            self._task_group.start_soon(self._keep_lease, self._lease_tasks)
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
            leaves = exception_groups.leaves(group)
            if exc is not None and all(leaf is exc for leaf in leaves):
                return False
            if len(leaves) == 1:
                raise leaves[0] from None
            raise

    async def _keep_lease(self, scope: anyio.CancelScope) -> None:
        """Renew the Lease and reap, until the runtime exits (``scope`` is cancelled)."""
        with scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.lease.keep)
                tg.start_soon(
                    self.reaper.run, self.settings.reap_interval, lambda: self.lease.healthy
                )

    async def _shutdown(self) -> None:
        """Remove what is left, stop every build's tasks, then delete the worker's Lease
        (which takes any pod still owned by it), all within ``delete_timeout``: a Lease
        not deleted in time is reaped once it is stale."""
        deadline = anyio.current_time() + self.settings.delete_timeout
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for build in list(self._builds.values()):
                    if build.started and not build.removed:
                        tg.start_soon(self._remove_quietly, build)
            for build in self._builds.values():
                build.stop()
                for buffer in build.buffers.values():
                    buffer.close()  # spill files go with the runtime
            self._events.close()
            if self._lease_tasks is not None:
                self._lease_tasks.cancel()
            if self._released:
                # Builds released for another worker are still owned by this Lease
                # until adopted: deleting it would have the garbage collector delete
                # them. It lapses instead, and one nobody adopts goes with it once it
                # is reaped.
                log.info(
                    "worker %s: its Lease is left to lapse: it owns builds it released",
                    self.worker_id,
                )
            else:
                await self.lease.release(within=deadline - anyio.current_time())
        self._task_group = None

    async def _remove_quietly(self, build: BuildController) -> None:
        with (
            contextlib.suppress(BuildRuntimeError),
            anyio.move_on_after(self.settings.delete_timeout),
        ):
            await self._remove(build)

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
        manifest = render_pod(
            spec,
            namespace=self.namespace,
            pause_image=self.pause_image,
            placeholder_image=self.settings.placeholder_image,
            workspace_path=self.settings.workspace_path,
        )
        manifest["metadata"]["labels"][WORKER] = self.worker_id
        spec_record.annotate(manifest, spec)
        controller = BuildController(
            self.cluster,
            spec,
            self.namespace,
            manifest,
            self.settings,
            runtime_events=self._events,
            shared_events=self._shared_events,
            shared_pods=self._shared_pods,
        )
        self._builds[spec.build_id] = controller
        self._mine.add(controller)
        return Build(
            spec=spec, namespace=self.namespace, pod_manifest=manifest, _controller=controller
        )

    async def assemble_build(self, build: Build) -> None:
        """Start the build's watches, create its pod, and wait until it is scheduled and
        its placeholders run.

        Raises :class:`AdmissionError` when the API server refuses the pod,
        :class:`SchedulingError` when it is not scheduled within ``schedule_timeout``,
        :class:`ImagePullError` when the placeholder image cannot be pulled,
        :class:`ClusterUnavailableError` when the API server cannot be reached.
        """
        controller = self._controller(build)
        if controller.removed:
            raise UsageError("the build was removed", build_id=build.build_id)
        if controller.started:
            raise UsageError("the build was already assembled", build_id=build.build_id)
        task_group = self._require_entered()
        # The pod goes with the worker's Lease: if this worker dies, the reaper of
        # another deletes the Lease and the garbage collector the pod (and its Secrets).
        controller.manifest["metadata"]["ownerReferences"] = [self.lease.owner_reference()]
        await task_group.start(controller.run)
        try:
            with controller.masking_errors():
                await controller.assemble()
        except BaseException as error:
            controller.telemetry.build_failed(error)
            with anyio.CancelScope(shield=True):
                await controller.abandon()
                self._forget(controller)
            raise

    async def attach_build(self, build_id: str) -> Build:
        """Adopt a build pod still in the namespace, from a worker that died or released
        it, and return its handle, its steps in the state the cache shows.

        One patch moves the pod to this worker (``settings.worker_id``), conditional on
        the pod as read, so of two workers adopting the same build exactly one succeeds;
        the other gets :class:`BuildAdoptedError` naming the winner. Then the build's
        watches start, as for a build assembled here: a step that runs or ran is tailed
        from its first line (the node still holds its log), ``wait_container`` waits for
        a running step, ``run_container`` starts the next, a running step's timeout is
        enforced from its start. The build's spec comes from its pod's annotation
        (secret values from its Secret). Raises :class:`PodGoneError` when the pod is gone.
        """
        problem = dns1123_label_problem(build_id)
        if problem:
            raise SpecError("build_id", problem)
        existing = self._builds.get(build_id)
        if existing is not None and not existing.removed:
            raise UsageError("the build is already in this runtime", build_id=build_id)
        task_group = self._require_entered()
        api_timeout = self.settings.api_timeout
        pod = await adoption.adopt(
            self.cluster,
            self.namespace,
            build_id,
            self.worker_id,
            self.lease.owner_reference(),
            api_timeout=api_timeout,
        )
        recorded = spec_record.read(pod)
        if recorded.secret_names or recorded.registry_hosts:
            try:
                values, passwords = await adoption.secret_values(
                    self.cluster, self.namespace, recorded, api_timeout=api_timeout
                )
            except BaseException:
                with anyio.CancelScope(shield=True), contextlib.suppress(BuildRuntimeError):
                    await adoption.release(
                        self.cluster,
                        self.namespace,
                        build_id,
                        self.settings.worker_id,
                        api_timeout=api_timeout,
                    )
                raise
            recorded = spec_record.read(pod, secret_values=values, registry_passwords=passwords)
        controller = BuildController(
            self.cluster,
            recorded.spec,
            self.namespace,
            pod,
            self.settings,
            runtime_events=self._events,
            adopted=True,
        )
        self._builds[build_id] = controller
        self._mine.add(controller)
        await task_group.start(controller.run)
        try:
            with controller.masking_errors():
                await controller.adopt(pod["metadata"]["uid"], recorded.secret_objects)
        except BaseException:
            with anyio.CancelScope(shield=True):
                controller.stop()
                await controller.finished.wait()
                self._forget(controller)
            raise
        return Build(
            spec=recorded.spec, namespace=self.namespace, pod_manifest=pod, _controller=controller
        )

    async def release_builds(self) -> list[str]:
        """Leave every build of this runtime to another worker (a rolling upgrade): mark
        each pod released, stop its watches and log captures, delete nothing. The pods
        and their steps run on; another worker's ``attach_build`` adopts them. The
        released builds' handles answer no more step calls. Returns the released ids."""
        released: list[str] = []
        with anyio.CancelScope(shield=True):
            for controller in list(self._builds.values()):
                if not controller.started or controller.removed:
                    continue
                with contextlib.suppress(BuildRuntimeError):
                    await adoption.release(
                        self.cluster,
                        self.namespace,
                        controller.build_id,
                        self.settings.worker_id,
                        api_timeout=self.settings.api_timeout,
                    )
                controller.stop()
                await controller.finished.wait()
                controller.released = True
                self._released = True
                self._forget(controller)
                released.append(controller.build_id)
        return released

    async def run_container(self, build: Build, step: str) -> None:
        """Swap the step's placeholder for the step image; return once it runs or has
        already finished.

        Raises :class:`ImagePullError`, :class:`ContainerCreateError` and
        :class:`PodGoneError` (the pod was deleted).
        """
        controller = self._controller(build)
        spec = self._step(controller, step)
        self._require_assembled(controller)
        with controller.masking_errors():
            await controller.start_step(spec)

    def tail_container(self, build: Build, step: str) -> AsyncIterator[bytes]:
        """The step's log lines (bytes, newline stripped) from the first to the last.

        Capture runs in the background from the moment the step starts, so calling this
        late, or twice, still yields every line from the first, once each, in order. The
        iterator ends when the container has terminated and every line was delivered.
        After ``remove_build`` it still yields what was captured.
        """
        controller = self._controller(build)
        self._step(controller, step)
        if not controller.started:
            self._require_assembled(controller)
        self._require_started(controller, step)
        return controller.tail(step)

    async def wait_container(self, build: Build, step: str) -> StepResult:
        """Wait until the step's container terminated and return its result.

        Raises :class:`StepTimeoutError` once a step that ran longer than its ``timeout``
        has been stopped (the runtime stops it at the deadline whether or not anyone
        waits), and :class:`PodGoneError` when the pod goes away before the step finished.
        """
        controller = self._controller(build)
        spec = self._step(controller, step)
        self._require_assembled(controller)
        self._require_started(controller, step)
        with controller.masking_errors():
            return controller.masked(await controller.step_result(spec))

    async def inspect_container(self, build: Build, step: str) -> StepResult:
        """The step's current state, from the cache. Sends nothing."""
        controller = self._controller(build)
        self._step(controller, step)
        return controller.masked(controller.inspect(step))

    async def remove_build(self, build: Build) -> None:
        """Let every capture drain, delete the pod, and wait until the deletion is seen
        (bounded by ``delete_timeout``). Idempotent; a pod already gone counts as done.
        A build released for another worker is left alone (its ``finally`` may call this)."""
        if isinstance(build, Build) and build._controller.released:
            return
        controller = self._controller(build)
        if controller.removed:
            return
        if not controller.started:
            self._forget(controller)
            controller.close_unstarted()
            return
        # Shielded: an executor's cancelled build (a timeout of its own, a cancelled job)
        # calls this from a cancelled scope, and a cleanup cut short would leave the
        # pod, the build's watches and its id behind. The removal is bounded by
        # delete_timeout; the caller's cancellation takes effect right after.
        with anyio.CancelScope(shield=True):
            await self._remove(controller)
        await anyio.lowlevel.checkpoint_if_cancelled()

    async def _remove(self, controller: BuildController) -> None:
        try:
            await controller.remove()
        finally:
            self._forget(controller)

    def events(self) -> AsyncIterator[BuildEvent]:
        """Domain events of every build of this runtime, from now on."""
        return self._events.follow(start=self._events.next_seq)

    # -- checks -----------------------------------------------------------------------

    def _require_entered(self) -> TaskGroup:
        if self._task_group is None:
            raise RuntimeError(
                "use the Runtime as an async context manager: async with Runtime(...)"
            )
        return self._task_group

    def _controller(self, build: Build) -> BuildController:
        if not isinstance(build, Build):
            raise SpecError(
                "build", f"must be a Build from setup_build, not {type(build).__name__}"
            )
        controller = build._controller
        if controller not in self._mine:
            raise UsageError("the build does not belong to this runtime", build_id=build.build_id)
        if controller.released:
            raise UsageError(
                "the build was released for another worker to attach", build_id=build.build_id
            )
        return controller

    def _forget(self, controller: BuildController) -> None:
        """A removed build is held only by its handle: what a worker running builds for
        weeks keeps is what its executors still hold, not every build it ever ran."""
        controller.removed = True
        if self._builds.get(controller.build_id) is controller:
            del self._builds[controller.build_id]

    @staticmethod
    def _step(controller: BuildController, step: str) -> StepSpec:
        try:
            return controller.spec.step(step)
        except KeyError:
            names = ", ".join(s.name for s in controller.spec.steps)
            raise SpecError(
                "step", f"build {controller.build_id} has no step {step!r} (steps: {names})"
            ) from None

    @staticmethod
    def _require_assembled(controller: BuildController) -> None:
        if controller.removed:
            raise UsageError("the build was removed", build_id=controller.build_id)
        if not controller.started:
            raise UsageError(
                "the build is not assembled yet: call assemble_build first",
                build_id=controller.build_id,
            )

    @staticmethod
    def _require_started(controller: BuildController, step: str) -> None:
        if not controller.steps[step].patched:
            raise UsageError(
                "the step was not started: call run_container first",
                build_id=controller.build_id,
                step=step,
            )


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
