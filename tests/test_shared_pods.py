"""The runtime's shared watch of its pods, split by pod name."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from buildruntime import BuildSpec
from buildruntime.images import DEFAULT_PAUSE_IMAGE
from buildruntime.informer.shared_pods import SharedPodWatch
from buildruntime.informer.snapshots import PodSnapshot
from buildruntime.labels import managed_selector
from buildruntime.spec import render_pod
from buildruntime.testing import FakeCluster

from .conftest import step

pytestmark = pytest.mark.anyio


async def _create(cluster: FakeCluster, build_id: str) -> None:
    spec = BuildSpec(build_id=build_id, steps=[step("s", "true")])
    manifest = render_pod(spec, namespace="ci", pause_image=DEFAULT_PAUSE_IMAGE)
    await cluster.create_pod("ci", manifest)


async def _until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not predicate():
            await anyio.sleep(0.01)


class Seen:
    """What one follower was given."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, str]] = []
        self.replaced: list[list[str]] = []

    def replace(self, items: list[PodSnapshot]) -> None:
        self.replaced.append([pod.name for pod in items])

    def apply(self, kind: str, pod: PodSnapshot) -> None:
        self.applied.append((kind, pod.name))


def _watches(cluster: FakeCluster) -> int:
    return sum(1 for r in cluster.requests if (r.verb, r.resource) == ("watch", "pods"))


def _lists(cluster: FakeCluster) -> int:
    return sum(1 for r in cluster.requests if (r.verb, r.resource) == ("list", "pods"))


async def test_each_follower_gets_only_its_pod_and_a_relist_gives_each_its_part(
    cluster: FakeCluster,
) -> None:
    watch = SharedPodWatch(cluster, "ci", managed_selector())
    seen = {"one": Seen(), "two": Seen()}
    async with anyio.create_task_group() as tg:
        watch.open(tg)
        followings = [
            watch.follow(name, replace=seen[name].replace, apply=seen[name].apply) for name in seen
        ]
        await _until(lambda: all(f.synced.is_set() for f in followings))
        # Listed before either pod existed: each follower's part was empty.
        assert [s.replaced for s in seen.values()] == [[[]], [[]]]
        for name in seen:
            await _create(cluster, name)
        await _until(lambda: all(("ADDED", n) in s.applied for n, s in seen.items()))
        await cluster.delete_pod("ci", "two", grace_period_seconds=0)
        await _until(lambda: ("DELETED", "two") in seen["two"].applied)
        for name, each in seen.items():
            assert {pod for _, pod in each.applied} == {name}
        cluster.faults.expire()  # 410 Gone: the watch lists again
        await _until(lambda: all(len(s.replaced) == 2 for s in seen.values()))
        # Each its own part of the new list; the deleted pod's follower an empty one.
        assert seen["one"].replaced[-1] == ["one"]
        assert seen["two"].replaced[-1] == []
        # One watch for both, and after the compaction the re-watch that got 410, the
        # relist and the watch after it.
        assert (_lists(cluster), _watches(cluster)) == (2, 3)
        tg.cancel_scope.cancel()
        watch.close()


async def test_a_follower_of_a_pod_the_watch_already_has_is_given_it_at_once(
    cluster: FakeCluster,
) -> None:
    # A pod left over from an earlier build of the same id, still there: the build's
    # own list would have shown it.
    watch = SharedPodWatch(cluster, "ci", managed_selector())
    first, later = Seen(), Seen()
    async with anyio.create_task_group() as tg:
        watch.open(tg)
        following = watch.follow("first", replace=first.replace, apply=first.apply)
        await _until(following.synced.is_set)
        await _create(cluster, "leftover")
        await _create(cluster, "first")
        await _until(lambda: ("ADDED", "first") in first.applied)  # "leftover" came before
        watch.follow("leftover", replace=later.replace, apply=later.apply)
        assert later.replaced == [["leftover"]]  # given during follow(), not later
        assert ("ADDED", "leftover") not in first.applied
        assert _watches(cluster) == 1
        tg.cancel_scope.cancel()
        watch.close()


async def test_the_watch_stops_with_its_last_follower_and_a_stale_close_stops_nothing(
    cluster: FakeCluster,
) -> None:
    watch = SharedPodWatch(cluster, "ci", managed_selector())
    async with anyio.create_task_group() as tg:
        watch.open(tg)
        old = watch.follow("p", replace=Seen().replace, apply=Seen().apply)
        await _until(lambda: cluster.open_watches == 1)
        old.close()
        await _until(lambda: cluster.open_watches == 0)
        # The same name followed again (a build id used again): the earlier following,
        # closed a second time, must not take the new follower's pod away.
        again = Seen()
        new = watch.follow("p", replace=again.replace, apply=again.apply)
        await _until(lambda: cluster.open_watches == 1)
        old.close()
        await _create(cluster, "p")
        await _until(lambda: ("ADDED", "p") in again.applied)
        assert cluster.open_watches == 1
        new.close()
        await _until(lambda: cluster.open_watches == 0)
        assert (_lists(cluster), _watches(cluster)) == (2, 2)
        tg.cancel_scope.cancel()
        watch.close()
