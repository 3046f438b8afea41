"""Handing a build pod from one worker to another: the adopting patch and the release
mark.

A build pod names the worker that runs it in its ``buildruntime.io/worker`` label and is
owned by that worker's Lease. A worker adopts a build with one patch that moves both to
itself (the label, and the ownerReference from the old Lease to its own), conditional on
the pod's resourceVersion as it read it: of two workers adopting the same build, the API
server lets exactly one patch through and answers the other 409 Conflict. The loser reads
the pod again and finds it held by the winner (:class:`BuildAdoptedError`); a conflict
caused by anything else (the kubelet updating the pod's status) is retried.

Only a build whose worker is gone may be adopted: one it released (a rolling upgrade:
the pod is marked so), or one whose worker's Lease is gone or no longer renewed. A Lease
that may still be renewed is watched until it has gone unrenewed for its whole duration
on this worker's clock (no other machine's clock is trusted, as the reaper's rule): a
renewal in the meantime means the holder is alive, and the adopter gets
:class:`BuildAdoptedError` at once.
"""

from __future__ import annotations

import base64
import json
from functools import partial

import anyio

from buildruntime import api_calls
from buildruntime.cluster.port import JSON, ApiError, Cluster, ConflictError, NotFoundError
from buildruntime.errors import BuildAdoptedError, BuildRuntimeError, PodGoneError, UsageError
from buildruntime.labels import BUILD_ID, MANAGED_BY, MANAGED_BY_VALUE, WORKER, build_selector
from buildruntime.secrets import pull_secret_name, secret_name
from buildruntime.spec_record import RecordedBuild
from buildruntime.workers import LEASE_API_VERSION, declared_duration, lease_name

RELEASED_ANNOTATION = "buildruntime.io/released-by"
"""Set by a worker that left the build for another to adopt: its worker id."""

MAX_CONFLICTS = 10
"""Conflicts from other writers (the kubelet) retried before giving up."""
LEASE_CHECK_INTERVAL = 1.0
"""Seconds between reads of a holder's Lease while waiting to see whether it is renewed."""
LAPSE_MARGIN = 1.0
"""Seconds past a Lease's duration before an unrenewed Lease counts as lapsed."""


