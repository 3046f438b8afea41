"""A worker's Lease (held, renewed, deleted on exit, owner of its pods) and the reaper
(which Leases it deletes, and which it never does), on FakeCluster, whose garbage
collector deletes the pods of a deleted Lease as Kubernetes' does."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from buildruntime import BuildSpec, Runtime, RuntimeSettings, SpecError
from buildruntime.cluster.port import JSON
from buildruntime.reaper import Reaper
from buildruntime.testing import FakeCluster
from buildruntime.testing.wrapper import ClusterWrapper
from buildruntime.workers import lease_name, micro_time, render_lease

from .conftest import FAST_RECOVERY, step

pytestmark = pytest.mark.anyio


def _lease(worker: str, *, renewed_ago: float, duration: float = 10) -> JSON:
    lease = render_lease(worker, "ci", duration)
    lease["spec"]["renewTime"] = micro_time(datetime.now(UTC) - timedelta(seconds=renewed_ago))
    return lease


# -- settings ---------------------------------------------------------------------------


def test_the_default_worker_id_is_a_label_made_of_host_and_process() -> None:
    worker_id = RuntimeSettings().worker_id
    assert worker_id.endswith(f"-{os.getpid()}")
    assert len(worker_id) <= 63
    assert lease_name(worker_id) == f"buildruntime-worker-{worker_id}"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"worker_id": "Worker_1"}, "worker_id"),
        ({"worker_id": "w" * 64}, "worker_id"),
        ({"lease_duration": 0}, "lease_duration"),
        ({"lease_duration": 10, "lease_renew_interval": 10}, "lease_renew_interval"),
        ({"reap_interval": -1}, "reap_interval"),
        ({"reap_grace": -1}, "reap_grace"),
    ],
)
def test_bad_lease_settings_name_their_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        RuntimeSettings(**options)
    assert caught.value.field == field


def test_the_reaper_can_run_only_at_start() -> None:
    assert RuntimeSettings(reap_interval=None).reap_interval is None


# -- the worker's Lease -----------------------------------------------------------------


async def test_a_runtime_holds_its_lease_owns_its_pods_by_it_and_deletes_it_on_exit(
    cluster: FakeCluster,
) -> None:
    name = lease_name("w1")
    async with Runtime(cluster, "ci", worker_id="w1", reflector=FAST_RECOVERY) as rt:
        lease = cluster.lease("ci", name)
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == "w1"
        assert lease["spec"]["leaseDurationSeconds"] == 30
        assert lease["metadata"]["labels"] == {
            "app.kubernetes.io/managed-by": "buildruntime",
            "buildruntime.io/worker": "w1",
        }
        build = await rt.setup_build(BuildSpec(build_id="own-1", steps=[step("s", "true")]))
        await rt.assemble_build(build)
        pod = cluster._server.copy("pods", "ci", build.pod_name)
        assert pod is not None
        assert pod["metadata"]["labels"]["buildruntime.io/worker"] == "w1"
        assert pod["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "name": name,
                "uid": lease["metadata"]["uid"],
            }
        ]
    assert cluster.lease("ci", name) is None


async def test_the_lease_is_renewed_and_renewed_again_at_once_after_an_outage(
    cluster: FakeCluster,
) -> None:
    name = lease_name("w2")

    def renewed() -> str:
        lease = cluster.lease("ci", name)
        assert lease is not None
        return str(lease["spec"]["renewTime"])

    async with Runtime(cluster, "ci", worker_id="w2", lease_duration=10, lease_renew_interval=4):
        first = renewed()
        # The renewal due at 4 s falls in an outage that ends at 5 s.
        cluster.faults.outage(5.0)
        outage_ends = anyio.current_time() + 5.0
        with anyio.fail_after(10):
            while renewed() == first:
                await anyio.sleep(0.05)
        # Renewed within one retry interval of the outage's end, not at the next
        # interval (8 s).
        assert outage_ends <= anyio.current_time() <= outage_ends + 1.5
        attempts = [r for r in cluster.requests if r == ("patch", "leases")]
        assert len(attempts) >= 2  # at least one refused attempt, then the renewal


async def test_a_worker_restarted_under_the_same_id_takes_its_lease_over(
    cluster: FakeCluster,
) -> None:
    old = await cluster.create_lease("ci", _lease("w3", renewed_ago=5))
    async with Runtime(cluster, "ci", worker_id="w3"):
        lease = cluster.lease("ci", lease_name("w3"))
        assert lease is not None
        assert lease["metadata"]["uid"] == old["metadata"]["uid"]
        assert lease["spec"]["renewTime"] > old["spec"]["renewTime"]


# -- the garbage collector --------------------------------------------------------------


async def test_deleting_a_lease_deletes_the_pods_it_owns_and_their_secrets(
    cluster: FakeCluster,
) -> None:
    async with Runtime(cluster, "ci", worker_id="gone", reflector=FAST_RECOVERY) as rt:
        spec = BuildSpec(
            build_id="owned-1",
            steps=[step("s", "sleep 30", secrets=["token"])],
            secrets={"token": "a-secret-value"},
        )
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        await rt.run_container(build, "s")
        await cluster.delete_lease("ci", lease_name("gone"))
        with anyio.fail_after(10):
            while cluster._server.copy("pods", "ci", build.pod_name) is not None:
                await anyio.sleep(0.05)
        assert cluster.secret("ci", f"{build.pod_name}-secrets") is None
        # The runtime sees its build's pod deleted, as it would any deletion.
        with pytest.raises(Exception, match="deleted"):
            await rt.wait_container(build, "s")


async def test_a_pod_owned_by_a_lease_that_does_not_exist_is_collected(
    cluster: FakeCluster,
) -> None:
    owned = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": "x", "uid": "u"}
    await cluster.create_pod(
        "ci",
        {
            "metadata": {"name": "orphan", "ownerReferences": [owned]},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        },
    )
    await cluster.create_pod(
        "ci",
        {"metadata": {"name": "free"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
    )
    with anyio.fail_after(10):
        while cluster._server.copy("pods", "ci", "orphan") is not None:
            await anyio.sleep(0.05)
    assert cluster._server.copy("pods", "ci", "free") is not None


# -- the reaper -------------------------------------------------------------------------


async def test_the_reaper_deletes_only_stale_leases_of_ours(cluster: FakeCluster) -> None:
    await cluster.create_lease("ci", _lease("dead", renewed_ago=3600))
    await cluster.create_lease("ci", _lease("alive", renewed_ago=1))
    foreign = _lease("foreign", renewed_ago=3600)
    foreign["metadata"]["labels"] = {"app": "other"}
    await cluster.create_lease("ci", foreign)
    await cluster.create_lease("ci", _lease("me", renewed_ago=3600))
    reaper = Reaper(cluster, "ci", grace=5, own_lease=lease_name("me"))
    reaped = await reaper.reap_once()
    assert [(r.name, r.worker_id) for r in reaped] == [(lease_name("dead"), "dead")]
    assert reaped[0].unrenewed_for >= 3600
    for alive in ("alive", "foreign", "me"):
        assert cluster.lease("ci", lease_name(alive)) is not None
    assert cluster.lease("ci", lease_name("dead")) is None


async def test_a_lease_renewed_after_the_reaper_judged_it_is_not_deleted(
    cluster: FakeCluster,
) -> None:
    """The holder renews between the reaper's list and its delete: the delete's
    resourceVersion precondition fails and the Lease stays."""

    class RenewsAfterList(ClusterWrapper):
        async def list_leases(self, namespace: str, **kwargs: Any) -> JSON:
            listed: JSON = await self.inner.list_leases(namespace, **kwargs)
            await self.inner.patch_lease(
                namespace, lease_name("slow"), {"spec": {"renewTime": micro_time()}}
            )
            return listed

    await cluster.create_lease("ci", _lease("slow", renewed_ago=3600))
    reaper = Reaper(RenewsAfterList(cluster), "ci", grace=5)  # type: ignore[arg-type]
    assert await reaper.reap_once() == []
    assert cluster.lease("ci", lease_name("slow")) is not None
    assert cluster.requests.count(("delete", "leases")) == 1
    # Seen renewed since, it is young again: not even tried the next time.
    assert await reaper.reap_once() == []
    assert cluster.requests.count(("delete", "leases")) == 1


async def test_staleness_is_judged_by_the_reapers_own_clock_once_seen(
    cluster: FakeCluster,
) -> None:
    """A holder whose clock runs an hour ahead (its renewTime in the future): the
    Lease is reaped once it has not changed for its duration plus the grace by the
    reaper's clock, not before and not never."""
    ahead = _lease("ahead", renewed_ago=-3600, duration=1)
    await cluster.create_lease("ci", ahead)
    reaper = Reaper(cluster, "ci", grace=0.5)
    assert await reaper.reap_once() == []
    await anyio.sleep(1.0)
    assert await reaper.reap_once() == []  # 1 s unchanged: not past 1 + 0.5
    await anyio.sleep(0.7)
    reaped = await reaper.reap_once()
    assert [r.worker_id for r in reaped] == ["ahead"]
    assert 1.5 < reaped[0].unrenewed_for < 3


