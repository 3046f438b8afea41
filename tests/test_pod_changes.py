"""A pod's successive snapshots through the cache and the fan-out: unchanged parts are
shared with the snapshot before, and every container's change reaches its step's view,
whatever order the statuses are listed in and whichever appear or vanish."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from buildruntime.build_view import BuildView
from buildruntime.informer.fanout import PodFanout
from buildruntime.informer.snapshots import ContainerStatus, PodSnapshot
from buildruntime.informer.store import Store

STEPS = ["a", "b", "c", "d"]
PAUSE = "localhost/pause:3.10"


def _status(name: str, phase: str, instance: int, ready: bool) -> dict[str, Any]:
    detail: dict[str, Any] = {"startedAt": "2026-12-06T07:00:00Z"}
    if phase == "terminated":
        detail.update(exitCode=instance % 3, finishedAt="2026-12-06T07:00:05Z")
    elif phase == "waiting":
        detail = {"reason": "ContainerCreating"}
    return {
        "name": name,
        "image": "docker.io/library/busybox:latest",
        "imageID": "docker.io/library/busybox@sha256:" + "b" * 64,
        "containerID": f"containerd://{name}-{instance}",
        "restartCount": 1,
        "ready": ready,
        "state": {phase: detail},
    }


statuses = st.lists(
    st.tuples(
        st.sampled_from(STEPS),
        st.sampled_from(["waiting", "running", "terminated"]),
        st.integers(0, 2),
        st.booleans(),
    ),
    max_size=len(STEPS),
    unique_by=lambda status: status[0],
)
"""The container statuses of one snapshot: any subset of the steps, in any order."""


def _pod(version: int, listed: list[tuple[str, str, int, bool]], label: str) -> PodSnapshot:
    return msgspec.convert(
        {
            "metadata": {
                "name": "p",
                "namespace": "ci",
                "uid": "u1",
                "resourceVersion": str(version),
                "labels": {"build": label},
            },
            "spec": {
                "nodeName": "n",
                "containers": [{"name": step, "image": "busybox"} for step in STEPS],
            },
            "status": {
                "phase": "Running",
                "containerStatuses": [_status(*status) for status in listed],
            },
        },
        PodSnapshot,
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(statuses, st.sampled_from(["x", "y"])), min_size=1, max_size=12))
def test_every_container_change_reaches_its_step_and_unchanged_parts_are_shared(
    snapshots: list[tuple[list[tuple[str, str, int, bool]], str]],
) -> None:
    store = Store()
    view = BuildView("p", STEPS)
    images = dict.fromkeys(STEPS, "busybox")
    fanout = PodFanout(STEPS, PAUSE, view, pod_uid="u1", step_images=images)
    cached: PodSnapshot | None = None
    for version, (listed, label) in enumerate(snapshots, start=1):
        decoded = _pod(version, listed, label)
        delta = store.apply_pod("MODIFIED", decoded)
        assert delta is not None
        assert delta.new == decoded
        new = delta.new
        if cached is not None:
            for now, then in zip(new.containers, cached.containers, strict=False):
                assert (now is then) == (now == then)
            same_label = label == cached.label("build")
            assert (new.metadata.labels is cached.metadata.labels) == same_label
            assert new.spec is cached.spec
        cached = new
        fanout.on_pod(delta)
        shown: dict[str, ContainerStatus] = {status.name: status for status in decoded.containers}
        for step in STEPS:
            latest = view.states[step].latest
            assert latest is not None
            assert latest.container == shown.get(step), (step, version)
