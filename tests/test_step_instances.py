"""Which container instance is the step's: the fan-out fed hand-written pod statuses, as
a real kubelet writes them, with no event loop and no cluster."""

from __future__ import annotations

from typing import Any

import msgspec

from buildruntime.build_view import BuildView, StepView
from buildruntime.events import BuildEvent
from buildruntime.informer.fanout import PodFanout
from buildruntime.informer.snapshots import EventSnapshot, PodSnapshot
from buildruntime.informer.store import Delta
from buildruntime.results import Failure

PAUSE = "localhost/pause:3.10"
ALIAS = "docker.io/kubernetes/pause:latest"
PAUSE_ID = "sha256:" + "a" * 64
BUSYBOX_ID = "docker.io/library/busybox@sha256:" + "b" * 64


def _running(image: str, image_id: str, container_id: str, restarts: int = 0) -> dict[str, Any]:
    return {
        "name": "s",
        "image": image,
        "imageID": image_id,
        "containerID": container_id,
        "restartCount": restarts,
        "state": {"running": {"startedAt": "2026-12-06T07:00:00Z"}},
    }


def _pod(spec_image: str, *statuses: dict[str, Any], sibling: str | None = None) -> PodSnapshot:
    containers = [{"name": "s", "image": spec_image}]
    if sibling is not None:
        containers.append({"name": "t", "image": sibling})
    return msgspec.convert(
        {
            "metadata": {"name": "b", "namespace": "ci", "uid": "u1", "resourceVersion": "1"},
            "spec": {"nodeName": "n", "containers": containers},
            "status": {"phase": "Running", "containerStatuses": list(statuses)},
        },
        PodSnapshot,
    )


class _Build:
    """A fan-out and the view it feeds, as the runtime pairs them."""

    def __init__(self, steps: list[str], step_images: dict[str, str] | None = None) -> None:
        self.view = BuildView("b", steps)
        self.fanout = PodFanout(steps, PAUSE, self.view, pod_uid="u1", step_images=step_images)

    def feed(self, *pods: PodSnapshot) -> StepView:
        old: PodSnapshot | None = None
        for pod in pods:
            self.fanout.on_pod(Delta(old, pod))
            old = pod
        view = self.view.states["s"].latest
        assert view is not None
        return view

    def events(self) -> list[BuildEvent]:
        return self.view.build_events.items_from(0)[0]


def _fanout() -> _Build:
    return _Build(["s"], {"s": "busybox"})


def test_a_placeholder_reported_under_a_second_tag_is_not_the_step() -> None:
    fanout = _fanout()
    before = _pod(PAUSE, _running(ALIAS, PAUSE_ID, "containerd://p1"))
    patched = _pod("busybox", _running(ALIAS, PAUSE_ID, "containerd://p1"))
    view = fanout.feed(before, patched)
    assert view.patched
    assert not view.is_step
    assert not view.started
    assert [e.kind for e in fanout.events()] == ["scheduled"]
    step = _pod("busybox", _running("docker.io/library/busybox:latest", BUSYBOX_ID, "c://s1", 1))
    view = fanout.feed(step)
    assert view.is_step
    assert view.started


def test_a_late_reader_tells_the_placeholder_by_its_image_id() -> None:
    """A monitor that joins after the patch never saw the placeholder's instance: a
    sibling still on the placeholder tells its image ID, whatever tag is reported."""
    fanout = _Build(["s", "t"])
    sibling = {**_running(ALIAS, PAUSE_ID, "c://t0"), "name": "t"}
    view = fanout.feed(_pod("busybox", _running(ALIAS, PAUSE_ID, "c://p1"), sibling, sibling=PAUSE))
    assert not view.is_step
    view = fanout.feed(
        _pod("busybox", _running("busybox", BUSYBOX_ID, "c://s1"), sibling, sibling=PAUSE)
    )
    assert view.is_step


def test_a_step_whose_image_is_the_placeholders_is_told_by_its_new_instance() -> None:
    fanout = _Build(["s"], {"s": PAUSE})
    view = fanout.feed(
        _pod(PAUSE, _running(PAUSE, PAUSE_ID, "c://p1")),
        _pod("localhost/pause:3.10-step", _running(PAUSE, PAUSE_ID, "c://p1")),
    )
    assert not view.is_step
    view = fanout.feed(_pod("localhost/pause:3.10-step", _running(PAUSE, PAUSE_ID, "c://s1", 1)))
    assert view.is_step


def test_a_step_patched_back_to_the_placeholder_is_stopped() -> None:
    """The kubelet's statuses when the runtime stops a step at its timeout: the step's
    instance still running (being stopped), then the placeholder again with the step's
    end as its lastState."""
    fanout = _fanout()
    started = _pod("busybox", _running("busybox", BUSYBOX_ID, "c://s1", 1))
    fanout.feed(_pod(PAUSE, _running(PAUSE, PAUSE_ID, "c://p1")), started)
    stopping = _pod(PAUSE, _running("busybox", BUSYBOX_ID, "c://s1", 1))
    view = fanout.feed(stopping)
    assert view.stopped
    assert view.is_step
    assert not view.ended
    replaced = _running(ALIAS, PAUSE_ID, "c://p2", 2)
    replaced["lastState"] = {
        "terminated": {
            "containerID": "c://s1",
            "exitCode": 137,
            "reason": "Error",
            "startedAt": "2026-12-06T07:00:00Z",
            "finishedAt": "2026-12-06T07:00:09Z",
        }
    }
    view = fanout.feed(_pod(PAUSE, replaced))
    assert view.stopped
    assert view.ended
    assert view.step_container is not None
    assert view.step_container.exit_code == 137
    failed = [e for e in fanout.events() if e.kind == "failed"]
    assert [(e.step, e.failure, e.exit_code) for e in failed] == [("s", Failure.TIMEOUT, 137)]


def _warning(reason: str, message: str) -> EventSnapshot:
    return msgspec.convert(
        {
            "metadata": {
                "name": f"e-{reason}-{len(message)}",
                "uid": message,
                "resourceVersion": "2",
            },
            "involvedObject": {
                "kind": "Pod",
                "name": "b",
                "uid": "u1",
                "fieldPath": "spec.containers{s}",
            },
            "type": "Warning",
            "reason": reason,
            "message": message,
            "count": 1,
        },
        EventSnapshot,
    )


def test_a_placeholder_that_cannot_be_pulled_is_no_steps_failure() -> None:
    fanout = _fanout()
    waiting = {
        "name": "s",
        "image": PAUSE,
        "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}},
    }
    fanout.feed(_pod(PAUSE, waiting))
    for reason, message in (
        ("Failed", f'Failed to pull image "{PAUSE}": not found'),
        ("Failed", "Error: ErrImagePull"),
        ("BackOff", f'Back-off pulling image "{PAUSE}"'),
    ):
        fanout.fanout.on_event(Delta(None, _warning(reason, message)))
    view = fanout.view.states["s"].latest
    assert view is not None
    assert view.failure is None
    assert not [e for e in fanout.events() if e.kind == "failed"]
    # The same events about the step image, after the patch, are the step's failure.
    fanout.feed(_pod("localhost/nope:1", waiting))
    fanout.fanout.on_event(
        Delta(None, _warning("Failed", 'Failed to pull image "localhost/nope:1": x'))
    )
    view = fanout.view.states["s"].latest
    assert view is not None
    assert view.failure is not None
    assert view.failure.failure is Failure.IMAGE_PULL
