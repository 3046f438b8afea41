"""Events reach the build whose pod they name, with one events watch per runtime (the
default, ``shared_event_watch=True``) or one per build, when builds run side by side in
one namespace."""

from __future__ import annotations

import uuid
from collections import Counter

import anyio
import pytest

from buildruntime import BuildEvent, BuildSpec, Failure, ImagePullError, Runtime, StepSpec

from .conftest import BUSYBOX, Target, target_kind
from .observe import Observed, run_build

pytestmark = pytest.mark.anyio

MISSING_IMAGE = "localhost/does-not-exist:1.0"


@pytest.fixture(params=["asyncio", "trio"] if target_kind() == "fake" else ["asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def _missing_image_build(rt: Runtime, spec: BuildSpec) -> tuple[str, list[BuildEvent]]:
    build = await rt.setup_build(spec)
    await rt.assemble_build(build)
    try:
        with anyio.fail_after(120), pytest.raises(ImagePullError) as caught:
            await rt.run_container(build, "pull")
    finally:
        await rt.remove_build(build)
    return str(caught.value), [event async for event in build.events()]


@pytest.mark.parametrize("shared", [True, False], ids=["shared-watch", "watch-per-build"])
async def test_concurrent_builds_each_get_exactly_their_own_pods_events(
    target: Target, shared: bool
) -> None:
    good = [
        BuildSpec(
            build_id=_id("own"),
            steps=[StepSpec(name="s", image=BUSYBOX, commands=[f"echo build {i}"])],
        )
        for i in range(3)
    ]
    bad = BuildSpec(
        build_id=_id("own-missing"),
        steps=[StepSpec(name="pull", image=MISSING_IMAGE, commands=["true"])],
    )
    seen: dict[str, Observed] = {}
    failed: list[tuple[str, list[BuildEvent]]] = []
    before = len(target.requests)

    async with target.runtime(shared_event_watch=shared) as rt:

        async def good_build(spec: BuildSpec) -> None:
            seen[spec.build_id] = await run_build(rt, spec)

        async def bad_build() -> None:
            failed.append(await _missing_image_build(rt, bad))

        async with anyio.create_task_group() as tg:
            for spec in good:
                tg.start_soon(good_build, spec)
            tg.start_soon(bad_build)

    for i, spec in enumerate(good):
        observed = seen[spec.build_id]
        assert observed.lines["s"] == [f"build {i}".encode()]
        assert observed.results["s"].exit_code == 0
        assert {event.build_id for event in observed.events} == {spec.build_id}
        kinds = [event.kind for event in observed.events]
        # Kubernetes Events of its own pod: scheduled, the step image pulled.
        assert "scheduled" in kinds, kinds
        assert "pulled" in kinds, kinds
        # None of the other pod's pull failures leaked in.
        assert "warning" not in kinds, observed.events
        assert "failed" not in kinds, observed.events
        assert not any(MISSING_IMAGE in (event.message or "") for event in observed.events)

    [(error, events)] = failed
    assert MISSING_IMAGE in error
    assert {event.build_id for event in events} == {bad.build_id}
    assert any(e.kind == "failed" and e.failure == Failure.IMAGE_PULL for e in events), events
    assert any(e.kind == "warning" and MISSING_IMAGE in (e.message or "") for e in events)

    sent = Counter((r.verb, r.resource) for r in target.requests[before:] if r.resource != "leases")
    # Events start at each pod's creation with no list, in both modes.
    assert sent[("list", "events")] == 0
    # Shared: one watch, started no later than the oldest of the concurrent creates (each
    # build announces its create before sending it), so never started again.
    assert sent[("watch", "events")] == (1 if shared else len(good) + 1)
    # Pods: the runtime's one shared watch (test_shared_pods.py has the other mode).
    assert sent[("watch", "pods")] == 1
