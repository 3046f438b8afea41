"""Private registries: an image pulls with the build's credentials and is refused
without them, with the kubelet's own words."""

from __future__ import annotations

import uuid

import anyio
import pytest

from buildruntime import BuildSpec, ImagePullError, RegistryCredentials, StepSpec

from .conftest import PrivateRegistry, Target

pytestmark = pytest.mark.anyio


def _spec(registry: PrivateRegistry, prefix: str, **build: object) -> BuildSpec:
    image = f"{registry.host}/library/busybox:latest"
    return BuildSpec(
        build_id=f"{prefix}-{uuid.uuid4().hex[:6]}",
        # Always: an image already on the node is not pulled, so needs no credentials.
        steps=[StepSpec(name="s", image=image, commands=["echo pulled"], pull_policy="Always")],
        **build,  # type: ignore[arg-type]
    )


@pytest.fixture
def registry(target: Target) -> PrivateRegistry:
    if target.private_registry is None:
        pytest.skip("this cluster has no registry behind authentication to pull from")
    return target.private_registry


async def test_an_image_pulls_with_the_builds_credentials(
    target: Target, registry: PrivateRegistry
) -> None:
    password = registry.password
    spec = _spec(
        registry,
        "private",
        registries={registry.host: RegistryCredentials(registry.username, password)},
    )
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        assert password not in str(build.pod_manifest)
        await rt.assemble_build(build)
        try:
            pull_secret = await target.read_secret(f"{spec.pod_name}-registries")
            assert pull_secret is not None
            assert pull_secret["type"] == "kubernetes.io/dockerconfigjson"
            pod = await target.read_pod(build.pod_name)
            assert pod is not None
            assert pod["spec"]["imagePullSecrets"] == [{"name": f"{spec.pod_name}-registries"}]
            with anyio.fail_after(60):
                await rt.run_container(build, "s")
                assert [line async for line in rt.tail_container(build, "s")] == [b"pulled"]
        finally:
            await rt.remove_build(build)
    assert await target.read_secret(f"{spec.pod_name}-registries") is None


async def test_without_credentials_the_pull_is_refused_and_says_so(
    target: Target, registry: PrivateRegistry
) -> None:
    spec = _spec(registry, "refused")
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        try:
            with anyio.fail_after(60), pytest.raises(ImagePullError) as info:
                await rt.run_container(build, "s")
        finally:
            await rt.remove_build(build)
    assert info.value.step == "s"
    assert info.value.message is not None
    # The kubelet's words (containerd 2's): refused for want of credentials.
    assert "pull access denied" in info.value.message
    assert "no basic auth credentials" in info.value.message
    assert f"{registry.host}/library/busybox:latest" in info.value.message


async def test_wrong_credentials_are_refused_by_the_registry(
    target: Target, registry: PrivateRegistry
) -> None:
    wrong = RegistryCredentials(registry.username, "not-" + registry.password)
    spec = _spec(registry, "wrong", registries={registry.host: wrong})
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        try:
            with anyio.fail_after(60), pytest.raises(ImagePullError) as info:
                await rt.run_container(build, "s")
        finally:
            await rt.remove_build(build)
    assert info.value.step == "s"
    assert info.value.message is not None
    assert "/library/busybox/manifests/latest: 401 Unauthorized" in info.value.message
    assert registry.password not in str(info.value)
