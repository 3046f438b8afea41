"""Each build sees exactly its own pod, with one pods watch per runtime (the default,
``shared_pod_watch=True``) or one per build, when builds run side by side in one
namespace; the shared watch closes when the last build is removed."""

from __future__ import annotations

import uuid
from collections import Counter

import anyio
import pytest

from buildruntime import BuildSpec, StepSpec

from .conftest import BUSYBOX, Target
from .observe import Observed, run_build

pytestmark = pytest.mark.anyio

BUILDS = 4


def _spec(i: int) -> BuildSpec:
    return BuildSpec(
        build_id=f"pods-{i}-{uuid.uuid4().hex[:6]}",
        steps=[
            StepSpec(name="say", image=BUSYBOX, commands=[f"echo build {i}"]),
            # Every build ends differently: a result taken from another build's pod
            # would show.
            StepSpec(name="end", image=BUSYBOX, commands=[f"echo ending {i}", f"exit {i}"]),
        ],
    )


def _pod_requests(target: Target, since: int) -> Counter[tuple[str, str]]:
    return Counter((r.verb, r.resource) for r in target.requests[since:] if r.resource == "pods")


async def _no_watch_left(target: Target) -> None:
    """Until the runtime has no watch open (closing a stream takes a moment: the shared
    watches are told to stop when their last build leaves); fails after 10 s."""
    with anyio.fail_after(10):
        while target.cluster.open_watches:
            await anyio.sleep(0.05)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-watch", "watch-per-build"])
async def test_concurrent_builds_each_see_exactly_their_own_pod(
    target: Target, shared: bool
) -> None:
    specs = [_spec(i) for i in range(BUILDS)]
    seen: dict[str, Observed] = {}
    before = len(target.requests)

    async with target.runtime(shared_pod_watch=shared) as rt:

        async def build(spec: BuildSpec) -> None:
            seen[spec.build_id] = await run_build(rt, spec)

        async with anyio.create_task_group() as tg:
            for spec in specs:
                tg.start_soon(build, spec)
        # Every build removed: nothing of the runtime's is left watching, while it runs.
        await _no_watch_left(target)

    for i, spec in enumerate(specs):
        observed = seen[spec.build_id]
        assert observed.outcome() == {
            "say": ([f"build {i}".encode()], 0),
            "end": ([f"ending {i}".encode()], i),
        }
        assert {event.build_id for event in observed.events} == {spec.build_id}
        assert observed.events[-1].kind == "deleted"
    sent = _pod_requests(target, before)
    # Shared: one list and one watch for all the builds (more only if the server ended
    # the watch, which it does after minutes); per build: one of each for every build.
    assert sent[("list", "pods")] == (1 if shared else BUILDS)
    assert sent[("watch", "pods")] == (1 if shared else BUILDS)
    assert sent[("create", "pods")] == BUILDS


async def test_the_shared_watch_closes_between_builds_and_opens_again(target: Target) -> None:
    before = len(target.requests)
    async with target.runtime(shared_pod_watch=True) as rt:
        first = await run_build(rt, _spec(0))
        await _no_watch_left(target)  # closed between builds
        second = await run_build(rt, _spec(1))
        await _no_watch_left(target)
    assert first.outcome() == {"say": ([b"build 0"], 0), "end": ([b"ending 0"], 0)}
    assert second.outcome() == {"say": ([b"build 1"], 0), "end": ([b"ending 1"], 1)}
    # Opened again for the second build: a list and a watch each time.
    sent = _pod_requests(target, before)
    assert (sent[("list", "pods")], sent[("watch", "pods")]) == (2, 2)
