"""What the user of the API observes of a build, and the proof that a fault happened.

:func:`run_build` is the one way both suites run a pipeline as a CI executor does
(assemble, then each step run → tail → wait, then remove), optionally with a fault
acting alongside; it returns what was :class:`Observed`.

:class:`PortRecorder` is the proof a fault test needs that its fault took effect: it
sits between the runtime and the port (FakeCluster or a real cluster alike), passes
everything through unchanged, and notes each 410 Gone (:class:`ExpiredError`, HTTP 410
or an ERROR event in the stream), each request that could not be made and each stream
that broke (:class:`UnavailableError`: a refused, reset or cut connection), and, when
asked, every watch event it delivered (to count duplicates and reorders).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import anyio

from buildruntime import Build, BuildEvent, BuildSpec, Runtime, StepResult
from buildruntime.cluster.port import JSON, Cluster, ExpiredError, Resource, UnavailableError
from buildruntime.cluster.watch_events import WatchDecoder, decode_typed_event
from buildruntime.testing.wrapper import ClusterWrapper

BUILD_BOUND = 180.0
"""Seconds a build may take before :func:`run_build` fails it as a hang."""

During = Callable[[Build, dict[str, list[bytes]]], Awaitable[None]]


@dataclass
class Observed:
    """What the user of the API saw of one build."""

    build: Build
    lines: dict[str, list[bytes]] = field(default_factory=dict)
    """Each step's lines as its tail delivered them."""
    results: dict[str, StepResult] = field(default_factory=dict)
    """Each step's result as wait_container returned it."""
    events: list[BuildEvent] = field(default_factory=list)
    """The build's events from its first to its deletion (once it was removed)."""

    def outcome(self) -> dict[str, tuple[list[bytes], int | None]]:
        """Each step's lines and exit code."""
        return {name: (self.lines[name], r.exit_code) for name, r in self.results.items()}


async def run_build(
    rt: Runtime,
    spec: BuildSpec | Build,
    *,
    during: During | None = None,
    ongoing: bool = False,
    remove: bool = True,
    bound: float | None = BUILD_BOUND,
) -> Observed:
    """Run a pipeline as a CI executor does: set up (unless given a build already set
    up), assemble, then each step in order run → tail → wait, then remove (in
    ``finally``, unless ``remove=False``).

    ``during(build, lines)`` acts alongside from the end of the assemble, given the
    lines delivered so far as they arrive; it must end by itself by the time the last
    step has (it is waited for), unless ``ongoing``: then it is cancelled once the last
    step has ended. ``bound`` seconds on the whole: a hang fails instead of stalling.
    """
    with anyio.fail_after(bound) if bound is not None else contextlib.nullcontext():
        build = spec if isinstance(spec, Build) else await rt.setup_build(spec)
        seen = Observed(build)
        try:
            await rt.assemble_build(build)
            async with anyio.create_task_group() as alongside:
                if during is not None:
                    alongside.start_soon(during, build, seen.lines)
                for step in build.spec.steps:
                    await rt.run_container(build, step.name)
                    delivered = seen.lines[step.name] = []
                    async for line in rt.tail_container(build, step.name):
                        delivered.append(line)
                    seen.results[step.name] = await rt.wait_container(build, step.name)
                if ongoing:
                    alongside.cancel_scope.cancel()
        finally:
            if remove:
                await rt.remove_build(build)
        if remove:
            # The build's events replay from the first and end with its deletion.
            seen.events = [event async for event in build.events()]
    return seen


class Failed(NamedTuple):
    """One error the port raised to the runtime."""

    verb: str
    """``list``, ``watch``, ``log``, ``create``, ``patch`` or ``delete``."""
    resource: str
    where: str
    """``request`` (the call or the opening of its stream failed) or ``stream`` (an
    open stream broke)."""
    message: str


class Delivered(NamedTuple):
    """One watch event as the runtime received it."""

    watch: int
    """Which watch (numbered from 0 in the order they were opened)."""
    resource: str
    type: str
    uid: str
    resource_version: str


