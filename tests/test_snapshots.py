"""Watch lines decoded straight into snapshots: what the cache reads of a pod or an
event, including the shapes the strict decoder refuses (which must still arrive)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from buildruntime.cluster.port import ApiError, ExpiredError
from buildruntime.cluster.watch_events import decode_typed_event
from buildruntime.informer.decoders import EVENT_SNAPSHOTS, POD_SNAPSHOTS
from buildruntime.informer.snapshots import PodSnapshot


def _line(kind: str, obj: Any) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode()


POD: dict[str, Any] = {
    "kind": "Pod",
    "apiVersion": "v1",
    "metadata": {
        "name": "b1",
        "namespace": "ci",
        "uid": "u1",
        "resourceVersion": "42",
        "labels": {"app.kubernetes.io/managed-by": "buildruntime"},
        "annotations": {"buildruntime.io/steps": '["a","b"]', "other": "x"},
        "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
    },
    "spec": {
        "nodeName": "node-1",
        "containers": [
            {"name": "a", "image": "busybox", "args": ["echo"]},
            {"name": "b", "image": "alpine:3"},
        ],
        "volumes": [{"name": "v", "emptyDir": {}}],
    },
    "status": {
        "phase": "Running",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"},
        ],
        "containerStatuses": [
            {
                "name": "a",
                "image": "docker.io/library/busybox:latest",
                "imageID": "sha256:1",
                "containerID": "containerd://c1",
                "restartCount": 0,
                "ready": False,
                "state": {
                    "terminated": {
                        "exitCode": 3,
                        "reason": "Error",
                        "startedAt": "2026-11-23T10:00:00Z",
                        "finishedAt": "2026-11-23T10:00:01Z",
                        "containerID": "containerd://c1",
                    }
                },
                "lastState": {},
            },
            {
                "name": "b",
                "image": "pause:3.10",
                "imageID": "",
                "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}},
            },
        ],
    },
}


def test_a_pod_line_decodes_to_what_the_runtime_reads() -> None:
    event = POD_SNAPSHOTS(_line("MODIFIED", POD))
    pod = event.object
    assert (event.type, pod.name, pod.namespace, pod.uid, pod.resource_version) == (
        "MODIFIED",
        "b1",
        "ci",
        "u1",
        "42",
    )
    assert (pod.node_name, pod.phase, pod.scheduled, pod.deleting) == (
        "node-1",
        "Running",
        True,
        False,
    )
    assert pod.unschedulable_message is None
    assert pod.disruption_message == "EvictionByEvictionAPI"
    assert pod.spec_images == {"a": "busybox", "b": "alpine:3"}
    assert pod.spec_image("b") == "alpine:3"
    assert pod.label("app.kubernetes.io/managed-by") == "buildruntime"
    assert pod.annotation("buildruntime.io/steps") == '["a","b"]'
    a, b = pod.container("a"), pod.container("b")
    assert a is not None
    assert b is not None
    assert (a.phase, a.exit_code, a.reason, a.container_id, a.image) == (
        "terminated",
        3,
        "Error",
        "containerd://c1",
        "docker.io/library/busybox:latest",
    )
    assert (a.started_at, a.finished_at) == ("2026-11-23T10:00:00Z", "2026-11-23T10:00:01Z")
    assert (b.phase, b.reason, b.message, b.exit_code, b.container_id) == (
        "waiting",
        "ErrImagePull",
        "not found",
        None,
        None,
    )
    # The same pod from a list item (a relist) is the same snapshot.
    assert POD_SNAPSHOTS.from_item(POD) == pod


def test_an_unscheduled_pod_says_why() -> None:
    obj = {
        "metadata": {"name": "b1", "uid": "u1", "resourceVersion": "5", "deletionTimestamp": "x"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes",
                }
            ],
        },
    }
    pod = POD_SNAPSHOTS(_line("ADDED", obj)).object
    assert (pod.scheduled, pod.unschedulable_message, pod.deleting) == (False, "0/1 nodes", True)
    assert pod.containers == ()
    assert pod.container("a") is None


def test_an_event_line_decodes_to_what_the_runtime_reads() -> None:
    obj = {
        "metadata": {"name": "b1.17", "uid": "e1", "resourceVersion": "9"},
        "involvedObject": {
            "kind": "Pod",
            "name": "b1",
            "uid": "u1",
            "fieldPath": "spec.containers{a}",
        },
        "reason": "BackOff",
        "message": "Back-off pulling image",
        "type": "Warning",
        "count": 2,
        "series": {"count": 5, "lastObservedTime": "2026-11-23T10:00:09.000000Z"},
        "firstTimestamp": "2026-11-23T10:00:00Z",
        "lastTimestamp": "2026-11-23T10:00:04Z",
    }
    event = EVENT_SNAPSHOTS(_line("ADDED", obj)).object
    assert (event.uid, event.resource_version, event.pod_name, event.pod_uid, event.container) == (
        "e1",
        "9",
        "b1",
        "u1",
        "a",
    )
    assert (event.type, event.reason, event.message, event.count) == (
        "Warning",
        "BackOff",
        "Back-off pulling image",
        5,
    )
    assert (event.first_seen, event.last_seen) == (
        "2026-11-23T10:00:00Z",
        "2026-11-23T10:00:09.000000Z",
    )
    bare = EVENT_SNAPSHOTS(
        _line(
            "ADDED",
            {"metadata": {"name": "n"}, "involvedObject": {"fieldPath": "spec.initContainers{x}"}},
        )
    ).object
    assert (bare.uid, bare.type, bare.reason, bare.count, bare.container) == (
        "n",
        "Normal",
        "",
        1,
        None,
    )


def test_an_unexpected_field_type_still_arrives_through_the_lenient_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    odd = json.loads(json.dumps(POD))
    odd["status"]["containerStatuses"][0]["restartCount"] = "2"  # a string, not an int
    event = decode_typed_event(_line("MODIFIED", odd), POD_SNAPSHOTS)
    assert event is not None
    container = event.object.container("a")
    assert container is not None
    assert container.restart_count == 2
    assert caplog.records == []


def test_what_is_not_an_event_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="buildruntime.cluster")
    assert decode_typed_event(b"{not json", POD_SNAPSHOTS) is None
    assert decode_typed_event(b'{"type": "ADDED", "object": [1, 2]}', POD_SNAPSHOTS) is None
    assert len(caplog.records) == 2


@pytest.mark.parametrize("decoder", [POD_SNAPSHOTS, EVENT_SNAPSHOTS])
def test_error_events_raise_whatever_the_decoder(decoder: Any) -> None:
    expired = {
        "kind": "Status",
        "status": "Failure",
        "message": "too old resource version: 1 (5)",
        "reason": "Expired",
        "code": 410,
    }
    with pytest.raises(ExpiredError, match="too old resource version"):
        decode_typed_event(_line("ERROR", expired), decoder)
    other = {
        "kind": "Status",
        "status": "Failure",
        "message": "etcd is sad",
        "reason": "InternalError",
        "code": 500,
    }
    with pytest.raises(ApiError) as caught:
        decode_typed_event(_line("ERROR", other), decoder)
    assert (caught.value.status, caught.value.message) == (500, "etcd is sad")


def test_snapshots_are_immutable() -> None:
    pod = POD_SNAPSHOTS(_line("ADDED", POD)).object
    assert isinstance(pod, PodSnapshot)
    with pytest.raises(AttributeError):
        pod.metadata = pod.metadata  # type: ignore[misc]


def test_a_real_pods_bookmark_decodes_to_its_resource_version() -> None:
    # What kube-apiserver 1.33 sends: a nil slice is written as null.
    line = (
        b'{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":'
        b'{"resourceVersion":"2137","creationTimestamp":null},"spec":{"containers":null},'
        b'"status":{}}}'
    )
    event = decode_typed_event(line, POD_SNAPSHOTS)
    assert event is not None
    assert (event.type, event.object.resource_version) == ("BOOKMARK", "2137")
    assert (event.object.containers, event.object.spec_images) == ((), {})
    assert event.object.label("x") is None
