"""The blocking facade: the same API as :class:`buildruntime.Runtime`, for executors that
are not async.

```python
from buildruntime import BuildSpec, StepSpec
from buildruntime.sync import Runtime

with Runtime.from_kubeconfig(namespace="ci") as rt:
    build = rt.setup_build(spec)
    rt.assemble_build(build)
    for step in spec.steps:
        rt.run_container(build, step.name)
        for line in rt.tail_container(build, step.name):
            print(line.decode())
        result = rt.wait_container(build, step.name)
    rt.remove_build(build)
```

Each sync :class:`Runtime` owns one event loop, run in one thread by an anyio blocking
portal from ``__enter__`` to ``__exit__``; the async runtime lives entirely on that
loop, and every method here is one call through the portal. Exceptions come through
unchanged (same types, same objects). Async iterators (``tail_container``,
``events()``) become plain iterators: a task on the loop pumps items into a thread-safe
queue, so a reader pays no round trip per item; an iterator left early (``break``,
``close()``, or garbage collection) stops its pump at once, and leaving the ``with``
block stops every pump still running, after which an iterator yields what it had
already received and ends.

A cluster object (for example :class:`buildruntime.testing.FakeCluster`) binds to the
event loop of its first use, which for this facade is the portal's loop: use it only
through the sync runtime that was given it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import Future
from contextlib import ExitStack
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, Unpack

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from buildruntime import runtime as _async
from buildruntime.build import Build as AsyncBuild
from buildruntime.build_view import StepView
from buildruntime.cluster.port import JSON, Cluster
from buildruntime.events import BuildEvent
from buildruntime.results import StepResult
from buildruntime.settings import RuntimeOptions, RuntimeSettings, resolve
from buildruntime.spec import BuildSpec

__all__ = ["Build", "Runtime", "SyncIterator"]

T = TypeVar("T")

_HIGH_WATER = 10_000
"""A pump pauses once this many items wait unread in its queue..."""
_LOW_WATER = 1_000
"""...and resumes once the reader brings them down to this many."""


class _End:
    """The last item a pump queues: how the async iterator ended."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class _Pump(Generic[T]):
    """Moves the items of an async iterator, on the portal's loop, into a thread-safe
    queue. It holds no reference to its :class:`SyncIterator`, so an abandoned iterator
    is collected and stops its pump."""

    def __init__(self, owner: Runtime, source: AsyncIterator[T]) -> None:
        self.portal = owner._require_portal()
        self.loop_thread = owner._loop_thread
        self.pumps = owner._pumps
        self.queue: queue.SimpleQueue[T | _End] = queue.SimpleQueue()
        self.done = threading.Event()
        self.stopping = False
        self.resume: anyio.Event | None = None
        self.resume_requested = False
        self.scope: anyio.CancelScope | None = None
        self.pumps.add(self)
        self.future: Future[None] = self.portal.start_task_soon(self.run, source)

    async def run(self, source: AsyncIterator[T]) -> None:
        ending = _End(None)
        try:
            with anyio.CancelScope() as scope:
                self.scope = scope
                if self.stopping:
                    scope.cancel()
                async for item in source:
                    self.queue.put(item)
                    if self.queue.qsize() >= _HIGH_WATER:
                        await self._wait_for_reader()
        except Exception as error:
            ending = _End(error)
        finally:
            try:
                closer = getattr(source, "aclose", None)
                if closer is not None:
                    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                        await closer()
            finally:
                self.queue.put(ending)
                self.done.set()
                self.pumps.discard(self)

    async def _wait_for_reader(self) -> None:
        self.resume_requested = False
        self.resume = anyio.Event()
        # Check again once the event is visible, so a reader that drained the queue in
        # between is not missed.
        if self.queue.qsize() >= _HIGH_WATER:
            await self.resume.wait()
        self.resume = None

    def after_read(self) -> None:
        """Called by the reader after each item: resume a paused pump once drained."""
        resume = self.resume
        if (
            resume is not None
            and not self.resume_requested
            and self.queue.qsize() <= _LOW_WATER
            and not self.done.is_set()
        ):
            self.resume_requested = True
            with contextlib.suppress(RuntimeError):
                self.portal.start_task_soon(_set_event, resume)

    def stop(self, *, wait: bool) -> None:
        """Cancel the pump (idempotent); with ``wait``, until it has ended."""
        self.stopping = True
        if self.done.is_set():
            return
        if threading.get_ident() == self.loop_thread:
            # Collected on the loop's own thread: cancel, but never block the loop.
            if self.scope is not None:
                self.scope.cancel()
            return
        try:
            self.portal.call(self._cancel)
        except RuntimeError:
            return  # the loop is gone, and the pump with it
        if wait:
            self.done.wait()

    def _cancel(self) -> None:
        if self.scope is not None:
            self.scope.cancel()
        # A pump that has not started yet sees ``stopping`` and cancels itself.


