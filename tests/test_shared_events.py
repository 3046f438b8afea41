"""The runtime's shared watch of the namespace's pod Events, split by pod uid."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from buildruntime import BuildSpec
from buildruntime.images import DEFAULT_PAUSE_IMAGE
from buildruntime.informer.shared_events import SharedEventWatch
from buildruntime.informer.snapshots import EventSnapshot
from buildruntime.spec import render_pod
from buildruntime.testing import FakeCluster

from .conftest import step

pytestmark = pytest.mark.anyio


async def _create(cluster: FakeCluster, build_id: str) -> tuple[str, str]:
    spec = BuildSpec(build_id=build_id, steps=[step("s", "true")])
    created = await cluster.create_pod(
        "ci", render_pod(spec, namespace="ci", pause_image=DEFAULT_PAUSE_IMAGE)
    )
    return created["metadata"]["uid"], created["metadata"]["resourceVersion"]


async def _listed_reasons(cluster: FakeCluster, uid: str) -> list[str]:
    listed = await cluster.list("events", "ci", field_selector=f"involvedObject.uid={uid}")
    items = sorted(listed["items"], key=lambda e: int(e["metadata"]["resourceVersion"]))
    return [item["reason"] for item in items]


async def _until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not predicate():
            await anyio.sleep(0.01)


def _collect(into: list[str]) -> Callable[[str, EventSnapshot], None]:
    return lambda kind, event: into.append(event.reason_text or "")


async def test_events_that_came_before_their_pod_was_followed_are_handed_over_in_order(
    cluster: FakeCluster,
) -> None:
    # Under load the scheduler's Scheduled can reach the shared watch before the call
    # that created the pod has returned: those Events wait for the build that follows.
    watch = SharedEventWatch(cluster, "ci")
    first: list[str] = []
    second: list[str] = []
    async with anyio.create_task_group() as tg:
        watch.open(tg)
        first_uid, first_rv = await _create(cluster, "shared-first")
        watch.follow(
            first_uid, created_at=first_rv, replace=lambda items: None, apply=_collect(first)
        )
        second_uid, _ = await _create(cluster, "shared-second")
        await _until(lambda: "Started" in first)
        early = await _listed_reasons(cluster, second_uid)
        assert "Scheduled" in early
        # The first pod's deletion comes after every Event listed for the second pod:
        # once the watch delivered it, it delivered those too, to nobody yet.
        await cluster.delete_pod("ci", "shared-first")
        await _until(lambda: "Killing" in first)
        watch.follow(
            second_uid, created_at=None, replace=lambda items: None, apply=_collect(second)
        )
        # Handed over at once, before any further watch event.
        assert second[: len(early)] == early
        assert "Killing" not in second
        tg.cancel_scope.cancel()
        watch.close()


async def test_a_relist_gives_each_follower_its_own_pods_events(cluster: FakeCluster) -> None:
    watch = SharedEventWatch(cluster, "ci")
    replaced: dict[str, list[list[str]]] = {"a": [], "b": []}
    async with anyio.create_task_group() as tg:
        watch.open(tg)
        uids: dict[str, str] = {}
        for name in ("a", "b"):
            uid, rv = await _create(cluster, f"relist-{name}")
            uids[name] = uid
            watch.follow(
                uid,
                created_at=rv,
                replace=lambda items, name=name: replaced[name].append(  # type: ignore[misc]
                    [e.reason_text or "" for e in items]
                ),
                apply=lambda kind, event: None,
            )
        await _until(lambda: watch.reflector is not None and watch.reflector.synced.is_set())
        with anyio.fail_after(10):  # every Event the pods will have, before the relist
            for uid in uids.values():
                while "Started" not in await _listed_reasons(cluster, uid):
                    await anyio.sleep(0.01)
        cluster.faults.expire()  # 410 Gone: the watch lists again
        # (The watch started with no list: its first replace, if any, was empty.)
        await _until(lambda: all(any(lists) for lists in replaced.values()))
        for name, uid in uids.items():
            assert replaced[name][-1] == await _listed_reasons(cluster, uid)
            assert "Scheduled" in replaced[name][-1]
        tg.cancel_scope.cancel()
        watch.close()


def _events_watches(cluster: FakeCluster) -> int:
    return sum(1 for r in cluster.requests if (r.verb, r.resource) == ("watch", "events"))


@pytest.mark.parametrize("announced", [True, False], ids=["expected", "unannounced"])
async def test_a_pod_created_earlier_but_followed_later_gets_its_events(
    cluster: FakeCluster, announced: bool
) -> None:
    # Creates run concurrently: the pod followed first may be the newer one. A build
    # announces its create (expect) so that the watch starts early enough; without
    # that, the watch is started again from the older pod's creation.
    watch = SharedEventWatch(cluster, "ci")
    older: list[str] = []
    newer: list[str] = []
    async with anyio.create_task_group() as tg:
        watch.open(tg)
        seen = (await cluster.list("pods", "ci"))["metadata"]["resourceVersion"]
        expected = watch.expect(seen) if announced else None
        older_uid, older_rv = await _create(cluster, "created-first")
        with anyio.fail_after(10):
            while "Started" not in await _listed_reasons(cluster, older_uid):
                await anyio.sleep(0.01)
        newer_uid, newer_rv = await _create(cluster, "created-second")
        watch.follow(
            newer_uid, created_at=newer_rv, replace=lambda items: None, apply=_collect(newer)
        )
        await _until(lambda: "Started" in newer)
        watch.follow(
            older_uid,
            created_at=older_rv,
            replace=lambda items: None,
            apply=_collect(older),
            expected=expected,
        )
        await _until(lambda: "Started" in older)
        assert older == await _listed_reasons(cluster, older_uid)
        assert _events_watches(cluster) == (1 if announced else 2)
        tg.cancel_scope.cancel()
        watch.close()


async def test_the_watch_stops_when_no_pod_is_followed_or_expected(cluster: FakeCluster) -> None:
    watch = SharedEventWatch(cluster, "ci")
    async with anyio.create_task_group() as tg:
        watch.open(tg)
        uid, rv = await _create(cluster, "idle-after")
        following = watch.follow(uid, created_at=rv, replace=lambda items: None, apply=_collect([]))
        await _until(lambda: cluster.open_watches == 1)
        pending = watch.expect(rv)
        following.close()
        await anyio.sleep(0.1)
        assert cluster.open_watches == 1  # a create is on its way
        assert pending is not None
        pending.cancel()
        await _until(lambda: cluster.open_watches == 0)
        tg.cancel_scope.cancel()
        watch.close()
