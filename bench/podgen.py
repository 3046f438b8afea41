"""A deterministic recorded pod watch stream: realistic 10-container build pods.

Each pod looks like what the API server sends for a buildruntime pod on a real cluster
(the shape of a pod read back from the local cluster: managedFields of the creator and
of the kubelet's status updates, the defaulted spec, five conditions, and a full
container status per step). Over its events a pod goes through its build: step by step,
the placeholder runs, is swapped for the step image (spec image patched, the
placeholder's termination in ``lastState``, restartCount 1), which runs and completes.

The stream is ``PODS`` pods interleaved, ``events / PODS`` events each, every event a
``MODIFIED`` (the first of each pod an ``ADDED``) with a resourceVersion above the
previous one, one JSON object per line, as the API server writes a watch body.
"""

from __future__ import annotations

import functools
import json
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

STEPS = 10
PODS = 1_000
FIRST_RV = 1_000
NAMESPACE = "ci"
PLACEHOLDER = "localhost/pause:3.10"
PLACEHOLDER_ID = "sha256:873ed75102791e5b0b8a7fcd41606c92fcec98d56d05ead4ac5131650004c136"
IMAGES = ("golang:1.23", "node:22-alpine", "python:3.12-slim", "busybox", "alpine:3.20")
_EPOCH = datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)
FORMAT_VERSION = 2


@functools.lru_cache(maxsize=65536)
def _ts(seconds: float) -> str:
    return (_EPOCH + timedelta(seconds=int(seconds))).strftime("%Y-%m-%dT%H:%M:%SZ")


def _full_image(image: str) -> str:
    name, _, tag = image.partition(":")
    return f"docker.io/library/{name}:{tag or 'latest'}"


