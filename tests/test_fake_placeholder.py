"""A running step patched back to the pause placeholder (how a step's timeout is enforced):
the kubelet kills the step, SIGKILL after the grace period, and starts the placeholder."""

from __future__ import annotations

import os
from typing import Any

import anyio
import pytest

from buildruntime.testing import FakeCluster
from tests.test_fake_cluster import (
    NS,
    PAUSE,
    container,
    events_of,
    manifest,
    read_logs,
    state_of,
    step,
    wait_until,
)

JSON = dict[str, Any]
BUSYBOX = "docker.io/library/busybox:latest"

pytestmark = pytest.mark.anyio


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs. Zombies do not count: a killed
    grandchild stays one until its new parent reaps it, and some init processes (this
    machine's sandbox) never do."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def stages(cluster: FakeCluster, pod: str) -> list[tuple[str, str | None, int]]:
    """The distinct (image, state, restartCount) the step went through."""
    seen: list[tuple[str, str | None, int]] = []
    for version in cluster.history(NS, pod):
        status = container(version, "step")
        if status:
            entry = (status["image"], state_of(version, "step"), status["restartCount"])
            if not seen or seen[-1] != entry:
                seen.append(entry)
    return seen


async def patch_back(
    cluster: FakeCluster, name: str, script: str, grace: int
) -> tuple[JSON, bytes, int, float]:
    """Run ``script`` as the step, follow its log until it printed two lines, patch the
    placeholder back; returns the status once the placeholder runs again, the followed
    log, the step's process group and how long the kill took."""
    pod_manifest = manifest(name, step("step", script), step("next", "true"))
    pod_manifest["spec"]["terminationGracePeriodSeconds"] = grace
    await cluster.create_pod(NS, pod_manifest)
    await wait_until(cluster, name, lambda p: state_of(p, "step") == "running")
    await cluster.patch_pod(
        NS, name, {"spec": {"containers": [{"name": "step", "image": "busybox"}]}}
    )
    step_status = await wait_until(
        cluster,
        name,
        lambda p: container(p, "step")["image"] == BUSYBOX and state_of(p, "step") == "running",
    )
    step_id = container(step_status, "step")["containerID"]
    received = b""
    async with cluster.stream_logs(NS, name, "step", follow=True, timestamps=False) as stream:
        chunks = aiter(stream)
        with anyio.fail_after(5):
            while received.count(b"\n") < 2:
                received += await anext(chunks)
        pgid = int(received.split(b"\n")[0])
        assert group_alive(pgid)
        started = anyio.current_time()
        await cluster.patch_pod(
            NS, name, {"spec": {"containers": [{"name": "step", "image": PAUSE}]}}
        )
        # The follow stream ends by itself once the step is gone.
        with anyio.fail_after(grace + 5):
            async for chunk in chunks:
                received += chunk
        took = anyio.current_time() - started
    final = await wait_until(
        cluster,
        name,
        lambda p: container(p, "step")["image"] == PAUSE and state_of(p, "step") == "running",
    )
    last = container(final, "step")["lastState"]["terminated"]
    assert last["containerID"] == step_id
    return final, received, pgid, took


async def test_patch_back_kills_the_step_with_sigterm(cluster: FakeCluster) -> None:
    final, log, pgid, took = await patch_back(
        cluster, "term", "echo $$$$; echo working; sleep 30; echo never", grace=5
    )
    assert took < 2
    assert log == f"{pgid}\nworking\n".encode()
    assert not group_alive(pgid)
    status = container(final, "step")
    assert status["restartCount"] == 2
    assert status["state"]["running"]["startedAt"]
    last = status["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (143, "Error")
    assert final["status"]["phase"] == "Running"
    # Every stage, as a watch sees them.
    assert stages(cluster, "term") == [
        (PAUSE, "waiting", 0),
        (PAUSE, "running", 0),
        (PAUSE, "terminated", 0),
        (BUSYBOX, "running", 1),
        (BUSYBOX, "terminated", 1),
        (PAUSE, "running", 2),
    ]
    events = await events_of(cluster, "term")
    killing = [e for e in events if e["reason"] == "Killing"]
    assert [(e["message"], e["count"]) for e in killing] == [
        ("Container step definition changed, will be restarted", 2)
    ]
    # A new request reads the current container (the placeholder): nothing.
    assert await read_logs(cluster, "term", "step", follow=False, timestamps=False) == b""


async def test_patch_back_sigkills_a_step_that_ignores_sigterm(cluster: FakeCluster) -> None:
    final, log, pgid, took = await patch_back(
        cluster,
        "kill",
        "trap 'echo got TERM' TERM; echo $$$$; echo working; while :; do sleep 0.05; done",
        grace=1,
    )
    assert 1 <= took < 3
    # The shell traps the SIGTERM, and may report its foreground sleep killed by the
    # same signal before or after the trap's line (a race of the shell's own).
    assert log.startswith(f"{pgid}\nworking\n".encode())
    tail = log.removeprefix(f"{pgid}\nworking\n".encode()).splitlines()
    assert b"got TERM" in tail
    assert set(tail) <= {b"got TERM", b"Terminated"}
    assert not group_alive(pgid)
    status = container(final, "step")
    assert status["restartCount"] == 2
    last = status["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (137, "Error")
    assert final["status"]["phase"] == "Running"