async def test_a_renewal_resets_the_reapers_clock(cluster: FakeCluster) -> None:
    await cluster.create_lease("ci", _lease("renewing", renewed_ago=0, duration=1))
    reaper = Reaper(cluster, "ci", grace=0.5)
    for _ in range(4):  # 2 s in all, longer than 1 + 0.5, but renewed every 0.5 s
        assert await reaper.reap_once() == []
        await anyio.sleep(0.5)
        await cluster.patch_lease(
            "ci", lease_name("renewing"), {"spec": {"renewTime": micro_time()}}
        )
    assert await reaper.reap_once() == []


async def test_time_the_reaper_could_not_see_counts_against_no_lease(
    cluster: FakeCluster,
) -> None:
    """An outage of the reaper's own (its renewal failed): every Lease gets a whole
    duration + grace from when the reaper sees the API server again."""
    await cluster.create_lease("ci", _lease("quiet", renewed_ago=0, duration=1))
    reaper = Reaper(cluster, "ci", grace=0.5)
    assert await reaper.reap_once() == []
    reaper.lost_sight()
    await anyio.sleep(2.0)  # unchanged for longer than 1.5 s, but unseen
    assert await reaper.reap_once() == []
    await anyio.sleep(1.0)
    assert await reaper.reap_once() == []
    await anyio.sleep(0.7)
    assert [r.worker_id for r in await reaper.reap_once()] == ["quiet"]


async def test_a_runtime_reaps_on_start_and_every_interval(cluster: FakeCluster) -> None:
    await cluster.create_lease("ci", _lease("dead-1", renewed_ago=3600))
    async with Runtime(cluster, "ci", worker_id="reaper", reap_grace=0.5, reap_interval=0.2):
        with anyio.fail_after(5):
            while cluster.lease("ci", lease_name("dead-1")) is not None:
                await anyio.sleep(0.05)
        # One that dies while the runtime runs: unrenewed for 1 + 0.5 s.
        await cluster.create_lease("ci", _lease("dead-2", renewed_ago=0, duration=1))
        started = anyio.current_time()
        with anyio.fail_after(5):
            while cluster.lease("ci", lease_name("dead-2")) is not None:
                await anyio.sleep(0.05)
        assert anyio.current_time() - started >= 1.5
        assert cluster.lease("ci", lease_name("reaper")) is not None