class _PodPlan:
    """The fixed parts of one pod (names, ids, spec), from which every event is made."""

    def __init__(self, rng: random.Random, index: int) -> None:
        self.name = f"repo-{index % 97}-{index}"
        self.uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.created = index * 3.0
        self.images = [rng.choice(IMAGES) for _ in range(STEPS)]
        self.ids = [
            (
                "".join(rng.choice("0123456789abcdef") for _ in range(64)),
                "".join(rng.choice("0123456789abcdef") for _ in range(64)),
            )
            for _ in range(STEPS)
        ]
        self.digests = {
            image: "".join(rng.choice("0123456789abcdef") for _ in range(64)) for image in IMAGES
        }
        self.pod_ip = f"10.88.{index // 250}.{index % 250 + 2}"
        self.commit = "".join(rng.choice("0123456789abcdef") for _ in range(40))

    def step_name(self, step: int) -> str:
        return f"step-{step}"

    def container_spec(self, step: int, patched: bool) -> dict[str, Any]:
        return {
            "name": self.step_name(step),
            "image": self.images[step] if patched else PLACEHOLDER,
            "args": [
                "/bin/sh",
                "-c",
                f"set -e\nmake step-{step}",
            ],
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "imagePullPolicy": "IfNotPresent",
        }

    def managed_fields(self, updated: float) -> list[dict[str, Any]]:
        containers: dict[str, Any] = {}
        for step in range(STEPS):
            containers[f'k:{{"name":"{self.step_name(step)}"}}'] = {
                ".": {},
                "f:args": {},
                "f:image": {},
                "f:imagePullPolicy": {},
                "f:name": {},
                "f:terminationMessagePath": {},
                "f:terminationMessagePolicy": {},
            }
        conditions: dict[str, Any] = {
            f'k:{{"type":"{kind}"}}': {
                ".": {},
                "f:lastProbeTime": {},
                "f:lastTransitionTime": {},
                "f:status": {},
                "f:type": {},
            }
            for kind in ("ContainersReady", "Initialized", "PodReadyToStartContainers", "Ready")
        }
        return [
            {
                "manager": "buildruntime",
                "operation": "Update",
                "apiVersion": "v1",
                "time": _ts(self.created),
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {
                        "f:annotations": {
                            ".": {},
                            "f:buildruntime.io/pause-image": {},
                            "f:buildruntime.io/steps": {},
                        },
                        "f:labels": {
                            ".": {},
                            "f:app.kubernetes.io/managed-by": {},
                            "f:buildruntime.io/build-id": {},
                        },
                    },
                    "f:spec": {
                        "f:automountServiceAccountToken": {},
                        "f:containers": containers,
                        "f:restartPolicy": {},
                        "f:terminationGracePeriodSeconds": {},
                    },
                },
            },
            {
                "manager": "kubelet",
                "operation": "Update",
                "apiVersion": "v1",
                "time": _ts(updated),
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:status": {
                        "f:conditions": conditions,
                        "f:containerStatuses": {},
                        "f:hostIP": {},
                        "f:hostIPs": {},
                        "f:phase": {},
                        "f:podIP": {},
                        "f:podIPs": {".": {}, f'k:{{"ip":"{self.pod_ip}"}}': {".": {}, "f:ip": {}}},
                        "f:startTime": {},
                    }
                },
                "subresource": "status",
            },
        ]

    def container_status(self, step: int, progress: int) -> tuple[bool, dict[str, Any]]:
        """(spec patched?, status) of one container when the build is at ``progress``
        (0..STEPS*10): step ``progress // 10`` is in phase ``progress % 10``."""
        current, phase = divmod(progress, 10)
        base = self.created + 2
        pause_id, step_id = self.ids[step]
        started = base + step * 10
        placeholder_running = {"running": {"startedAt": _ts(base)}}
        placeholder_done = {
            "terminated": {
                "containerID": f"containerd://{pause_id}",
                "exitCode": 2,
                "finishedAt": _ts(started + 1),
                "reason": "Error",
                "startedAt": _ts(base),
            }
        }
        image = self.images[step]
        image_ref = _full_image(image)
        image_id = f"{image_ref.rsplit(':', 1)[0]}@sha256:{self.digests[image]}"
        status: dict[str, Any] = {
            "containerID": f"containerd://{pause_id}",
            "image": PLACEHOLDER,
            "imageID": f"{PLACEHOLDER}@{PLACEHOLDER_ID}",
            "lastState": {},
            "name": self.step_name(step),
            "ready": True,
            "restartCount": 0,
            "started": True,
            "state": placeholder_running,
        }
        if step > current or (step == current and phase < 2):
            return step == current and phase == 1, status
        # Patched: the placeholder was killed and the step image (re)starts.
        status["lastState"] = placeholder_done
        status["restartCount"] = 1
        status["image"] = image_ref
        status["imageID"] = image_id
        if step == current and phase < 4:
            status.update(
                containerID=f"containerd://{pause_id}",
                ready=False,
                started=False,
                state={"waiting": {"reason": "ContainerCreating"}},
            )
            return True, status
        status["containerID"] = f"containerd://{step_id}"
        if step == current and phase < 9:
            status["state"] = {"running": {"startedAt": _ts(started + 2)}}
            return True, status
        status.update(
            ready=False,
            started=False,
            state={
                "terminated": {
                    "containerID": f"containerd://{step_id}",
                    "exitCode": 0,
                    "finishedAt": _ts(started + 8),
                    "reason": "Completed",
                    "startedAt": _ts(started + 2),
                }
            },
        )
        return True, status

    def pod(self, progress: int, resource_version: int) -> dict[str, Any]:
        statuses = [self.container_status(step, progress) for step in range(STEPS)]
        updated = self.created + 2 + progress
        ready = all(s["ready"] for _, s in statuses)
        cond_ready = "True" if ready else "False"
        conditions: list[dict[str, Any]] = [
            {
                "type": "PodReadyToStartContainers",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": _ts(self.created + 2),
            },
            {
                "type": "Initialized",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": _ts(self.created + 1),
            },
            {
                "type": "Ready",
                "status": cond_ready,
                "lastProbeTime": None,
                "lastTransitionTime": _ts(updated),
                **({} if ready else {"reason": "ContainersNotReady"}),
            },
            {
                "type": "ContainersReady",
                "status": cond_ready,
                "lastProbeTime": None,
                "lastTransitionTime": _ts(updated),
                **({} if ready else {"reason": "ContainersNotReady"}),
            },
            {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": _ts(self.created),
            },
        ]
        if not ready:
            not_ready = ", ".join(s["name"] for _, s in statuses if not s["ready"])
            for condition in conditions[2:4]:
                condition["message"] = f"containers with unready status: [{not_ready}]"
        return {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": self.name,
                "namespace": NAMESPACE,
                "uid": self.uid,
                "resourceVersion": str(resource_version),
                "generation": 1 + sum(1 for patched, _ in statuses if patched),
                "creationTimestamp": _ts(self.created),
                "labels": {
                    "app.kubernetes.io/managed-by": "buildruntime",
                    "buildruntime.io/build-id": self.name,
                },
                "annotations": {
                    "buildruntime.io/pause-image": PLACEHOLDER,
                    "buildruntime.io/steps": ",".join(
                        self.step_name(step) for step in range(STEPS)
                    ),
                },
                "managedFields": self.managed_fields(updated),
            },
            "spec": {
                "containers": [
                    self.container_spec(step, patched) for step, (patched, _) in enumerate(statuses)
                ],
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 5,
                "dnsPolicy": "ClusterFirst",
                "automountServiceAccountToken": False,
                "serviceAccountName": "default",
                "serviceAccount": "default",
                "nodeName": "worker-node-1",
                "securityContext": {},
                "schedulerName": "default-scheduler",
                "tolerations": [
                    {
                        "key": "node.kubernetes.io/not-ready",
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": 300,
                    },
                    {
                        "key": "node.kubernetes.io/unreachable",
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": 300,
                    },
                ],
                "priority": 0,
                "enableServiceLinks": True,
                "preemptionPolicy": "PreemptLowerPriority",
            },
            "status": {
                "phase": "Running",
                "conditions": conditions,
                "hostIP": "10.0.0.11",
                "hostIPs": [{"ip": "10.0.0.11"}],
                "podIP": self.pod_ip,
                "podIPs": [{"ip": self.pod_ip}],
                "startTime": _ts(self.created),
                "containerStatuses": [status for _, status in statuses],
                "qosClass": "BestEffort",
            },
        }


