"""FakeCluster's node: volumes, readiness probes and the active deadline, as a kubelet
handles them, seen through the API a client sees."""

from __future__ import annotations

import socket
from typing import Any

import anyio
import pytest

from buildruntime.testing import FakeCluster

pytestmark = pytest.mark.anyio


def _pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ci"},
        "spec": {"restartPolicy": "Never", "containers": containers, **spec},
    }


def _sh(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "busybox", "args": ["/bin/sh", "-c", script], **extra}


async def _until(cluster: FakeCluster, name: str, check: Any) -> dict[str, Any]:
    with anyio.fail_after(20):
        while True:
            pod = cluster._server.copy("pods", "ci", name)
            if pod is not None and check(pod):
                return pod
            await anyio.sleep(0.05)


def _status(pod: dict[str, Any], container: str) -> dict[str, Any]:
    return next(s for s in pod["status"].get("containerStatuses", []) if s["name"] == container)


def _terminated(container: str) -> Any:
    return lambda pod: (
        "terminated" in _status(pod, container).get("state", {})
        if pod["status"].get("containerStatuses")
        else False
    )


async def _log(cluster: FakeCluster, pod: str, container: str) -> list[bytes]:
    chunks: list[bytes] = []
    async with cluster.stream_logs("ci", pod, container, follow=False, timestamps=False) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    return b"".join(chunks).splitlines()


async def test_a_claim_outlives_its_pod_and_env_paths_are_host_paths() -> None:
    volumes = [{"name": "ws", "persistentVolumeClaim": {"claimName": "cache"}}]
    mounts = [{"name": "ws", "mountPath": "/workspace"}]
    env = [{"name": "CI_WORKSPACE", "value": "/workspace"}]
    async with FakeCluster(images=None) as cluster:
        writer = _sh("w", 'echo kept > "$CI_WORKSPACE/f"', volumeMounts=mounts, env=env)
        await cluster.create_pod("ci", _pod("one", [writer], volumes=volumes))
        await _until(cluster, "one", _terminated("w"))
        await cluster.delete_pod("ci", "one", grace_period_seconds=0)
        reader = _sh("r", "cat f; pwd", volumeMounts=mounts, workingDir="/workspace")
        await cluster.create_pod("ci", _pod("two", [reader], volumes=volumes))
        pod = await _until(cluster, "two", _terminated("r"))
        assert _status(pod, "r")["state"]["terminated"]["exitCode"] == 0
        lines = await _log(cluster, "two", "r")
        assert lines[0] == b"kept"
        assert not lines[1].startswith(b"/workspace"), "the host's /workspace is never used"


async def test_a_readiness_probe_makes_a_listening_container_ready() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = (
        f"sleep 1; exec python3 -c 'import socket,time; s=socket.socket(); "
        f's.bind(("127.0.0.1",{port})); s.listen(); time.sleep(30)\''
    )
    container = _sh("svc", server, readinessProbe={"tcpSocket": {"port": port}, "periodSeconds": 1})
    async with FakeCluster(images=None) as cluster:
        await cluster.create_pod("ci", _pod("p", [container]))
        running = await _until(
            cluster,
            "p",
            lambda p: (
                "running" in _status(p, "svc")["state"]
                if p["status"].get("containerStatuses")
                else False
            ),
        )
        assert _status(running, "svc")["ready"] is False
        ready = await _until(cluster, "p", lambda p: _status(p, "svc")["ready"])
        assert "running" in _status(ready, "svc")["state"]
        await cluster.delete_pod("ci", "p", grace_period_seconds=0)


async def test_the_active_deadline_fails_the_pod_as_a_whole() -> None:
    async with FakeCluster(images=None) as cluster:
        await cluster.create_pod(
            "ci",
            _pod(
                "late",
                [_sh("s", "sleep 60")],
                activeDeadlineSeconds=1,
                terminationGracePeriodSeconds=1,
            ),
        )
        pod = await _until(cluster, "late", lambda p: p["status"].get("phase") == "Failed")
        assert pod["status"]["reason"] == "DeadlineExceeded"
        assert "terminated" in _status(pod, "s")["state"]
        assert cluster._server.copy("pods", "ci", "late") is not None, "the pod stays listed"
