"""What a simulated step sees of the machine: its environment and its directories."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from buildruntime.testing import FakeCluster
from tests.test_fake_cluster import (
    NS,
    container,
    manifest,
    read_logs,
    state_of,
    step,
    wait_until,
)

JSON = dict[str, Any]
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = pytest.mark.anyio


async def swap_in(cluster: FakeCluster, pod: str, name: str) -> JSON:
    """Patch a placeholder container to busybox and wait until it has terminated."""
    patch = {"spec": {"containers": [{"name": name, "image": "busybox"}]}}
    await cluster.patch_pod(NS, pod, patch)
    return await wait_until(
        cluster,
        pod,
        lambda p: container(p, name).get("restartCount") == 1 and state_of(p, name) == "terminated",
    )


async def lines(cluster: FakeCluster, pod: str, name: str) -> list[str]:
    return (await read_logs(cluster, pod, name, timestamps=False)).decode().splitlines()


# ------------------------------------------------------------ B: the environment


async def test_a_step_gets_a_container_environment_not_the_hosts(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-secret")
    monkeypatch.setenv("VIRTUAL_ENV", "/host/venv")
    monkeypatch.setenv("PATH", f"/host/venv/bin:{os.environ['PATH']}")
    env = [{"name": "GREETING", "value": "hi $(PATH) $(GREETING_NOT_SET)"}]
    await cluster.create_pod(
        NS, manifest("env", {"name": "step", "image": "busybox", "command": ["env"], "env": env})
    )
    await wait_until(cluster, "env", lambda p: state_of(p, "step") == "terminated")
    root = cluster.pod_root(NS, "env")
    assert root is not None
    seen = dict(line.split("=", 1) for line in await lines(cluster, "env", "step"))
    # Kubernetes expands $(VAR) with the container's own env only: PATH is the runtime's.
    assert seen == {
        "PATH": CONTAINER_PATH,
        "HOSTNAME": "env",
        "HOME": str(root / "root"),
        "GREETING": "hi $(PATH) $(GREETING_NOT_SET)",
    }


async def test_a_step_can_set_its_own_path_and_home(cluster: FakeCluster) -> None:
    env = [{"name": "PATH", "value": "/bin"}, {"name": "HOME", "value": "/nowhere"}]
    await cluster.create_pod(
        NS, manifest("own", {"name": "step", "image": "busybox", "command": ["env"], "env": env})
    )
    await wait_until(cluster, "own", lambda p: state_of(p, "step") == "terminated")
    seen = dict(line.split("=", 1) for line in await lines(cluster, "own", "step"))
    assert (seen["PATH"], seen["HOME"]) == ("/bin", "/nowhere")


# ---------------------------------------------------------- C: the pod's root


async def test_working_dir_is_inside_the_pod_root_and_shared(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    host_dir = tmp_path / "checkout"
    host_dir.mkdir()
    marker = f"made-by-step-{os.getpid()}-{id(tmp_path)}"
    await cluster.create_pod(
        NS,
        manifest(
            "ws",
            step("tmp", f"echo tmp > {marker}; pwd", workingDir="/tmp"),
            step("real", f"echo real > {marker}; pwd", workingDir=str(host_dir)),
            # 2>&1: both cats' output in one stream, so in order (stdout and stderr are
            # two pipes, read and logged in whatever order their lines come).
            step("reader", f"cat {marker}; cat ../{marker} 2>&1", workingDir=str(host_dir)),
            step("home", "pwd; echo $HOME; cd; pwd; ls -d ~"),
        ),
    )
    await wait_until(cluster, "ws", lambda p: state_of(p, "home") == "running")
    root = cluster.pod_root(NS, "ws")
    assert root is not None
    assert root.is_dir()
    await swap_in(cluster, "ws", "tmp")
    await swap_in(cluster, "ws", "real")

    assert await lines(cluster, "ws", "tmp") == [str(root / "tmp")]
    assert await lines(cluster, "ws", "real") == [str(root / host_dir.relative_to("/"))]
    # The host's directories are untouched...
    assert not (Path("/tmp") / marker).exists()
    assert os.listdir(host_dir) == []
    # ... the files are in the pod's root, where a later container of the pod sees them.
    assert (root / "tmp" / marker).read_text() == "tmp\n"
    await swap_in(cluster, "ws", "reader")
    reader = await lines(cluster, "ws", "reader")
    assert reader[0] == "real"
    assert len(reader) == 2
    assert "No such file" in reader[1]

    # No working dir: the container's "/" is the pod root; HOME is its /root.
    await swap_in(cluster, "ws", "home")
    assert await lines(cluster, "ws", "home") == [str(root)] + [str(root / "root")] * 3

    # Deleted: the pod root goes with the pod (a finished pod leaves the API at once, the
    # node cleans up after it).
    await cluster.delete_pod(NS, "ws")
    assert cluster.pod_root(NS, "ws") is None
    with anyio.fail_after(5):
        while await anyio.Path(root).exists():
            await anyio.sleep(0.01)


async def test_a_running_pod_root_is_gone_once_the_pod_is(cluster: FakeCluster) -> None:
    await cluster.create_pod(NS, manifest("live", step("step", "true")))
    await wait_until(cluster, "live", lambda p: state_of(p, "step") == "running")
    root = cluster.pod_root(NS, "live")
    assert root is not None
    await cluster.delete_pod(NS, "live")
    with anyio.fail_after(5):
        while (await cluster.list("pods", NS, field_selector="metadata.name=live"))["items"]:
            await anyio.sleep(0.01)
    assert not await anyio.Path(root).exists()


async def test_closing_the_cluster_removes_the_pod_roots() -> None:
    async with FakeCluster() as cluster:
        await cluster.create_pod(NS, manifest("kept", step("step", "true")))
        await wait_until(cluster, "kept", lambda p: state_of(p, "step") == "running")
        root = cluster.pod_root(NS, "kept")
        assert root is not None
    assert not await anyio.Path(root).exists()


async def test_working_dir_cannot_climb_out_of_the_pod_root(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    await cluster.create_pod(
        NS,
        manifest(
            "climb",
            step("link", f"ln -s {tmp_path} escape; ln -s ../../.. up", workingDir="/w"),
            step("abs", "touch through-absolute-link; pwd", workingDir="/w/escape/sub"),
            step("rel", "touch through-relative-link; pwd", workingDir="/w/up/x"),
            step("dots", "touch through-dots; pwd", workingDir="/../../y"),
        ),
    )
    await wait_until(cluster, "climb", lambda p: state_of(p, "dots") == "running")
    root = cluster.pod_root(NS, "climb")
    assert root is not None
    for name in ("link", "abs", "rel", "dots"):
        pod = await swap_in(cluster, "climb", name)
        assert container(pod, name)["state"]["terminated"]["exitCode"] == 0
    # Symbolic links are followed inside the pod root, as a container runtime does.
    assert await lines(cluster, "climb", "abs") == [str(root / tmp_path.relative_to("/") / "sub")]
    assert await lines(cluster, "climb", "rel") == [str(root / "x")]
    assert await lines(cluster, "climb", "dots") == [str(root / "y")]
    assert os.listdir(tmp_path) == []


async def test_a_working_dir_that_is_a_file_is_a_start_error(cluster: FakeCluster) -> None:
    await cluster.create_pod(
        NS,
        manifest(
            "wdfile",
            step("make", "echo x > file", workingDir="/d"),
            step("use", "true", workingDir="/d/file"),
        ),
    )
    await wait_until(cluster, "wdfile", lambda p: state_of(p, "use") == "running")
    await swap_in(cluster, "wdfile", "make")
    pod = await swap_in(cluster, "wdfile", "use")
    terminated = container(pod, "use")["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("StartError", 128)
    assert '"/d/file"' in terminated["message"]
    assert "not a directory" in terminated["message"]