def events(count: int, *, pods: int = PODS, seed: int = 42) -> Iterator[bytes]:
    """``count`` watch event lines (each ending in a newline), deterministically."""
    rng = random.Random(seed)
    plans = [_PodPlan(rng, index) for index in range(pods)]
    per_pod = max(1, -(-count // pods))
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    for number in range(count):
        round_, index = divmod(number, pods)
        progress = round_ * (STEPS * 10) // per_pod
        obj = plans[index].pod(progress, FIRST_RV + number)
        event = {"type": "ADDED" if round_ == 0 else "MODIFIED", "object": obj}
        yield dumps(event).encode() + b"\n"


def recorded_stream(count: int, cache_dir: Path, *, seed: int = 42) -> Path:
    """The file holding the stream of ``count`` events, generated once and cached."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"pod-watch-v{FORMAT_VERSION}-{count}-seed{seed}.jsonl"
    if path.exists():
        return path
    partial = path.with_suffix(".partial")
    with partial.open("wb") as out:
        block: list[bytes] = []
        for line in events(count, seed=seed):
            block.append(line)
            if len(block) >= 1_000:
                out.write(b"".join(block))
                block.clear()
        out.write(b"".join(block))
    partial.rename(path)
    return path


def sampled_stream(path: Path, count: int) -> Path:
    """``count`` events spread evenly over the stream in ``path`` (event ``i * k + i %
    k`` for a stride ``k``, so the sample goes through every pod and every stage of
    its build, with the same mix of sizes), as a cached file of its own."""
    total = sum(1 for _ in path.open("rb"))
    if count >= total:
        return path
    stride = total // count
    sample = path.with_name(f"{path.stem}-sample{count}.jsonl")
    if sample.exists():
        return sample
    wanted = {i * stride + i % stride for i in range(count)}
    partial = sample.with_suffix(".partial")
    with path.open("rb") as source, partial.open("wb") as out:
        for number, line in enumerate(source):
            if number in wanted:
                out.write(line)
    partial.rename(sample)
    return sample


if __name__ == "__main__":
    lines = list(events(PODS * 100))
    sizes = [len(line) for line in lines]
    mean = sum(sizes) / len(sizes)
    print(f"{len(lines):,} events: {min(sizes):,} to {max(sizes):,} bytes, mean {mean:,.0f}")
    print(lines[PODS * 55].decode()[:3000])
