"""FakeCluster through the Cluster port: what a client of a real API server would see."""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from buildruntime.cluster.port import (
    ApiError,
    ConflictError,
    ExpiredError,
    NotFoundError,
    UnavailableError,
)
from buildruntime.images import DEFAULT_PAUSE_IMAGE
from buildruntime.informer.decoders import POD_SNAPSHOTS
from buildruntime.testing import FakeCluster, Request

JSON = dict[str, Any]
NS = "ci"
PAUSE = DEFAULT_PAUSE_IMAGE
TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z"

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
async def cluster() -> AsyncIterator[FakeCluster]:
    async with FakeCluster(images={"busybox", "alpine:3.20"}, bookmark_interval=0.05) as fake:
        yield fake


def manifest(
    name: str,
    *containers: JSON,
    labels: dict[str, str] | None = None,
    restart_policy: str = "Never",
) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": "build"}},
        "spec": {
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 5,
            "containers": list(containers) or [{"name": "step", "image": PAUSE}],
        },
    }


def step(name: str, script: str, image: str = PAUSE, **extra: Any) -> JSON:
    return {"name": name, "image": image, "args": ["/bin/sh", "-c", script], **extra}


def container(pod: JSON, name: str) -> JSON:
    """A container's status, or {} when the pod has none for it yet."""
    for status in pod.get("status", {}).get("containerStatuses", []):
        if status["name"] == name:
            found: JSON = status
            return found
    return {}


def state_of(pod: JSON, name: str) -> str | None:
    status = container(pod, name)
    return next(iter(status["state"])) if status else None


def waiting_reason(pod: JSON, name: str) -> str | None:
    reason: str | None = container(pod, name).get("state", {}).get("waiting", {}).get("reason")
    return reason


async def wait_until(
    cluster: FakeCluster, name: str, predicate: Callable[[JSON], bool], within: float = 5.0
) -> JSON:
    """Wait (without API requests) until the newest version of a pod satisfies predicate."""
    with anyio.fail_after(within):
        while True:
            versions = cluster.history(NS, name)
            if versions and predicate(versions[-1]):
                return versions[-1]
            await anyio.sleep(0.005)


async def events_of(cluster: FakeCluster, pod: str) -> list[JSON]:
    listed = await cluster.list("events", NS, field_selector=f"involvedObject.name={pod}")
    items: list[JSON] = listed["items"]
    return items


async def wait_for_event(
    cluster: FakeCluster, pod: str, reason: str, min_count: int = 1, within: float = 5.0
) -> JSON:
    with anyio.fail_after(within):
        while True:
            for event in await events_of(cluster, pod):
                if event["reason"] == reason and event["count"] >= min_count:
                    return event
            await anyio.sleep(0.02)


async def read_logs(cluster: FakeCluster, pod: str, name: str, **options: Any) -> bytes:
    async with cluster.stream_logs(NS, pod, name, **options) as stream:
        return b"".join([chunk async for chunk in stream])


async def run_swap(
    cluster: FakeCluster, name: str, script: str, *others: JSON, **extra: Any
) -> JSON:
    """Create a pod whose step runs the placeholder, then swap busybox in."""
    await cluster.create_pod(NS, manifest(name, step("step", script, **extra), *others))
    await wait_until(cluster, name, lambda p: state_of(p, "step") == "running")
    patch = {"spec": {"containers": [{"name": "step", "image": "busybox"}]}}
    await cluster.patch_pod(NS, name, patch)
    return await wait_until(
        cluster,
        name,
        lambda p: (
            container(p, "step").get("image") == "docker.io/library/busybox:latest"
            and state_of(p, "step") == "terminated"
        ),
    )


# --------------------------------------------------------------------- API server


