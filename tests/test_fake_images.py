"""FakeCluster's images: which are present, what they run, and how a node reports them."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from buildruntime.testing import FakeCluster, ImageConfig
from tests.test_fake_cluster import (
    NS,
    PAUSE,
    container,
    manifest,
    read_logs,
    state_of,
    step,
    wait_until,
    waiting_reason,
)

JSON = dict[str, Any]
LOCAL_PAUSE = "localhost/pause:3.10"
PAUSE_ALIAS = "docker.io/kubernetes/pause:latest"

pytestmark = pytest.mark.anyio


async def run_pod(cluster: FakeCluster, name: str, *containers: JSON) -> JSON:
    """Create a pod and wait until every container has terminated."""
    await cluster.create_pod(NS, manifest(name, *containers))
    names = [c["name"] for c in containers]
    return await wait_until(
        cluster, name, lambda p: all(state_of(p, n) == "terminated" for n in names)
    )


# ------------------------------------------------------------------ A: any image


async def test_images_none_makes_every_valid_image_present() -> None:
    async with FakeCluster(images=None) as cluster:
        pod = await run_pod(
            cluster,
            "anyimage",
            step("a", "echo from a", image="ghcr.io/acme/tool:1.2"),
            step("b", "echo from b", image="golang:1.23", imagePullPolicy="Never"),
        )
        assert container(pod, "a")["state"]["terminated"]["exitCode"] == 0
        assert container(pod, "a")["image"] == "ghcr.io/acme/tool:1.2"
        assert container(pod, "b")["image"] == "docker.io/library/golang:1.23"
        assert await read_logs(cluster, "anyimage", "a", timestamps=False) == b"from a\n"
        assert await read_logs(cluster, "anyimage", "b", timestamps=False) == b"from b\n"

        # A registry under .invalid never resolves: the pull fails as on a real node.
        await cluster.create_pod(
            NS, manifest("nohost", step("c", "true", image="example.invalid/tool:1.0"))
        )
        pod = await wait_until(
            cluster, "nohost", lambda p: waiting_reason(p, "c") == "ErrImagePull"
        )
        assert container(pod, "c")["state"]["waiting"]["message"].endswith(
            'Head "https://example.invalid/v2/tool/manifests/1.0": '
            "dial tcp: lookup example.invalid: no such host"
        )

        # An image name that does not parse is still refused by the node.
        await cluster.create_pod(NS, manifest("badname", step("c", "true", image="Bad/Name")))
        await wait_until(cluster, "badname", lambda p: waiting_reason(p, "c") == "InvalidImageName")


async def test_images_keep_meaning_the_others_fail_to_pull() -> None:
    async with FakeCluster(images={"busybox"}) as cluster:
        await cluster.create_pod(NS, manifest("missing", step("a", "true", image="golang:1.23")))
        await wait_until(cluster, "missing", lambda p: waiting_reason(p, "a") == "ErrImagePull")
    async with FakeCluster() as cluster:  # the default: busybox alone
        await cluster.create_pod(NS, manifest("dflt", step("a", "true", image="alpine")))
        await wait_until(cluster, "dflt", lambda p: waiting_reason(p, "a") == "ErrImagePull")


# ------------------------------------------------------- D: ENTRYPOINT and CMD

TOOL = ImageConfig(entrypoint=["/bin/echo", "entry", "$(X)"], cmd=["default-cmd"])


@pytest.fixture
async def configured() -> AsyncIterator[FakeCluster]:
    async with FakeCluster(
        images={"busybox"},
        image_configs={
            "acme/tool:1": TOOL,
            "plugin/echo": ImageConfig(entrypoint=["/bin/sh", "-c", "echo plugin says hi"]),
        },
    ) as fake:
        yield fake


async def test_neither_command_nor_args_runs_entrypoint_and_cmd(configured: FakeCluster) -> None:
    env = [{"name": "X", "value": "x"}]
    await run_pod(
        configured,
        "neither",
        {"name": "tool", "image": "acme/tool:1", "env": env},
        {"name": "plugin", "image": "plugin/echo"},
    )
    # The image's own words are not expanded by Kubernetes: $(X) reaches echo as written.
    assert await read_logs(configured, "neither", "tool", timestamps=False) == (
        b"entry $(X) default-cmd\n"
    )
    assert await read_logs(configured, "neither", "plugin", timestamps=False) == (
        b"plugin says hi\n"
    )


async def test_args_alone_replace_cmd_after_the_entrypoint(configured: FakeCluster) -> None:
    env = [{"name": "X", "value": "x"}]
    await run_pod(
        configured,
        "argsonly",
        {"name": "tool", "image": "acme/tool:1", "args": ["given", "$(X)"], "env": env},
    )
    assert await read_logs(configured, "argsonly", "tool", timestamps=False) == (
        b"entry $(X) given x\n"
    )


async def test_command_replaces_entrypoint_and_cmd(configured: FakeCluster) -> None:
    await run_pod(
        configured,
        "cmd",
        {"name": "both", "image": "acme/tool:1", "command": ["/bin/echo", "own"], "args": ["a"]},
        {"name": "only", "image": "acme/tool:1", "command": ["/bin/echo", "own"]},
    )
    assert await read_logs(configured, "cmd", "both", timestamps=False) == b"own a\n"
    assert await read_logs(configured, "cmd", "only", timestamps=False) == b"own\n"


async def test_an_image_without_a_known_config_runs_nothing(configured: FakeCluster) -> None:
    pod = await run_pod(configured, "bare", {"name": "bare", "image": "busybox"})
    terminated = container(pod, "bare")["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    assert await read_logs(configured, "bare", "bare", timestamps=False) == b""


async def test_a_configured_image_is_present() -> None:
    async with FakeCluster(
        images=(), image_configs={"plugin/echo": ImageConfig(entrypoint=["/bin/true"])}
    ) as cluster:
        pod = await run_pod(cluster, "present", {"name": "p", "image": "plugin/echo"})
        assert container(pod, "p")["state"]["terminated"]["exitCode"] == 0


# ------------------------------------------------------ E: an image with two tags

DIGEST_ID = re.compile(r"^[a-z0-9./:-]+@sha256:[0-9a-f]{64}$")
CONTAINER_ID = re.compile(r"^containerd://[0-9a-f]{64}$")


@pytest.fixture
async def aliased() -> AsyncIterator[FakeCluster]:
    async with FakeCluster(
        images={"busybox"},
        pause_image=LOCAL_PAUSE,
        image_aliases={LOCAL_PAUSE: PAUSE_ALIAS},
    ) as fake:
        yield fake


async def test_a_container_of_an_aliased_image_reports_the_alias(aliased: FakeCluster) -> None:
    await aliased.create_pod(
        NS,
        manifest(
            "alias",
            step("placeholder", "echo never", image=LOCAL_PAUSE),
            step("byalias", "echo never", image=PAUSE_ALIAS),
            step("real", "true", image="busybox"),
        ),
    )
    pod = await wait_until(
        aliased,
        "alias",
        lambda p: state_of(p, "placeholder") == state_of(p, "byalias") == "running",
    )
    placeholder, byalias = container(pod, "placeholder"), container(pod, "byalias")
    assert placeholder["image"] == PAUSE_ALIAS
    assert byalias["image"] == PAUSE_ALIAS
    # The same image under either tag: the same imageID, a digest.
    assert placeholder["imageID"] == byalias["imageID"]
    assert DIGEST_ID.match(placeholder["imageID"])
    # The alias is the placeholder too: it runs nothing, whatever its args say.
    assert await read_logs(aliased, "alias", "byalias", follow=False, timestamps=False) == b""
    pod = await wait_until(aliased, "alias", lambda p: state_of(p, "real") == "terminated")
    real = container(pod, "real")
    assert real["image"] == "docker.io/library/busybox:latest"
    assert DIGEST_ID.match(real["imageID"])
    assert real["imageID"] != placeholder["imageID"]


async def test_statuses_carry_ids_restart_counts_and_last_state(aliased: FakeCluster) -> None:
    await aliased.create_pod(NS, manifest("ids", step("step", "exit 4", image=LOCAL_PAUSE)))
    pod = await wait_until(aliased, "ids", lambda p: state_of(p, "step") == "running")
    first = container(pod, "step")
    assert CONTAINER_ID.match(first["containerID"])
    assert first["restartCount"] == 0
    assert first["lastState"] == {}

    patch = {"spec": {"containers": [{"name": "step", "image": "busybox"}]}}
    await aliased.patch_pod(NS, "ids", patch)
    pod = await wait_until(
        aliased,
        "ids",
        lambda p: (
            container(p, "step")["image"].endswith("busybox:latest")
            and state_of(p, "step") == "terminated"
        ),
    )
    second = container(pod, "step")
    assert CONTAINER_ID.match(second["containerID"])
    assert second["containerID"] != first["containerID"]
    assert second["restartCount"] == 1
    assert second["state"]["terminated"]["exitCode"] == 4
    assert second["state"]["terminated"]["containerID"] == second["containerID"]
    previous = second["lastState"]["terminated"]
    assert previous["containerID"] == first["containerID"]
    assert (previous["exitCode"], previous["reason"]) == (0, "Completed")


async def test_default_pause_image_is_reported_under_its_own_name() -> None:
    async with FakeCluster(images={"busybox"}) as cluster:
        await cluster.create_pod(NS, manifest("plain", step("step", "true")))
        pod = await wait_until(cluster, "plain", lambda p: state_of(p, "step") == "running")
        assert container(pod, "step")["image"] == PAUSE


def test_image_config_and_alias_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="not a valid image reference"):
        FakeCluster(image_aliases={"Bad/Name": "busybox"})
    with pytest.raises(ValueError, match="alias"):
        FakeCluster(image_aliases={"a": "b", "b": "c"})
    with pytest.raises(TypeError):
        ImageConfig(entrypoint="/bin/sh -c")  # type: ignore[arg-type]