def holder(pod: JSON) -> str | None:
    """The worker that holds the build pod, as its label says."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    value = labels.get(WORKER)
    return value if isinstance(value, str) else None


def released_by(pod: JSON) -> str | None:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(RELEASED_ANNOTATION)
    return value if isinstance(value, str) else None


async def find_pod(cluster: Cluster, namespace: str, build_id: str, *, api_timeout: float) -> JSON:
    """The build's pod as the API server holds it now (a consistent read);
    :class:`PodGoneError` when there is none or it is being deleted."""
    listed = await api_calls.send(
        partial(
            cluster.list,
            "pods",
            namespace,
            label_selector=build_selector(build_id),
            resource_version=None,
        ),
        api_timeout=api_timeout,
        build_id=build_id,
        step=None,
        what="find the build's pod",
    )
    items = [
        pod
        for pod in listed.get("items") or []
        if (pod.get("metadata") or {}).get("name") == build_id
    ]
    if not items:
        raise PodGoneError(
            f"no build pod named {build_id} in namespace {namespace} to attach to "
            "(it ended and was removed, or it never existed)",
            build_id=build_id,
            reason="NotFound",
        )
    pod: JSON = items[0]
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        raise PodGoneError(
            f"the build's pod in namespace {namespace} is being deleted",
            build_id=build_id,
            reason="Deleting",
        )
    return pod


def _is_lease(ref: JSON) -> bool:
    return ref.get("kind") == "Lease" and ref.get("apiVersion") == LEASE_API_VERSION


async def adopt(
    cluster: Cluster,
    namespace: str,
    build_id: str,
    worker_id: str,
    owner: JSON,
    *,
    api_timeout: float,
) -> JSON:
    """Move the build's pod to ``worker_id``, owned by ``owner`` (its Lease's
    ownerReference); returns the pod as patched.

    :class:`BuildAdoptedError` when the holder is alive, or another worker adopted it
    between this worker's read and its patch; :class:`PodGoneError` when there is no
    such pod; :class:`UsageError` when the pod is not a build pod.
    """
    pod = await find_pod(cluster, namespace, build_id, api_timeout=api_timeout)
    # The holder may be this worker id: a worker restarted under the same id (a
    # StatefulSet's pod name) takes its builds back.
    first_holder = holder(pod)
    if first_holder not in (None, worker_id) and released_by(pod) != first_holder:
        await _wait_until_gone(cluster, namespace, build_id, first_holder, api_timeout)
        pod = await find_pod(cluster, namespace, build_id, api_timeout=api_timeout)
    for _ in range(MAX_CONFLICTS):
        metadata = pod["metadata"]
        labels = metadata.get("labels") or {}
        if labels.get(MANAGED_BY) != MANAGED_BY_VALUE or labels.get(BUILD_ID) != build_id:
            raise UsageError(
                f"pod {build_id} is not a build pod of buildruntime", build_id=build_id
            )
        current = holder(pod)
        if current != first_holder:
            raise BuildAdoptedError(
                f"worker {current} adopted the build first",
                build_id=build_id,
                worker=current,
            )
        owners = [
            {"$patch": "delete", "uid": ref["uid"]}
            for ref in metadata.get("ownerReferences") or []
            if _is_lease(ref) and ref.get("uid") != owner["uid"]
        ]
        patch: JSON = {
            "metadata": {
                "resourceVersion": metadata["resourceVersion"],
                "labels": {WORKER: worker_id},
                "annotations": {RELEASED_ANNOTATION: None},
                "ownerReferences": [*owners, owner],
            }
        }
        try:
            return await api_calls.send(
                partial(cluster.patch_pod, namespace, build_id, patch),
                api_timeout=api_timeout,
                build_id=build_id,
                step=None,
                what="adopt the build's pod",
            )
        except NotFoundError:
            raise PodGoneError(
                f"the build's pod left namespace {namespace} while it was being adopted",
                build_id=build_id,
                reason="NotFound",
            ) from None
        except ConflictError:
            # Someone wrote the pod since it was read: another adopter, or the kubelet.
            pod = await find_pod(cluster, namespace, build_id, api_timeout=api_timeout)
    raise BuildAdoptedError(
        f"the pod kept changing while it was being adopted ({MAX_CONFLICTS} conflicts)",
        build_id=build_id,
        worker=holder(pod),
    )


async def _wait_until_gone(
    cluster: Cluster, namespace: str, build_id: str, worker: str, api_timeout: float
) -> None:
    """Return once ``worker``'s Lease is gone or has gone unrenewed for its whole
    duration (seen on this clock); :class:`BuildAdoptedError` as soon as it is renewed."""
    first = await _read_lease(cluster, namespace, build_id, worker, api_timeout)
    if first is None:
        return
    version = first["metadata"].get("resourceVersion")
    deadline = anyio.current_time() + declared_duration(first) + LAPSE_MARGIN
    while anyio.current_time() < deadline:
        await anyio.sleep(min(LEASE_CHECK_INTERVAL, max(deadline - anyio.current_time(), 0)))
        lease = await _read_lease(cluster, namespace, build_id, worker, api_timeout)
        if lease is None:
            return
        if lease["metadata"].get("resourceVersion") != version:
            raise BuildAdoptedError(
                f"worker {worker} holds the build and is alive (it renewed its Lease)",
                build_id=build_id,
                worker=worker,
            )


async def _read_lease(
    cluster: Cluster, namespace: str, build_id: str, worker: str, api_timeout: float
) -> JSON | None:
    try:
        lease: JSON = await api_calls.send(
            partial(cluster.get_lease, namespace, lease_name(worker)),
            api_timeout=api_timeout,
            build_id=build_id,
            step=None,
            what=f"read the Lease of worker {worker}",
        )
    except NotFoundError:
        return None
    return lease


async def release(
    cluster: Cluster, namespace: str, build_id: str, worker_id: str, *, api_timeout: float
) -> None:
    """Mark the build released by ``worker_id``, for another worker to adopt; a pod
    already gone, or already another worker's, is left as it is."""
    for _ in range(MAX_CONFLICTS):
        try:
            pod = await find_pod(cluster, namespace, build_id, api_timeout=api_timeout)
        except PodGoneError:
            return
        if holder(pod) != worker_id:
            return
        patch: JSON = {
            "metadata": {
                "resourceVersion": pod["metadata"]["resourceVersion"],
                "annotations": {RELEASED_ANNOTATION: worker_id},
            }
        }
        try:
            await api_calls.send(
                partial(cluster.patch_pod, namespace, build_id, patch),
                api_timeout=api_timeout,
                build_id=build_id,
                step=None,
                what="release the build's pod",
            )
            return
        except NotFoundError:
            return
        except ConflictError:
            continue  # the kubelet wrote the pod since it was read: read it again


async def secret_values(
    cluster: Cluster,
    namespace: str,
    recorded: RecordedBuild,
    *,
    api_timeout: float,
) -> tuple[dict[str, str], dict[str, str]]:
    """The build's secret values and registry passwords, read back from its Secrets so
    that the adopting worker masks them as the first did. Masking cannot be done
    without them: a Secret that cannot be read is an error, not a build left unmasked."""
    build_id = recorded.spec.build_id
    pod = recorded.spec.pod_name
    values: dict[str, str] = {}
    passwords: dict[str, str] = {}
    if recorded.secret_names:
        data = await _secret_data(cluster, namespace, secret_name(pod), build_id, api_timeout)
        values = {key: base64.b64decode(value).decode() for key, value in data.items()}
    if recorded.registry_hosts:
        data = await _secret_data(cluster, namespace, pull_secret_name(pod), build_id, api_timeout)
        config = json.loads(base64.b64decode(data.get(".dockerconfigjson", "")) or b"{}")
        auths = config.get("auths") or {}
        passwords = {host: str((auths.get(host) or {}).get("password", "")) for host in auths}
    return values, passwords


async def _secret_data(
    cluster: Cluster, namespace: str, name: str, build_id: str, api_timeout: float
) -> dict[str, str]:
    try:
        secret = await api_calls.send(
            partial(cluster.get_secret, namespace, name),
            api_timeout=api_timeout,
            build_id=build_id,
            step=None,
            what=f"read the build's Secret {name}",
        )
    except ApiError as error:
        raise BuildRuntimeError(
            f"cannot read the build's Secret {name}, whose values its logs must be masked of",
            build_id=build_id,
            reason=error.reason,
            message=error.message,
        ) from error
    data: dict[str, str] = secret.get("data") or {}
    return data
