"""The labels that mark a pod as the runtime's own. The runtime never watches, patches or
deletes a pod that does not carry them."""

from __future__ import annotations

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "buildruntime"
BUILD_ID = "buildruntime.io/build-id"
WORKER = "buildruntime.io/worker"
"""The worker (``RuntimeSettings.worker_id``) whose Lease owns the pod."""


def managed_selector() -> str:
    """Selects every pod the runtime created."""
    return f"{MANAGED_BY}={MANAGED_BY_VALUE}"


def build_selector(build_id: str) -> str:
    """Selects exactly the pod of one build."""
    return f"{MANAGED_BY}={MANAGED_BY_VALUE},{BUILD_ID}={build_id}"
