"""Shared fixtures: every async test runs under asyncio and trio, on a FakeCluster.

A pipeline runs as in the integration suite, with ``integration.observe.run_build``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from buildruntime import Runtime, StepSpec
from buildruntime.informer.reflector import ReflectorSettings
from buildruntime.testing import FakeCluster

IMAGES = {"busybox", "alpine:3.20"}

# Short backoffs so fault tests recover in seconds, as they would with a real
# server that comes back; the production defaults are client-go's.
FAST_RECOVERY = ReflectorSettings(backoff_initial=0.05, backoff_max=0.5)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def cluster() -> AsyncIterator[FakeCluster]:
    async with FakeCluster(images=IMAGES) as fake:
        yield fake
    assert fake.open_watches == 0, "a watch was left open"
    assert fake.open_log_streams == 0, "a log stream was left open"


@pytest.fixture
async def runtime(cluster: FakeCluster) -> AsyncIterator[Runtime]:
    async with Runtime(cluster, namespace="ci", reflector=FAST_RECOVERY) as rt:
        yield rt


def step(name: str, *commands: str, image: str = "busybox", **kwargs: object) -> StepSpec:
    return StepSpec(name=name, image=image, commands=list(commands), **kwargs)  # type: ignore[arg-type]
