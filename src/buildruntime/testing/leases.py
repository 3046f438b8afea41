"""Leases (``coordination.k8s.io/v1``) in the fake API server, and the garbage
collector's part that concerns them: a pod whose owners are all gone is deleted, as
kube-controller-manager's garbage collector deletes the dependents of a deleted owner
(in the background, after the owner is gone)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from buildruntime.cluster.port import JSON, ApiError, ConflictError, NotFoundError
from buildruntime.testing import objects
from buildruntime.testing.apiserver import APIServer
from buildruntime.testing.patch import apply_patch
from buildruntime.testing.selectors import labels_of, parse_label_selector

_GROUP = "leases.coordination.k8s.io"
_OWNER_STORES = {"Lease": "leases", "Pod": "pods", "Secret": "secrets"}


class LeasesApi:
    """create, get, patch, delete and list of Leases on the fake API server."""

    def __init__(self, server: APIServer) -> None:
        self.server = server

    def create(self, namespace: str, manifest: JSON) -> JSON:
        if not isinstance(manifest, dict) or not (manifest.get("metadata") or {}).get("name"):
            raise ApiError(422, "Invalid", "Lease is invalid: metadata.name: Required value")
        lease = objects.clone(manifest)
        meta = lease["metadata"]
        name = meta["name"]
        if self.server.get("leases", namespace, name) is not None:
            raise ConflictError(f'{_GROUP} "{name}" already exists')
        lease["kind"] = "Lease"
        lease["apiVersion"] = "coordination.k8s.io/v1"
        meta.update(
            namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=objects.api_time()
        )
        meta.pop("resourceVersion", None)
        return objects.load(self.server.write("leases", lease))

    def get(self, namespace: str, name: str) -> JSON:
        lease = self.server.copy("leases", namespace, name)
        if lease is None:
            raise NotFoundError(f'{_GROUP} "{name}" not found')
        return lease

    def patch(self, namespace: str, name: str, patch: JSON) -> JSON:
        current = self.server.get("leases", namespace, name)
        if current is None:
            raise NotFoundError(f'{_GROUP} "{name}" not found')
        if not isinstance(patch, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and str(wanted) != current["metadata"]["resourceVersion"]:
            raise ConflictError(
                f'Operation cannot be fulfilled on {_GROUP} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                reason="Conflict",
            )
        updated = apply_patch(objects.clone(current), patch)
        for key in ("name", "namespace", "uid", "creationTimestamp"):
            updated["metadata"][key] = current["metadata"][key]
        return objects.load(self.server.write("leases", updated))

    def delete(self, namespace: str, name: str, resource_version: str | None) -> None:
        current = self.server.get("leases", namespace, name)
        if current is None:
            raise NotFoundError(f'{_GROUP} "{name}" not found')
        stored = current["metadata"]["resourceVersion"]
        if resource_version is not None and resource_version != stored:
            # The API server's storage precondition check, word for word.
            raise ConflictError(
                f'Operation cannot be fulfilled on {_GROUP} "{name}": Precondition failed: '
                f"the ResourceVersion in the precondition ({resource_version}) does not "
                f"match the ResourceVersion in record ({stored}). The object might have "
                "been modified",
                reason="Conflict",
            )
        self.server.remove("leases", namespace, name)

    def list(self, namespace: str, label_selector: str | None) -> JSON:
        store = self.server.leases
        labels = parse_label_selector(label_selector)
        items = [
            objects.load(store.raws[key])
            for key in sorted(store.objects)
            if key[0] == namespace and labels.matches(labels_of(store.objects[key]))
        ]
        return {
            "kind": "LeaseList",
            "apiVersion": "coordination.k8s.io/v1",
            "metadata": {"resourceVersion": str(self.server.rv)},
            "items": items,
        }


def orphaned_pods(server: APIServer, namespace: str) -> Iterator[str]:
    """The names of the pods in ``namespace`` that have owners, none of which exists
    any more."""
    for (ns, name), pod in list(server.pods.objects.items()):
        if ns == namespace and is_orphaned(server, pod):
            yield name


def is_orphaned(server: APIServer, obj: JSON) -> bool:
    """Whether ``obj`` has owners and none of them exists any more (by uid, as the
    garbage collector checks: a new object under the old name is not the owner)."""
    meta = obj["metadata"]
    refs = meta.get("ownerReferences") or []
    namespace = meta.get("namespace", "")
    return bool(refs) and not any(_owner_exists(server, namespace, ref) for ref in refs)


def _owner_exists(server: APIServer, namespace: str, ref: JSON) -> bool:
    resource = _OWNER_STORES.get(str(ref.get("kind")))
    if resource is None:
        return True  # a kind this fake does not store: never garbage on its account
    owner = server.get(resource, namespace, str(ref.get("name")))
    return owner is not None and owner["metadata"].get("uid") == ref.get("uid")