async def _set_event(event: anyio.Event) -> None:
    event.set()


class SyncIterator(Iterator[T], Generic[T]):
    """A plain iterator over an async iterator that lives on a portal's event loop.

    Also a context manager; ``close()`` stops it early (so does dropping it). Errors
    raised by the async iterator are raised here, unchanged.
    """

    def __init__(self, owner: Runtime, source: AsyncIterator[T]) -> None:
        self._finished = False
        self._pump = _Pump(owner, source)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._pump.queue.get()
        if isinstance(item, _End):
            self._finished = True
            if item.error is not None:
                raise item.error
            raise StopIteration
        self._pump.after_read()
        return item

    def close(self) -> None:
        """Stop following the async iterator and release it. Idempotent."""
        if not self._finished:
            self._finished = True
            self._pump.stop(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        pump = getattr(self, "_pump", None)
        if pump is not None and not getattr(self, "_finished", True):
            with contextlib.suppress(Exception):
                pump.stop(wait=False)


class Build:
    """The blocking counterpart of :class:`buildruntime.Build`, from ``setup_build``."""

    def __init__(self, runtime: Runtime, build: AsyncBuild) -> None:
        self._runtime = runtime
        self.async_build = build

    @property
    def build_id(self) -> str:
        return self.async_build.build_id

    @property
    def namespace(self) -> str:
        return self.async_build.namespace

    @property
    def pod_name(self) -> str:
        return self.async_build.pod_name

    @property
    def pod_manifest(self) -> JSON:
        return self.async_build.pod_manifest

    @property
    def spec(self) -> BuildSpec:
        return self.async_build.spec

    def events(self) -> SyncIterator[BuildEvent]:
        """The build's domain events from its first, until the build is removed."""
        return self._runtime._iterate(self.async_build.events)

    def step_states(self, step: str) -> SyncIterator[StepView]:
        """The step container's state stream (see :meth:`buildruntime.Build.step_states`)."""
        return self._runtime._iterate(lambda: self.async_build.step_states(step))

    def __repr__(self) -> str:
        return f"<sync Build {self.build_id} in {self.namespace}>"


class Runtime:
    """A :class:`buildruntime.Runtime` behind a blocking API. Use it as a context manager.

    Takes the same arguments as the async runtime, plus ``backend`` (``"asyncio"`` or
    ``"trio"``) for the portal's event loop. Settings are checked here, as the async
    runtime checks them; the async runtime itself is built on that loop when the
    ``with`` block is entered (a kubeconfig is loaded then).
    """

    def __init__(
        self,
        cluster: Cluster,
        namespace: str = "default",
        settings: RuntimeSettings | None = None,
        *,
        owns_cluster: bool = False,
        backend: str = "asyncio",
        **options: Unpack[RuntimeOptions],
    ) -> None:
        resolved = resolve(settings, options)
        self._init_with(
            lambda: _async.Runtime(cluster, namespace, resolved, owns_cluster=owns_cluster),
            namespace,
            backend,
        )

    @classmethod
    def from_kubeconfig(
        cls,
        path: str | None = None,
        context: str | None = None,
        namespace: str = "default",
        settings: RuntimeSettings | None = None,
        *,
        backend: str = "asyncio",
        **options: Unpack[RuntimeOptions],
    ) -> Runtime:
        """A runtime for the cluster a kubeconfig names (loaded on ``__enter__``)."""
        resolved = resolve(settings, options)
        rt = cls.__new__(cls)
        rt._init_with(
            lambda: _async.Runtime.from_kubeconfig(path, context, namespace, resolved),
            namespace,
            backend,
        )
        return rt

    @classmethod
    def in_cluster(
        cls,
        namespace: str = "default",
        settings: RuntimeSettings | None = None,
        *,
        backend: str = "asyncio",
        **options: Unpack[RuntimeOptions],
    ) -> Runtime:
        """A runtime for the cluster this process runs in (loaded on ``__enter__``)."""
        resolved = resolve(settings, options)
        rt = cls.__new__(cls)
        rt._init_with(lambda: _async.Runtime.in_cluster(namespace, resolved), namespace, backend)
        return rt

    def _init_with(
        self, factory: Callable[[], _async.Runtime], namespace: str, backend: str
    ) -> None:
        self._factory = factory
        self._backend = backend
        self._stack: ExitStack | None = None
        self._portal: BlockingPortal | None = None
        self._runtime: _async.Runtime | None = None
        self._loop_thread: int | None = None
        self._pumps: set[_Pump[Any]] = set()
        self.namespace = namespace

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("this Runtime is already entered")
        stack = ExitStack()
        try:
            portal = stack.enter_context(start_blocking_portal(self._backend))
            self._portal = portal
            self._loop_thread = portal.call(threading.get_ident)
            # Exits run in reverse: the async runtime first (it removes what is left
            # and closes every stream), then the pumps still running, then the loop.
            stack.callback(self._stop_pumps)
            runtime = portal.call(self._factory)
            stack.enter_context(portal.wrap_async_context_manager(runtime))
            self._runtime = runtime
        except BaseException:
            self._forget()
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        try:
            return stack.__exit__(exc_type, exc, tb)
        finally:
            self._forget()

    def _forget(self) -> None:
        self._portal = None
        self._runtime = None
        self._loop_thread = None

    def close(self) -> None:
        """Leave the runtime (as ``__exit__`` does): remove what is left, stop the loop."""
        self.__exit__(None, None, None)

    def _stop_pumps(self) -> None:
        for pump in list(self._pumps):
            pump.stop(wait=True)

    def _require_portal(self) -> BlockingPortal:
        if self._portal is None:
            raise RuntimeError("use the Runtime as a context manager: with Runtime(...) as rt")
        return self._portal

    @property
    def runtime(self) -> _async.Runtime:
        """The async runtime behind this facade (it lives on the portal's loop)."""
        if self._runtime is None:
            raise RuntimeError("use the Runtime as a context manager: with Runtime(...) as rt")
        return self._runtime

    @property
    def portal(self) -> BlockingPortal:
        """The portal running the async runtime's event loop."""
        return self._require_portal()

    # -- calling through the portal ----------------------------------------------------

    def _call(self, func: Callable[[], Coroutine[Any, Any, T]]) -> T:
        future = self._require_portal().start_task_soon(func)
        try:
            result: T = future.result()
        except BaseException:
            # A KeyboardInterrupt (or the like) raised in this thread while waiting: stop
            # the call on the loop too rather than leave it running unattended.
            if not future.done():
                future.cancel()
            raise
        return result

    def _iterate(self, make: Callable[[], AsyncIterator[T]]) -> SyncIterator[T]:
        # The async iterator is made on the loop; an error in the call raises here.
        source = self._require_portal().call(make)
        return SyncIterator(self, source)

    @staticmethod
    def _unwrap(build: Build | AsyncBuild) -> AsyncBuild:
        return build.async_build if isinstance(build, Build) else build

    # -- the step APIs ------------------------------------------------------------------

    def setup_build(self, spec: BuildSpec) -> Build:
        """Validate ``spec`` and render its pod. Sends nothing."""
        rt = self.runtime
        return Build(self, self._call(lambda: rt.setup_build(spec)))

    def assemble_build(self, build: Build | AsyncBuild) -> None:
        """Start the build's watches, create its pod, wait until it is scheduled."""
        rt, b = self.runtime, self._unwrap(build)
        self._call(lambda: rt.assemble_build(b))

    def attach_build(self, build_id: str) -> Build:
        """Adopt a build pod still in the namespace (from a worker that died or released
        it); its handle, its steps in the state the cache shows."""
        rt = self.runtime
        return Build(self, self._call(lambda: rt.attach_build(build_id)))

    def release_builds(self) -> list[str]:
        """Leave every build to another worker: stop watching, delete nothing."""
        return self._call(self.runtime.release_builds)

    def run_container(self, build: Build | AsyncBuild, step: str) -> None:
        """Swap the step's placeholder for the step image; return once it runs or ran."""
        rt, b = self.runtime, self._unwrap(build)
        self._call(lambda: rt.run_container(b, step))

    def tail_container(self, build: Build | AsyncBuild, step: str) -> SyncIterator[bytes]:
        """The step's log lines (bytes, newline stripped) from the first to the last."""
        rt, b = self.runtime, self._unwrap(build)
        return self._iterate(lambda: rt.tail_container(b, step))

    def wait_container(self, build: Build | AsyncBuild, step: str) -> StepResult:
        """Wait until the step's container terminated and return its result."""
        rt, b = self.runtime, self._unwrap(build)
        return self._call(lambda: rt.wait_container(b, step))

    def inspect_container(self, build: Build | AsyncBuild, step: str) -> StepResult:
        """The step's current state, from the cache. Sends nothing."""
        rt, b = self.runtime, self._unwrap(build)
        return self._call(lambda: rt.inspect_container(b, step))

    def remove_build(self, build: Build | AsyncBuild) -> None:
        """Let every capture drain, delete the pod, wait until the deletion is seen."""
        rt, b = self.runtime, self._unwrap(build)
        self._call(lambda: rt.remove_build(b))

    def events(self) -> SyncIterator[BuildEvent]:
        """Domain events of every build of this runtime, from now on."""
        return self._iterate(self.runtime.events)
