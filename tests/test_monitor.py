"""The namespace monitor on FakeCluster: every build's events from two watches in all."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest

from buildruntime import BuildEvent, BuildSpec, Runtime
from buildruntime.cluster.port import JSON, Request, Resource
from buildruntime.monitor import NamespaceMonitor
from buildruntime.testing import FakeCluster
from integration.observe import run_build

from .conftest import FAST_RECOVERY, step

pytestmark = pytest.mark.anyio


class Counting:
    """A cluster port that counts the requests of whoever uses it (the monitor only)."""

    def __init__(self, inner: FakeCluster) -> None:
        self.inner = inner
        self.requests: list[Request] = []

    async def list(self, resource: Resource, namespace: str, **kwargs: Any) -> JSON:
        self.requests.append(Request("list", resource))
        return await self.inner.list(resource, namespace, **kwargs)

    def watch(
        self, resource: Resource, namespace: str, **kwargs: Any
    ) -> AbstractAsyncContextManager[AsyncIterator[JSON]]:
        self.requests.append(Request("watch", resource))
        return self.inner.watch(resource, namespace, **kwargs)

    async def create_pod(self, namespace: str, manifest: JSON) -> JSON:
        raise AssertionError("the monitor never creates")

    async def patch_pod(self, namespace: str, name: str, patch: JSON) -> JSON:
        raise AssertionError("the monitor never patches")

    async def delete_pod(
        self, namespace: str, name: str, *, grace_period_seconds: int | None = None
    ) -> None:
        raise AssertionError("the monitor never deletes")

    def stream_logs(
        self, namespace: str, pod: str, container: str, **kwargs: Any
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        raise AssertionError("the monitor never reads logs")

    def counts(self) -> Counter[tuple[str, str]]:
        return Counter((r.verb, r.resource) for r in self.requests)


def two_builds(prefix: str, *, pause: float = 0.0) -> list[BuildSpec]:
    sleep = f"sleep {pause}" if pause else "true"
    return [
        BuildSpec(
            build_id=f"{prefix}-ok",
            steps=[step("one", sleep, "echo a"), step("two", sleep, "echo b")],
        ),
        BuildSpec(
            build_id=f"{prefix}-bad",
            steps=[step("one", sleep, "echo c"), step("two", sleep, "exit 3")],
        ),
    ]


EXPECTED = {
    "ok": {
        (None, "scheduled"),
        ("one", "started"),
        ("one", "completed"),
        ("two", "started"),
        ("two", "completed"),
        (None, "deleted"),
    },
    "bad": {
        (None, "scheduled"),
        ("one", "started"),
        ("one", "completed"),
        ("two", "started"),
        ("two", "failed"),
        (None, "deleted"),
    },
}


async def settled(counting: Counting) -> Counter[tuple[str, str]]:
    """The request counts once they stop changing (the reflectors have recovered)."""
    counts = counting.counts()
    with anyio.fail_after(5):
        while True:
            await anyio.sleep(0.6)
            if counting.counts() == counts:
                return counts
            counts = counting.counts()


class Collector:
    """Reads the monitor's events as the CLI prints them: one JSON object per line."""

    def __init__(self, monitor: NamespaceMonitor) -> None:
        self.monitor = monitor
        self.lines: list[str] = []
        self.deleted: set[str] = set()
        self._changed = anyio.Event()

    async def run(self) -> None:
        async for event in self.monitor.events():
            self.lines.append(json.dumps(event.to_json()))
            if event.kind == "deleted":
                self.deleted.add(event.build_id)
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_deleted(self, build_ids: set[str]) -> None:
        await self.wait_for(lambda: build_ids <= self.deleted)

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        with anyio.fail_after(10):
            while not condition():
                await self._changed.wait()

    def all_saw(self, build_ids: list[str], item: tuple[str | None, str]) -> bool:
        return all(item in self.seen(build_id) for build_id in build_ids)

    def seen(self, build_id: str) -> list[tuple[str | None, str]]:
        events = [json.loads(line) for line in self.lines]
        return [(e["step"], e["kind"]) for e in events if e["build_id"] == build_id]


def lifecycle(seen: list[tuple[str | None, str]]) -> list[tuple[str | None, str]]:
    return [item for item in seen if item[1] not in ("pulling", "pulled", "warning")]


def check_events(collector: Collector, specs: list[BuildSpec]) -> None:
    for spec in specs:
        seen = collector.seen(spec.build_id)
        steps = lifecycle(seen)
        assert len(steps) == len(set(steps)), f"duplicates for {spec.build_id}: {seen}"
        assert set(steps) == EXPECTED[spec.build_id.rsplit("-", 1)[1]], spec.build_id
        assert steps[0] == (None, "scheduled")
        assert steps[-1] == (None, "deleted")
        for name in ("one", "two"):
            kinds = [kind for s, kind in steps if s == name]
            assert kinds[0] == "started", (spec.build_id, name, kinds)
            # The kubelet's Pulled event for the step image, even when it came before
            # the pod watch delivered the patch that names the image.
            assert seen.count((name, "pulled")) == 1, (spec.build_id, name, seen)