class PortRecorder(ClusterWrapper):
    """Delegates to ``inner``; records what went wrong between the runtime and it.

    ``expired``: each 410 Gone; ``unavailable``: each refused request and broken stream;
    with ``deliveries=True``, ``delivered``: every watch event passed on (the watches
    then read plain JSON from ``inner`` and decode it with the runtime's decoder, as a
    server's line would be)."""

    def __init__(self, inner: Cluster, *, deliveries: bool = False) -> None:
        super().__init__(inner)
        self.expired: list[Failed] = []
        self.unavailable: list[Failed] = []
        self.delivered: list[Delivered] = []
        self._deliveries = deliveries
        self._watches = 0

    # ------------------------------------------------------------ queries
    def expired_on(self, resource: str) -> list[str]:
        """The messages of the 410s on watches and lists of ``resource``."""
        return [f.message for f in self.expired if f.resource == resource]

    def refused(self) -> list[Failed]:
        """Requests that could not be made (a connection refused or reset at once)."""
        return [f for f in self.unavailable if f.where == "request"]

    def broken(self, verb: str | None = None) -> list[Failed]:
        """Open streams (``watch`` or ``log``) that broke."""
        return [f for f in self.unavailable if f.where == "stream" and verb in (None, f.verb)]

    def duplicates(self, resource: str) -> int:
        """Watch events of ``resource`` delivered again on the same watch."""
        seen: set[Delivered] = set()
        again = 0
        for event in self.delivered:
            if event.resource == resource and event.type != "BOOKMARK":
                again += event in seen
                seen.add(event)
        return again

    def reorders(self, resource: str) -> int:
        """Watch events of ``resource`` delivered after a newer version of the same
        object on the same watch."""
        newest: dict[tuple[int, str], int] = {}
        late = 0
        for event in self.delivered:
            if event.resource != resource or event.type == "BOOKMARK":
                continue
            key, version = (event.watch, event.uid), int(event.resource_version)
            if version < newest.get(key, 0):
                late += 1
            newest[key] = max(version, newest.get(key, 0))
        return late

    # ------------------------------------------------------------ the port
    async def list(self, resource: Resource, namespace: str, **kwargs: Any) -> JSON:
        async with self._noting("list", resource, "request"):
            return await self.inner.list(resource, namespace, **kwargs)

    async def create_pod(self, namespace: str, manifest: JSON) -> JSON:
        async with self._noting("create", "pods", "request"):
            return await self.inner.create_pod(namespace, manifest)

    async def patch_pod(self, namespace: str, name: str, patch: JSON) -> JSON:
        async with self._noting("patch", "pods", "request"):
            return await self.inner.patch_pod(namespace, name, patch)

    async def delete_pod(
        self, namespace: str, name: str, *, grace_period_seconds: int | None = None
    ) -> None:
        async with self._noting("delete", "pods", "request"):
            await self.inner.delete_pod(namespace, name, grace_period_seconds=grace_period_seconds)

    def watch(
        self, resource: Resource, namespace: str, **kwargs: Any
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        return self._watch(resource, namespace, **kwargs)

    def stream_logs(
        self, namespace: str, pod: str, container: str, **kwargs: Any
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._stream(
            "log", "pods", self.inner.stream_logs(namespace, pod, container, **kwargs)
        )

    @asynccontextmanager
    async def _watch(
        self, resource: Resource, namespace: str, **kwargs: Any
    ) -> AsyncIterator[AsyncIterator[Any]]:
        decoder: WatchDecoder[Any] | None = None
        if self._deliveries:
            decoder = kwargs.pop("decoder", None)
        number = self._watches
        self._watches += 1
        async with self._stream(
            "watch", resource, self.inner.watch(resource, namespace, **kwargs)
        ) as events:
            if self._deliveries:
                yield self._delivering(number, resource, events, decoder)
            else:
                yield events

    async def _delivering(
        self,
        number: int,
        resource: str,
        events: AsyncIterator[JSON],
        decoder: WatchDecoder[Any] | None,
    ) -> AsyncIterator[Any]:
        async for event in events:
            metadata = (event.get("object") or {}).get("metadata") or {}
            self.delivered.append(
                Delivered(
                    number,
                    resource,
                    str(event.get("type")),
                    str(metadata.get("uid", "")),
                    str(metadata.get("resourceVersion", "0")),
                )
            )
            if decoder is None:
                yield event
            else:
                decoded = decode_typed_event(json.dumps(event).encode(), decoder)
                if decoded is not None:
                    yield decoded

    @asynccontextmanager
    async def _stream(
        self, verb: str, resource: str, opening: AbstractAsyncContextManager[AsyncIterator[Any]]
    ) -> AsyncIterator[AsyncIterator[Any]]:
        async with self._noting(verb, resource, "request"):
            entered = await opening.__aenter__()
        try:
            # Iterated in the caller's block: a break or an ERROR event surfaces here.
            async with self._noting(verb, resource, "stream"):
                yield entered
        except BaseException as error:
            if not await opening.__aexit__(type(error), error, error.__traceback__):
                raise
        else:
            await opening.__aexit__(None, None, None)

    @asynccontextmanager
    async def _noting(self, verb: str, resource: str, where: str) -> AsyncIterator[None]:
        try:
            yield
        except ExpiredError as error:
            self.expired.append(Failed(verb, resource, where, error.message))
            raise
        except UnavailableError as error:
            self.unavailable.append(Failed(verb, resource, where, str(error)))
            raise