async def test_create_returns_a_defaulted_pending_pod(cluster: FakeCluster) -> None:
    created = await cluster.create_pod(NS, manifest("p1"))
    meta, spec = created["metadata"], created["spec"]
    assert meta["namespace"] == NS
    assert re.fullmatch(r"[0-9a-f-]{36}", meta["uid"])
    assert int(meta["resourceVersion"]) > 0
    assert meta["managedFields"][0]["fieldsType"] == "FieldsV1"
    assert created["status"]["phase"] == "Pending"
    assert created["status"]["conditions"] == []
    assert spec["schedulerName"] == "default-scheduler"
    assert spec["serviceAccountName"] == "default"
    assert spec["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    created["metadata"]["labels"]["mutated"] = "yes"  # a copy: the store is unaffected
    assert "mutated" not in cluster.history(NS, "p1")[0]["metadata"]["labels"]


async def test_create_validation_conflict_and_admission(cluster: FakeCluster) -> None:
    with pytest.raises(ApiError) as missing:
        await cluster.create_pod(NS, {"metadata": {}, "spec": {"containers": []}})
    assert (missing.value.status, missing.value.reason) == (422, "Invalid")
    assert "metadata.name: Required value" in missing.value.message
    with pytest.raises(ApiError) as bad:
        await cluster.create_pod(NS, manifest("Bad_Name"))
    assert bad.value.status == 422
    assert bad.value.message.startswith('Pod "Bad_Name" is invalid: metadata.name: Invalid value')
    with pytest.raises(ApiError, match=r"spec\.containers\[0\]\.image: Required value"):
        await cluster.create_pod(NS, manifest("p", {"name": "step"}))
    await cluster.create_pod(NS, manifest("p"))
    with pytest.raises(ConflictError) as conflict:
        await cluster.create_pod(NS, manifest("p"))
    assert conflict.value.status == 409
    assert conflict.value.message == 'pods "p" already exists'
    cluster.faults.deny_create("builds are frozen")
    with pytest.raises(ApiError) as denied:
        await cluster.create_pod(NS, manifest("q"))
    assert (denied.value.status, denied.value.reason) == (400, "BadRequest")
    assert denied.value.message == (
        'admission webhook "deny.buildruntime.test" denied the request: builds are frozen'
    )
    cluster.faults.clear()
    await cluster.create_pod(NS, manifest("q"))


async def test_patch_semantics(cluster: FakeCluster) -> None:
    await cluster.create_pod(NS, manifest("p", labels={"app": "build", "tier": "x"}))
    patched = await cluster.patch_pod(
        NS, "p", {"metadata": {"labels": {"tier": None, "new": "1"}, "annotations": {"a": "b"}}}
    )
    assert patched["metadata"]["labels"] == {"app": "build", "new": "1"}
    assert patched["metadata"]["annotations"] == {"a": "b"}
    with pytest.raises(ApiError) as forbidden:
        await cluster.patch_pod(
            NS, "p", {"spec": {"containers": [{"name": "step", "args": ["x"]}]}}
        )
    assert forbidden.value.status == 422
    assert forbidden.value.message.startswith(
        'Pod "p" is invalid: spec: Forbidden: pod updates may not change fields other than '
        "`spec.containers[*].image`"
    )
    with pytest.raises(ApiError, match="Forbidden"):
        await cluster.patch_pod(
            NS, "p", {"spec": {"containers": [{"name": "extra", "image": "x"}]}}
        )
    with pytest.raises(NotFoundError, match='pods "nope" not found'):
        await cluster.patch_pod(NS, "nope", {"metadata": {"labels": {"a": "b"}}})
    same = await cluster.patch_pod(NS, "p", {"metadata": {"labels": {"new": "1"}}})
    assert same["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]


async def test_list_watch_and_resource_version_order(cluster: FakeCluster) -> None:
    await cluster.create_pod(NS, manifest("a"))
    await cluster.create_pod(NS, manifest("b"))
    listed = await cluster.list("pods", NS)
    assert listed["kind"] == "PodList"
    assert [p["metadata"]["name"] for p in listed["items"]] == ["a", "b"]
    list_rv = int(listed["metadata"]["resourceVersion"])
    assert all(int(p["metadata"]["resourceVersion"]) <= list_rv for p in listed["items"])
    seen: list[int] = []
    async with cluster.watch("pods", NS, resource_version=str(list_rv)) as watch:
        await cluster.patch_pod(NS, "a", {"metadata": {"labels": {"x": "1"}}})
        async for event in watch:
            if event["type"] == "BOOKMARK":
                continue
            seen.append(int(event["object"]["metadata"]["resourceVersion"]))
            if event["object"]["metadata"].get("labels", {}).get("x") == "1":
                break
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)
    assert seen[0] > list_rv


async def test_watch_replays_from_a_resource_version(cluster: FakeCluster) -> None:
    start = (await cluster.list("pods", NS))["metadata"]["resourceVersion"]
    await cluster.create_pod(NS, manifest("r", step("step", "echo hi")))
    await wait_until(cluster, "r", lambda p: p["status"]["phase"] == "Running")
    await cluster.patch_pod(NS, "r", {"metadata": {"labels": {"v": "2"}}})
    truth = cluster.history(NS, "r")
    delivered: list[JSON] = []
    async with cluster.watch("pods", NS, resource_version=start, allow_bookmarks=False) as watch:
        async for event in watch:
            delivered.append(event["object"])
            if (
                event["object"]["metadata"]["resourceVersion"]
                == truth[-1]["metadata"]["resourceVersion"]
            ):
                break
    assert delivered == truth
    # From the middle: exactly the versions after it.
    middle = truth[1]["metadata"]["resourceVersion"]
    async with cluster.watch("pods", NS, resource_version=middle, allow_bookmarks=False) as watch:
        rest = [(await anext(watch))["object"] for _ in truth[2:]]
    assert rest == truth[2:]


async def test_watch_from_zero_starts_with_synthetic_added(cluster: FakeCluster) -> None:
    await cluster.create_pod(NS, manifest("z1"))
    await cluster.create_pod(NS, manifest("z2"))
    async with cluster.watch("pods", NS, resource_version="0", allow_bookmarks=False) as watch:
        first = [await anext(watch), await anext(watch)]
    assert [e["type"] for e in first] == ["ADDED", "ADDED"]
    assert {e["object"]["metadata"]["name"] for e in first} == {"z1", "z2"}


async def test_timeout_seconds_ends_the_watch(cluster: FakeCluster) -> None:
    rv = (await cluster.list("pods", NS))["metadata"]["resourceVersion"]
    started = anyio.current_time()
    with anyio.fail_after(3):
        async with cluster.watch(
            "pods", NS, resource_version=rv, timeout_seconds=1, allow_bookmarks=False
        ) as watch:
            assert [e async for e in watch] == []
    assert anyio.current_time() - started >= 1


async def test_expire_gives_410_and_relist_then_watch_works(cluster: FakeCluster) -> None:
    await cluster.create_pod(NS, manifest("e"))
    old_rv = (await cluster.list("pods", NS))["metadata"]["resourceVersion"]
    async with cluster.watch("pods", NS, resource_version=old_rv) as watch:
        cluster.faults.expire()
        with anyio.fail_after(1):
            assert [e async for e in watch if e["type"] != "BOOKMARK"] == []  # ends normally
    async with cluster.watch("pods", NS, resource_version=old_rv) as watch:
        with pytest.raises(ExpiredError) as gone:
            await anext(watch)
    assert gone.value.status == 410
    relisted = await cluster.list("pods", NS)
    assert int(relisted["metadata"]["resourceVersion"]) > int(old_rv)
    async with cluster.watch(
        "pods", NS, resource_version=relisted["metadata"]["resourceVersion"], allow_bookmarks=False
    ) as watch:
        await cluster.patch_pod(NS, "e", {"metadata": {"labels": {"after": "410"}}})
        event = await anext(watch)
    assert event["type"] == "MODIFIED"
    assert event["object"]["metadata"]["labels"]["after"] == "410"


async def test_a_version_older_than_the_watch_cache_is_gone() -> None:
    async with FakeCluster(images={"busybox"}, watch_cache_size=5) as fake:
        await fake.create_pod(NS, manifest("old"))
        first = (await fake.list("pods", NS))["metadata"]["resourceVersion"]
        for index in range(20):
            await fake.patch_pod(NS, "old", {"metadata": {"labels": {"n": str(index)}}})
        async with fake.watch("pods", NS, resource_version=first) as watch:
            with pytest.raises(ExpiredError, match="too old resource version"):
                await anext(watch)
        recent = fake.history(NS, "old")[-3]["metadata"]["resourceVersion"]
        async with fake.watch("pods", NS, resource_version=recent) as watch:
            assert (await anext(watch))["type"] == "MODIFIED"


async def test_bookmarks_carry_the_current_resource_version(cluster: FakeCluster) -> None:
    rv = (await cluster.list("pods", NS))["metadata"]["resourceVersion"]
    with anyio.fail_after(2):
        async with cluster.watch("pods", NS, resource_version=rv) as watch:
            event = await anext(watch)
        async with cluster.watch("pods", NS, resource_version=rv, decoder=POD_SNAPSHOTS) as typed:
            decoded = await anext(typed)
    # As the API server writes it: the Pod's zero value, nil slices and times as null.
    assert event == {
        "type": "BOOKMARK",
        "object": {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": rv, "creationTimestamp": None},
            "spec": {"containers": None},
            "status": {},
        },
    }
    assert (decoded.type, decoded.object.resource_version) == ("BOOKMARK", rv)


async def test_events_watches_get_no_bookmarks(cluster: FakeCluster) -> None:
    # Events are not in the API server's watch cache: a quiet events watch says nothing.
    rv = (await cluster.list("events", NS))["metadata"]["resourceVersion"]
    got: list[object] = []
    async with cluster.watch("events", NS, resource_version=rv) as watch:
        with anyio.move_on_after(0.5):  # ten bookmark intervals of this fixture
            got.append(await anext(watch))
    assert got == []


async def test_selectors_on_list_and_watch(cluster: FakeCluster) -> None:
    await cluster.create_pod(NS, manifest("s1", labels={"app": "build", "id": "1"}))
    await cluster.create_pod(NS, manifest("s2", labels={"app": "build", "id": "2"}))
    await cluster.create_pod(NS, manifest("s3", labels={"app": "other"}))

    async def names(selector: str) -> list[str]:
        listed = await cluster.list("pods", NS, label_selector=selector)
        return [p["metadata"]["name"] for p in listed["items"]]

    assert await names("app=build") == ["s1", "s2"]
    assert await names("app==build,id=2") == ["s2"]
    assert await names("app!=build") == ["s3"]
    assert await names("id") == ["s1", "s2"]
    assert await names("!id") == ["s3"]
    assert await names("id in (1,3)") == ["s1"]
    assert await names("id notin (1)") == ["s2", "s3"]
    by_field = await cluster.list("pods", NS, field_selector="metadata.name=s3")
    assert [p["metadata"]["name"] for p in by_field["items"]] == ["s3"]
    with pytest.raises(ApiError) as unsupported:
        await cluster.list("pods", NS, field_selector="spec.hostname=x")
    assert unsupported.value.status == 400
    assert unsupported.value.message == "field label not supported: spec.hostname"

    rv = (await cluster.list("pods", NS))["metadata"]["resourceVersion"]
    async with cluster.watch(
        "pods", NS, resource_version=rv, label_selector="app=build,id=1", allow_bookmarks=False
    ) as watch:
        await cluster.patch_pod(NS, "s2", {"metadata": {"labels": {"touched": "y"}}})
        await cluster.patch_pod(NS, "s1", {"metadata": {"labels": {"id": "9"}}})
        left = await anext(watch)
        await cluster.patch_pod(NS, "s1", {"metadata": {"labels": {"id": "1"}}})
        back = await anext(watch)
    assert left["type"] == "DELETED"
    assert left["object"]["metadata"]["labels"]["id"] == "1"  # the last matching content
    assert back["type"] == "ADDED"
    assert int(back["object"]["metadata"]["resourceVersion"]) > int(
        left["object"]["metadata"]["resourceVersion"]
    )


async def test_watch_propagation_is_immediate(cluster: FakeCluster) -> None:
    await cluster.create_pod(NS, manifest("fast"))
    await wait_until(cluster, "fast", lambda p: p["status"]["phase"] == "Running")
    rv = (await cluster.list("pods", NS))["metadata"]["resourceVersion"]
    delays: list[float] = []
    received = anyio.Event()
    sent_at = 0.0

    async def consume() -> None:
        async with cluster.watch("pods", NS, resource_version=rv, allow_bookmarks=False) as watch:
            async for _ in watch:
                delays.append(time.perf_counter() - sent_at)
                if len(delays) == 20:
                    received.set()
                    return

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await anyio.sleep(0.01)
        for index in range(20):
            await anyio.sleep(0.002)
            sent_at = time.perf_counter()
            await cluster.patch_pod(NS, "fast", {"metadata": {"labels": {"n": str(index)}}})
        with anyio.fail_after(2):
            await received.wait()
    delays.sort()
    assert delays[len(delays) // 2] < 0.001


# ------------------------------------------------------------- scheduler + kubelet


async def test_scheduling_and_startup_events(cluster: FakeCluster) -> None:
    await cluster.create_pod(NS, manifest("s", {"name": "step", "image": PAUSE}))
    pod = await wait_until(cluster, "s", lambda p: p["status"]["phase"] == "Running")
    assert pod["spec"]["nodeName"] == "fake-node"
    types = [c["type"] for c in pod["status"]["conditions"]]
    assert types == [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]
    assert all(c["status"] == "True" for c in pod["status"]["conditions"])
    status = container(pod, "step")
    assert status
    assert re.fullmatch(r"containerd://[0-9a-f]{64}", status["containerID"])
    assert status["imageID"].startswith("registry.k8s.io/pause@sha256:")
    assert status["ready"] is True
    assert status["started"] is True
    assert pod["status"]["podIP"]
    assert pod["status"]["qosClass"] == "BestEffort"
    events = await events_of(cluster, "s")
    reasons = [(e["reason"], e["source"]["component"]) for e in events]
    assert reasons == [
        ("Scheduled", "default-scheduler"),
        ("Pulled", "kubelet"),
        ("Created", "kubelet"),
        ("Started", "kubelet"),
    ]
    scheduled = events[0]
    assert scheduled["message"] == f"Successfully assigned {NS}/s to fake-node"
    assert "fieldPath" not in scheduled["involvedObject"]
    pulled = events[1]
    assert pulled["message"] == f'Container image "{PAUSE}" already present on machine'
    assert pulled["involvedObject"]["fieldPath"] == "spec.containers{step}"
    assert pulled["involvedObject"]["uid"] == pod["metadata"]["uid"]
    assert pulled["metadata"]["name"].startswith("s.")
    by_uid = await cluster.list(
        "events",
        NS,
        field_selector=f"involvedObject.kind=Pod,involvedObject.uid={pod['metadata']['uid']},"
        "involvedObject.fieldPath=spec.containers{step}",
    )
    assert [e["reason"] for e in by_uid["items"]] == ["Pulled", "Created", "Started"]


async def test_image_swap_runs_the_step_and_keeps_its_logs(cluster: FakeCluster) -> None:
    final = await run_swap(cluster, "swap", "echo a; echo b; exit 3")
    sequence: list[tuple[str, str | None, int]] = []
    for version in cluster.history(NS, "swap"):
        status = container(version, "step")
        if not status:
            continue
        entry = (status["image"], state_of(version, "step"), status["restartCount"])
        if not sequence or sequence[-1] != entry:
            sequence.append(entry)
    busybox = "docker.io/library/busybox:latest"
    assert sequence == [
        (PAUSE, "waiting", 0),
        (PAUSE, "running", 0),
        (PAUSE, "terminated", 0),
        (busybox, "running", 1),
        (busybox, "terminated", 1),
    ]
    status = container(final, "step")
    assert status
    terminated = status["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    placeholder = status["lastState"]["terminated"]
    assert (placeholder["exitCode"], placeholder["reason"]) == (0, "Completed")
    assert final["status"]["phase"] == "Failed"
    reasons = [e["reason"] for e in await events_of(cluster, "swap")]
    assert "Killing" in reasons
    killing = next(e for e in await events_of(cluster, "swap") if e["reason"] == "Killing")
    assert killing["message"] == "Container step definition changed, will be restarted"

    raw = await read_logs(cluster, "swap", "step", timestamps=False)
    assert raw == b"a\nb\n"
    stamped = await read_logs(cluster, "swap", "step", timestamps=True)
    assert re.fullmatch(rf"{TS} a\n{TS} b\n", stamped.decode())
    follow = await read_logs(cluster, "swap", "step", follow=True, timestamps=True)
    assert follow == stamped


async def test_final_line_without_newline_and_stderr(cluster: FakeCluster) -> None:
    await run_swap(cluster, "nl", "echo out; echo err >&2; sleep 0.05; printf 'last'")
    raw = await read_logs(cluster, "nl", "step", timestamps=False)
    assert sorted(raw.split(b"\n")[:2]) == [b"err", b"out"]
    assert raw.endswith(b"\nlast")
    stamped = (await read_logs(cluster, "nl", "step")).decode()
    assert re.search(rf"\n{TS} last$", stamped)


async def test_logs_stream_while_running_and_end_on_exit(cluster: FakeCluster) -> None:
    await cluster.create_pod(NS, manifest("f", step("step", "echo x")))
    await wait_until(cluster, "f", lambda p: state_of(p, "step") == "running")
    await cluster.patch_pod(
        NS, "f", {"spec": {"containers": [{"name": "step", "image": "busybox"}]}}
    )
    # Swapped in while the placeholder ran; ask again until the step image runs.
    await wait_until(
        cluster,
        "f",
        lambda p: container(p, "step").get("restartCount") == 1,
    )
    with anyio.fail_after(5):
        data = await read_logs(cluster, "f", "step", timestamps=False, follow=True)
    assert data == b"x\n"


async def test_since_time_has_one_second_granularity(cluster: FakeCluster) -> None:
    await run_swap(cluster, "since", "echo one; echo two; echo three")
    stamped = (await read_logs(cluster, "since", "step")).decode().splitlines()
    stamps = [line.split(" ", 1)[0] for line in stamped]
    second = stamps[1][:19]
    since = second + ".999999999Z"  # truncated to the second: every line of that second
    expected = [line for line, ts in zip(stamped, stamps, strict=True) if ts[:19] >= second]
    got = (await read_logs(cluster, "since", "step", since_time=since)).decode().splitlines()
    assert got == expected
    assert stamped[1] in got
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 5))
    assert await read_logs(cluster, "since", "step", since_time=later) == b""


async def test_logs_of_a_waiting_container_and_an_absent_pod(cluster: FakeCluster) -> None:
    cluster.faults.unschedulable("0/1 nodes are available: 1 Insufficient cpu.")
    await cluster.create_pod(NS, manifest("w", {"name": "step", "image": "nope"}))
    cluster.faults.clear()
    await wait_until(cluster, "w", lambda p: state_of(p, "step") == "waiting")
    with pytest.raises(ApiError) as waiting:
        await read_logs(cluster, "w", "step")
    assert waiting.value.status == 400
    assert waiting.value.message.startswith('container "step" in pod "w" is waiting to start: ')
    with pytest.raises(NotFoundError, match='pods "absent" not found'):
        await read_logs(cluster, "absent", "step")
    with pytest.raises(ApiError, match="is not valid for pod"):
        await read_logs(cluster, "w", "other")


async def test_err_image_pull_then_image_pull_backoff(cluster: FakeCluster) -> None:
    rv = (await cluster.list("events", NS))["metadata"]["resourceVersion"]
    await cluster.create_pod(NS, manifest("pull", {"name": "step", "image": "nope"}))
    first = await wait_until(
        cluster,
        "pull",
        lambda p: waiting_reason(p, "step") == "ErrImagePull",
    )
    error = container(first, "step")["state"]["waiting"]["message"]
    assert error == (
        "rpc error: code = NotFound desc = failed to pull and unpack image "
        '"docker.io/library/nope:latest": failed to resolve reference '
        '"docker.io/library/nope:latest": docker.io/library/nope:latest: not found'
    )
    backoff = await wait_until(
        cluster,
        "pull",
        lambda p: waiting_reason(p, "step") == "ImagePullBackOff",
    )
    waiting = container(backoff, "step")["state"]["waiting"]
    assert waiting["message"] == f'Back-off pulling image "nope": ErrImagePull: {error}'
    assert backoff["status"]["phase"] == "Pending"
    pulls = await wait_for_event(cluster, "pull", "Pulling", min_count=2)
    assert pulls["message"] == 'Pulling image "nope"'
    events = await events_of(cluster, "pull")
    messages = {(e["type"], e["reason"], e["message"]) for e in events}
    assert ("Warning", "Failed", f'Failed to pull image "nope": {error}') in messages
    assert ("Warning", "Failed", "Error: ErrImagePull") in messages
    assert ("Normal", "BackOff", 'Back-off pulling image "nope"') in messages
    assert ("Warning", "Failed", "Error: ImagePullBackOff") in messages
    # Aggregation: the repeated event is updated in place (MODIFIED, count + 1).
    async with cluster.watch("events", NS, resource_version=rv, allow_bookmarks=False) as watch:
        with anyio.fail_after(5):
            async for event in watch:
                obj = event["object"]
                if event["type"] == "MODIFIED" and obj["reason"] == "Pulling":
                    assert obj["count"] >= 2
                    assert obj["lastTimestamp"] >= obj["firstTimestamp"]
                    break


async def test_err_image_never_pull_and_invalid_image_name(cluster: FakeCluster) -> None:
    await cluster.create_pod(
        NS,
        manifest(
            "never",
            {"name": "step", "image": "missing:1", "imagePullPolicy": "Never"},
            {"name": "bad", "image": "Not/Valid"},
        ),
    )
    pod = await wait_until(
        cluster,
        "never",
        lambda p: all(
            waiting_reason(p, n) in ("ErrImageNeverPull", "InvalidImageName")
            for n in ("step", "bad")
        ),
    )
    never = container(pod, "step")["state"]["waiting"]
    assert never == {
        "reason": "ErrImageNeverPull",
        "message": 'Container image "missing:1" is not present with pull policy of Never',
    }
    assert container(pod, "bad")["state"]["waiting"]["reason"] == "InvalidImageName"
    event = await wait_for_event(cluster, "never", "ErrImageNeverPull")
    assert event["type"] == "Warning"
    assert event["message"] == never["message"]


async def test_pull_policy_always_pulls_a_present_image(cluster: FakeCluster) -> None:
    await cluster.create_pod(
        NS,
        manifest(
            "always",
            {"name": "step", "image": "alpine:3.20", "imagePullPolicy": "Always", "args": ["true"]},
        ),
    )
    await wait_until(cluster, "always", lambda p: state_of(p, "step") == "terminated")
    events = await events_of(cluster, "always")
    assert [e["reason"] for e in events[1:]] == ["Pulling", "Pulled", "Created", "Started"]
    assert re.fullmatch(
        r'Successfully pulled image "alpine:3\.20" in \d+ms \(\d+ms including waiting\)\. '
        r"Image size: \d+ bytes\.",
        events[2]["message"],
    )


async def test_memory_limit_gets_oom_killed(cluster: FakeCluster) -> None:
    script = "echo start; a=$(head -c 80000000 /dev/zero | tr '\\0' x); echo never; sleep 5"
    final = await run_swap(cluster, "oom", script, resources={"limits": {"memory": "32Mi"}})
    terminated = container(final, "step")["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)
    assert await read_logs(cluster, "oom", "step", timestamps=False) == b"start\n"
    assert final["status"]["qosClass"] == "Burstable"


async def test_kill_container(cluster: FakeCluster) -> None:
    await cluster.create_pod(
        NS, manifest("k", {"name": "a", "image": PAUSE}, {"name": "b", "image": PAUSE})
    )
    await wait_until(cluster, "k", lambda p: p["status"]["phase"] == "Running")
    await cluster.kill_container(NS, "k", "a")
    pod = cluster.history(NS, "k")[-1]
    terminated = container(pod, "a")["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)
    assert state_of(pod, "b") == "running"
    await cluster.kill_container(NS, "k", "b", reason="Error", exit_code=2)
    pod = await wait_until(cluster, "k", lambda p: p["status"]["phase"] == "Failed")
    assert container(pod, "b")["state"]["terminated"]["exitCode"] == 2
    # Under restartPolicy Never an exited container is not restarted, even for a new image.
    await cluster.patch_pod(NS, "k", {"spec": {"containers": [{"name": "a", "image": "busybox"}]}})
    await anyio.sleep(0.1)
    assert container(cluster.history(NS, "k")[-1], "a")["restartCount"] == 0


async def test_new_image_that_cannot_be_pulled_under_restart_policy_never(
    cluster: FakeCluster,
) -> None:
    # The kubelet kills the placeholder, fails to pull, and (restartPolicy Never: an exited
    # container is not restarted) never tries again: the status keeps the placeholder's
    # termination, only the events tell why.
    await cluster.create_pod(NS, manifest("miss", step("step", "true"), step("next", "true")))
    await wait_until(cluster, "miss", lambda p: p["status"]["phase"] == "Running")
    await cluster.patch_pod(
        NS, "miss", {"spec": {"containers": [{"name": "step", "image": "nope"}]}}
    )
    await wait_for_event(cluster, "miss", "Failed")
    await anyio.sleep(0.4)
    pod = cluster.history(NS, "miss")[-1]
    status = container(pod, "step")
    assert status["image"] == PAUSE
    assert status["restartCount"] == 0
    assert status["state"]["terminated"]["reason"] == "Completed"
    assert pod["status"]["phase"] == "Running"
    messages = [(e["reason"], e["message"], e["count"]) for e in await events_of(cluster, "miss")]
    assert ("Failed", "Error: ErrImagePull", 1) in messages
    assert not any(reason == "BackOff" for reason, _, _ in messages)


async def test_new_image_that_cannot_be_pulled_under_restart_policy_always(
    cluster: FakeCluster,
) -> None:
    await cluster.create_pod(NS, manifest("missa", step("step", "true"), restart_policy="Always"))
    await wait_until(cluster, "missa", lambda p: state_of(p, "step") == "running")
    await cluster.patch_pod(
        NS, "missa", {"spec": {"containers": [{"name": "step", "image": "nope"}]}}
    )
    pod = await wait_until(
        cluster, "missa", lambda p: waiting_reason(p, "step") == "ImagePullBackOff"
    )
    status = container(pod, "step")
    assert status["lastState"]["terminated"]["reason"] == "Completed"
    # Fixing the image starts it at once, back-off or not.
    await cluster.patch_pod(
        NS, "missa", {"spec": {"containers": [{"name": "step", "image": "busybox"}]}}
    )
    pod = await wait_until(
        cluster, "missa", lambda p: container(p, "step")["image"].endswith("busybox:latest")
    )
    assert container(pod, "step")["restartCount"] == 1
    assert status["image"] == PAUSE  # the newest runtime container is still the placeholder


async def test_crash_loop_under_restart_policy_always(cluster: FakeCluster) -> None:
    await cluster.create_pod(
        NS,
        manifest(
            "crash", step("step", "echo boom; exit 1", image="busybox"), restart_policy="Always"
        ),
    )
    pod = await wait_until(
        cluster, "crash", lambda p: container(p, "step").get("restartCount", 0) >= 2
    )
    assert pod["status"]["phase"] == "Running"
    reasons = {waiting_reason(v, "step") for v in cluster.history(NS, "crash")}
    assert "CrashLoopBackOff" in reasons
    backoff = await wait_for_event(cluster, "crash", "BackOff")
    assert backoff["type"] == "Warning"
    assert backoff["message"].startswith("Back-off restarting failed container step in pod crash_")


async def test_kill_a_running_step(cluster: FakeCluster) -> None:
    await cluster.create_pod(NS, manifest("ks", step("step", "echo up; sleep 10")))
    await wait_until(cluster, "ks", lambda p: state_of(p, "step") == "running")
    await cluster.patch_pod(
        NS, "ks", {"spec": {"containers": [{"name": "step", "image": "busybox"}]}}
    )
    await wait_until(cluster, "ks", lambda p: container(p, "step").get("restartCount") == 1)
    with anyio.fail_after(2):
        while await read_logs(cluster, "ks", "step", follow=False) == b"":
            await anyio.sleep(0.01)
    await cluster.kill_container(NS, "ks", "step")
    pod = cluster.history(NS, "ks")[-1]
    terminated = container(pod, "step")["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)
    assert await read_logs(cluster, "ks", "step", timestamps=False) == b"up\n"
    with pytest.raises(ValueError, match="not running"):
        await cluster.kill_container(NS, "ks", "step")


async def test_environment_expansion_and_working_dir(cluster: FakeCluster) -> None:
    env = [
        {"name": "GREETING", "value": "hi"},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    await run_swap(
        cluster,
        "env",
        "echo $(GREETING) $GREETING $$GREETING; echo $POD; pwd",
        env=env,
        workingDir="/tmp",
    )
    out = await read_logs(cluster, "env", "step", timestamps=False)
    # Kubernetes expands $(VAR) and turns $$ into $ before the shell sees the script.
    # The working dir /tmp is the pod's own /tmp, inside its root on the host.
    root = cluster.pod_root(NS, "env")
    assert root is not None
    assert out == b"hi hi hi\nenv\n" + f"{root}/tmp\n".encode()


async def test_a_missing_executable_is_a_start_error(cluster: FakeCluster) -> None:
    await cluster.create_pod(
        NS, manifest("nox", {"name": "step", "image": "busybox", "args": ["/no/such/binary"]})
    )
    pod = await wait_until(cluster, "nox", lambda p: state_of(p, "step") == "terminated")
    terminated = container(pod, "step")["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("StartError", 128)
    assert 'exec: "/no/such/binary": executable file not found in $PATH' in terminated["message"]
    assert pod["status"]["phase"] == "Failed"


async def test_delete_pod(cluster: FakeCluster) -> None:
    await run_swap(cluster, "gone", "echo done", {"name": "next", "image": PAUSE})
    rv = cluster.history(NS, "gone")[-1]["metadata"]["resourceVersion"]
    async with cluster.watch("pods", NS, resource_version=rv, allow_bookmarks=False) as watch:
        await cluster.delete_pod(NS, "gone")
        seen = []
        async for event in watch:
            seen.append(event)
            if event["type"] == "DELETED":
                break
    assert [e["type"] for e in seen] == ["MODIFIED", "MODIFIED", "DELETED"]
    marked = seen[0]["object"]["metadata"]
    assert marked["deletionTimestamp"]
    assert marked["deletionGracePeriodSeconds"] == 5
    assert seen[1]["object"]["status"]["phase"] == "Succeeded"
    assert (
        seen[2]["object"]["metadata"]["resourceVersion"]
        > seen[1]["object"]["metadata"]["resourceVersion"]
    )
    with pytest.raises(NotFoundError):
        await read_logs(cluster, "gone", "step")
    with pytest.raises(NotFoundError, match='pods "gone" not found'):
        await cluster.delete_pod(NS, "gone")
    events = await events_of(cluster, "gone")  # kept after the pod is gone
    assert any(
        e["reason"] == "Killing" and e["message"] == "Stopping container next" for e in events
    )


async def test_deleting_a_finished_pod_is_immediate(cluster: FakeCluster) -> None:
    await run_swap(cluster, "done", "true")
    assert cluster.history(NS, "done")[-1]["status"]["phase"] == "Succeeded"
    versions = len(cluster.history(NS, "done"))
    await cluster.delete_pod(NS, "done")
    assert (await cluster.list("pods", NS, field_selector="metadata.name=done"))["items"] == []
    assert len(cluster.history(NS, "done")) == versions + 1  # straight to DELETED


async def test_delete_stops_a_running_step(cluster: FakeCluster) -> None:
    await cluster.create_pod(NS, manifest("busy", step("step", "sleep 30")))
    await wait_until(cluster, "busy", lambda p: state_of(p, "step") == "running")
    await cluster.patch_pod(
        NS, "busy", {"spec": {"containers": [{"name": "step", "image": "busybox"}]}}
    )
    await wait_until(cluster, "busy", lambda p: container(p, "step").get("restartCount") == 1)
    await cluster.delete_pod(NS, "busy")
    final = await wait_until(cluster, "busy", lambda p: p["status"]["phase"] == "Failed")
    terminated = container(final, "step")["state"]["terminated"]
    assert terminated["exitCode"] == 143
    assert terminated["reason"] == "Error"


async def test_unschedulable_until_cleared(cluster: FakeCluster) -> None:
    message = "0/3 nodes are available: 3 Insufficient memory."
    cluster.faults.unschedulable(message)
    await cluster.create_pod(NS, manifest("u"))
    pod = await wait_until(cluster, "u", lambda p: bool(p["status"]["conditions"]))
    condition = pod["status"]["conditions"][0]
    assert condition["type"] == "PodScheduled"
    assert (condition["status"], condition["reason"], condition["message"]) == (
        "False",
        "Unschedulable",
        message,
    )
    event = await wait_for_event(cluster, "u", "FailedScheduling", min_count=2, within=3)
    assert (event["type"], event["message"]) == ("Warning", message)
    assert event["source"]["component"] == "default-scheduler"
    cluster.faults.clear()
    pod = await wait_until(cluster, "u", lambda p: p["status"]["phase"] == "Running")
    assert pod["spec"]["nodeName"] == "fake-node"


# ------------------------------------------------------------------------- faults


async def test_drop_watches_then_resume_loses_nothing(cluster: FakeCluster) -> None:
    await cluster.create_pod(NS, manifest("d"))
    rv = (await cluster.list("pods", NS))["metadata"]["resourceVersion"]
    last = rv
    async with cluster.watch("pods", NS, resource_version=rv, allow_bookmarks=False) as watch:
        cluster.faults.drop_watches()
        with pytest.raises(UnavailableError, match="connection reset by peer"):
            await anext(watch)
    assert cluster.open_watches == 0
    await cluster.patch_pod(NS, "d", {"metadata": {"labels": {"during": "gap"}}})
    async with cluster.watch("pods", NS, resource_version=last, allow_bookmarks=False) as watch:
        with anyio.fail_after(2):
            async for event in watch:
                if event["object"]["metadata"]["labels"].get("during") == "gap":
                    break


async def test_outage(cluster: FakeCluster) -> None:
    await cluster.create_pod(NS, manifest("o", step("step", "sleep 0.2; echo survived")))
    await wait_until(cluster, "o", lambda p: state_of(p, "step") == "running")
    await cluster.patch_pod(
        NS, "o", {"spec": {"containers": [{"name": "step", "image": "busybox"}]}}
    )
    await wait_until(cluster, "o", lambda p: container(p, "step").get("restartCount") == 1)
    rv = (await cluster.list("pods", NS))["metadata"]["resourceVersion"]
    async with (
        cluster.watch("pods", NS, resource_version=rv) as watch,
        cluster.stream_logs(NS, "o", "step") as logs,
    ):
        cluster.faults.outage(0.5)
        with pytest.raises(UnavailableError, match="connection refused"):
            await anext(watch)
        with pytest.raises(UnavailableError):
            async for _ in logs:
                pass
    with pytest.raises(UnavailableError, match="connection refused"):
        await cluster.list("pods", NS)
    with pytest.raises(UnavailableError):
        async with cluster.watch("pods", NS, resource_version=rv):
            pass
    # The node keeps running its containers meanwhile.
    await wait_until(cluster, "o", lambda p: state_of(p, "step") == "terminated")
    await anyio.sleep(0.5)
    assert (await read_logs(cluster, "o", "step", timestamps=False)) == b"survived\n"


async def test_latency(cluster: FakeCluster) -> None:
    cluster.faults.latency(0.1)
    started = time.monotonic()
    await cluster.list("pods", NS)
    assert time.monotonic() - started >= 0.1
    cluster.faults.clear()
    started = time.monotonic()
    await cluster.list("pods", NS)
    assert time.monotonic() - started < 0.1


async def test_cut_logs_mid_line(cluster: FakeCluster) -> None:
    await run_swap(cluster, "cut", "echo first-line; echo second-line")
    async with cluster.stream_logs(NS, "cut", "step", timestamps=False) as logs:
        cluster.faults.cut_logs()
        half = await anext(logs)
        with pytest.raises(UnavailableError):
            await anext(logs)
    assert half == b"first"  # half of "first-line\n"
    assert cluster.open_log_streams == 0


async def test_small_chunks_do_not_follow_lines() -> None:
    async with FakeCluster(images={"busybox"}, log_chunk_bytes=7) as fake:
        await run_swap(fake, "chunks", "echo hello world; echo again")
        async with fake.stream_logs(NS, "chunks", "step", timestamps=False) as logs:
            chunks = [chunk async for chunk in logs]
    assert b"".join(chunks) == b"hello world\nagain\n"
    assert max(len(c) for c in chunks) <= 7


# ------------------------------------------------------------ accounting, closing


async def test_request_accounting(cluster: FakeCluster) -> None:
    await cluster.create_pod(NS, manifest("acct"))
    await cluster.list("pods", NS)
    await cluster.list("events", NS)
    async with cluster.watch("pods", NS, resource_version="0"):
        pass
    await cluster.patch_pod(NS, "acct", {"metadata": {"labels": {"a": "b"}}})
    with pytest.raises(NotFoundError):
        await cluster.patch_pod(NS, "missing", {"metadata": {"labels": {"a": "b"}}})
    await wait_until(cluster, "acct", lambda p: state_of(p, "step") == "running")
    await read_logs(cluster, "acct", "step", follow=False)
    assert (await cluster.get_pod(NS, "acct"))["metadata"]["name"] == "acct"
    await cluster.delete_pod(NS, "acct")
    assert cluster.requests == [
        Request("create", "pods"),
        Request("list", "pods"),
        Request("list", "events"),
        Request("watch", "pods"),
        Request("patch", "pods"),
        Request("patch", "pods"),
        Request("log", "pods"),
        Request("get", "pods"),
        Request("delete", "pods"),
    ]


async def test_open_streams_are_released_on_cancellation(cluster: FakeCluster) -> None:
    await cluster.create_pod(NS, manifest("c", step("step", "sleep 5")))
    await wait_until(cluster, "c", lambda p: state_of(p, "step") == "running")
    entered = anyio.Event()

    async def watch_forever() -> None:
        async with cluster.watch("pods", NS, resource_version="0") as watch:
            async for _ in watch:
                pass

    async def follow_logs() -> None:
        async with cluster.stream_logs(NS, "c", "step") as logs:
            entered.set()
            async for _ in logs:
                pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_forever)
        tg.start_soon(follow_logs)
        await entered.wait()
        await anyio.sleep(0.05)
        assert (cluster.open_watches, cluster.open_log_streams) == (1, 1)
        tg.cancel_scope.cancel()
    assert (cluster.open_watches, cluster.open_log_streams) == (0, 0)


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if marker.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


async def test_aclose_leaves_no_process() -> None:
    marker = f"sleep 3{os.getpid() % 1000}.5"
    fake = FakeCluster(images={"busybox"})
    await fake.create_pod(NS, manifest("left", step("step", f"{marker}; echo")))
    await wait_until(fake, "left", lambda p: state_of(p, "step") == "running")
    await fake.patch_pod(
        NS, "left", {"spec": {"containers": [{"name": "step", "image": "busybox"}]}}
    )
    await wait_until(fake, "left", lambda p: container(p, "step").get("restartCount") == 1)
    with anyio.fail_after(2):
        while not _processes_with(marker):
            await anyio.sleep(0.01)
    rv = (await fake.list("pods", NS))["metadata"]["resourceVersion"]
    async with fake.watch("pods", NS, resource_version=rv) as watch:
        await fake.aclose()
        assert [e async for e in watch if e["type"] != "BOOKMARK"] == []
    assert _processes_with(marker) == []


async def test_history_is_what_an_informer_sees(cluster: FakeCluster) -> None:
    rv = (await cluster.list("pods", NS))["metadata"]["resourceVersion"]
    delivered: list[JSON] = []

    async def informer() -> None:
        async with cluster.watch(
            "pods", NS, resource_version=rv, label_selector="app=build", allow_bookmarks=False
        ) as watch:
            async for event in watch:
                delivered.append(event["object"])
                if event["type"] == "DELETED":
                    return

    async with anyio.create_task_group() as tg:
        tg.start_soon(informer)
        await run_swap(cluster, "truth", "echo ok")
        await cluster.delete_pod(NS, "truth")
    assert delivered == cluster.history(NS, "truth")