def test_json_lines_carry_the_contract_fields() -> None:
    from datetime import UTC, datetime

    event = BuildEvent("b-1", "test", "completed", datetime(2024, 1, 2, tzinfo=UTC), "Completed")
    fields = json.loads(json.dumps(event.to_json()))
    assert {"build_id", "step", "kind", "reason", "exit_code", "message", "at"} <= set(fields)


async def test_monitor_sees_every_build_with_one_list_and_one_watch_per_resource(
    cluster: FakeCluster, runtime: Runtime
) -> None:
    counting = Counting(cluster)
    specs = two_builds("mon")
    async with NamespaceMonitor(counting, "ci", settings=FAST_RECOVERY) as monitor:  # type: ignore[arg-type]
        await monitor.wait_synced()
        collector = Collector(monitor)
        async with anyio.create_task_group() as tg:
            tg.start_soon(collector.run)
            outcomes = []
            async with anyio.create_task_group() as builds:
                for spec in specs:

                    async def one(spec: BuildSpec = spec) -> None:
                        outcomes.append(await run_build(runtime, spec))

                    builds.start_soon(one)
            await collector.wait_deleted({s.build_id for s in specs})
            tg.cancel_scope.cancel()
    check_events(collector, specs)
    # The build's own view (its fan-out) and the monitor's agree.
    for outcome in outcomes:
        mine = [(e.step, e.kind) async for e in outcome.build.events()]
        assert lifecycle(collector.seen(outcome.build.build_id)) == lifecycle(mine)
    assert counting.counts() == Counter(
        {("list", "pods"): 1, ("watch", "pods"): 1, ("list", "events"): 1, ("watch", "events"): 1}
    )
    failed = [json.loads(line) for line in collector.lines if '"failed"' in line]
    assert [(f["build_id"], f["step"], f["exit_code"], f["failure"]) for f in failed] == [
        ("mon-bad", "two", 3, "APP_ERROR")
    ]


async def test_dropped_watches_and_expiry_lose_nothing(
    cluster: FakeCluster, runtime: Runtime
) -> None:
    counting = Counting(cluster)
    specs = two_builds("flt", pause=0.3)
    async with NamespaceMonitor(counting, "ci", settings=FAST_RECOVERY) as monitor:  # type: ignore[arg-type]
        await monitor.wait_synced()
        collector = Collector(monitor)
        async with anyio.create_task_group() as tg:
            tg.start_soon(collector.run)

            ids = [spec.build_id for spec in specs]

            async def faults() -> None:
                # Each while both builds run a step, so transitions happen meanwhile.
                await collector.wait_for(lambda: collector.all_saw(ids, ("one", "started")))
                cluster.faults.drop_watches()
                await collector.wait_for(lambda: collector.all_saw(ids, ("two", "started")))
                cluster.faults.expire()

            async with anyio.create_task_group() as builds:
                builds.start_soon(faults)
                for spec in specs:
                    builds.start_soon(run_build, runtime, spec)
            await collector.wait_deleted({s.build_id for s in specs})
            after_faults = await settled(counting)
            # Another build after the faults costs the monitor nothing more.
            extra = BuildSpec(build_id="flt-after", steps=[step("one", "echo z")])
            await run_build(runtime, extra)
            await collector.wait_deleted({"flt-after"})
            tg.cancel_scope.cancel()
    check_events(collector, specs)
    assert counting.counts() == after_faults
    for resource in ("pods", "events"):
        lists, watches = after_faults["list", resource], after_faults["watch", resource]
        # The first list and watch, then re-watches and relists after the two faults only.
        assert 2 <= lists <= 4, after_faults
        assert 2 <= watches <= 5, after_faults
    assert set(after_faults) <= {
        ("list", "pods"),
        ("watch", "pods"),
        ("list", "events"),
        ("watch", "events"),
    }


async def test_pods_that_are_not_builds_are_ignored(cluster: FakeCluster, runtime: Runtime) -> None:
    other = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "not-a-build",
            "labels": {"app.kubernetes.io/managed-by": "buildruntime"},
        },
        "spec": {"containers": [{"name": "c", "image": "busybox", "args": ["true"]}]},
    }
    async with NamespaceMonitor(cluster, "ci", settings=FAST_RECOVERY) as monitor:
        await monitor.wait_synced()
        collector = Collector(monitor)
        async with anyio.create_task_group() as tg:
            tg.start_soon(collector.run)
            await cluster.create_pod("ci", other)
            spec = BuildSpec(build_id="real-1", steps=[step("one", "echo a")])
            await run_build(runtime, spec)
            await collector.wait_deleted({"real-1"})
            tg.cancel_scope.cancel()
        await cluster.delete_pod("ci", "not-a-build")
    assert {json.loads(line)["build_id"] for line in collector.lines} == {"real-1"}
    assert all(b.view.build_id == "real-1" for b in monitor.fanouts.values())
