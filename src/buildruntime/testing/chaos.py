"""A cluster port wrapper that misbehaves the ways real servers and proxies do.

It wraps any :class:`~buildruntime.cluster.port.Cluster` (FakeCluster or a real one), so
the same misbehaviour can be tested against both: duplicated and reordered watch events,
an injected sidecar container with its own Warning events, a watch that goes silent.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio

from buildruntime.cluster.port import JSON, Cluster, Resource
from buildruntime.cluster.watch_events import WatchDecoder, decode_typed_event
from buildruntime.testing.wrapper import ClusterWrapper


class ChaosCluster(ClusterWrapper):
    """Delegates to ``inner``, but every watch delivers each event twice, swaps
    neighbouring events, and (optionally) shows an injected sidecar container in every
    pod, with events about it."""

    def __init__(
        self,
        inner: Cluster,
        *,
        duplicate: bool = True,
        reorder: bool = True,
        sidecar: str | None = None,
        stall_pods_watch_after: int | None = None,
    ) -> None:
        super().__init__(inner)
        self.duplicate = duplicate
        self.reorder = reorder
        self.sidecar = sidecar
        self.stall_after = stall_pods_watch_after
        self.stalls = 0

    async def list(self, resource: Resource, namespace: str, **kwargs: Any) -> JSON:
        listing = await self.inner.list(resource, namespace, **kwargs)
        listing["items"] = [self._mangle(resource, item) for item in listing.get("items") or ()]
        return listing

    def watch(
        self, resource: Resource, namespace: str, **kwargs: Any
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        return self._watch(resource, namespace, **kwargs)

    @asynccontextmanager
    async def _watch(
        self, resource: Resource, namespace: str, **kwargs: Any
    ) -> AsyncIterator[AsyncIterator[Any]]:
        # The mangling works on dicts: take them from the inner watch and hand each
        # mangled event to the caller's decoder as the JSON line a server would send.
        decoder: WatchDecoder[Any] | None = kwargs.pop("decoder", None)
        async with self.inner.watch(resource, namespace, **kwargs) as events:
            mangled = self._events(resource, events)
            yield mangled if decoder is None else self._decoded(mangled, decoder)

    @staticmethod
    async def _decoded(
        events: AsyncIterator[JSON], decoder: WatchDecoder[Any]
    ) -> AsyncIterator[Any]:
        async for event in events:
            decoded = decode_typed_event(json.dumps(event).encode(), decoder)
            if decoded is not None:
                yield decoded

    async def _events(self, resource: Resource, events: AsyncIterator[JSON]) -> AsyncIterator[JSON]:
        held: JSON | None = None
        delivered = 0
        async for event in events:
            delivered += 1
            if resource == "pods" and self.stall_after is not None and delivered > self.stall_after:
                # Once: the connection goes silent without breaking.
                self.stall_after = None
                self.stalls += 1
                await anyio.sleep_forever()
            if event.get("type") != "BOOKMARK" and event.get("object"):
                event = {**event, "object": self._mangle(resource, event["object"])}
            if self.sidecar and resource == "events" and event.get("type") == "ADDED":
                yield self._sidecar_event(event)
            if self.reorder and held is None and event.get("type") == "MODIFIED":
                held = event  # deliver after the next one
                continue
            yield event
            if held is not None:
                yield held
                if self.duplicate:
                    yield copy.deepcopy(held)
                held = None
            if self.duplicate:
                yield copy.deepcopy(event)
        if held is not None:
            yield held

    def _mangle(self, resource: Resource, obj: JSON) -> JSON:
        if not self.sidecar or resource != "pods":
            return obj
        obj = copy.deepcopy(obj)
        spec = obj.setdefault("spec", {})
        spec.setdefault("containers", []).append({"name": self.sidecar, "image": "proxy:1"})
        status = obj.setdefault("status", {})
        statuses = status.get("containerStatuses")
        if statuses is not None:
            statuses.append(
                {
                    "name": self.sidecar,
                    "image": "docker.io/library/proxy:1",
                    "imageID": "",
                    "restartCount": 3,
                    "ready": False,
                    "state": {"terminated": {"exitCode": 1, "reason": "Error"}},
                }
            )
        return obj

    def _sidecar_event(self, event: JSON) -> JSON:
        """A Warning about the sidecar, as its restarts would produce."""
        obj = copy.deepcopy(event["object"])
        obj["metadata"]["uid"] = obj["metadata"].get("uid", "") + "-sidecar"
        obj["metadata"]["name"] = obj["metadata"].get("name", "") + "-sidecar"
        obj["involvedObject"]["fieldPath"] = f"spec.containers{{{self.sidecar}}}"
        obj.update(type="Warning", reason="BackOff", message="Back-off restarting failed container")
        return {"type": "ADDED", "object": obj}
