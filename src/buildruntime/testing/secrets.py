"""Secrets in the fake API server, and the garbage collector's part that concerns them:
an object whose owner (by ``ownerReferences`` uid) is deleted is deleted too, as
kube-controller-manager's garbage collector does in the background."""

from __future__ import annotations

import base64
import uuid

from buildruntime.cluster.port import JSON, ApiError, ConflictError, NotFoundError
from buildruntime.testing import objects
from buildruntime.testing.apiserver import APIServer
from buildruntime.testing.patch import apply_patch

DELETED = "DELETED"


def create_secret_object(manifest: JSON, namespace: str) -> JSON:
    """Validate and default a Secret to be created."""
    if not isinstance(manifest, dict):
        raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
    secret = objects.clone(manifest)
    meta = secret.setdefault("metadata", {})
    if not meta.get("name"):
        raise ApiError(422, "Invalid", "Secret is invalid: metadata.name: Required value")
    for key, value in (secret.get("data") or {}).items():
        try:
            base64.b64decode(value, validate=True)
        except (ValueError, TypeError):
            raise ApiError(
                422, "Invalid", f'Secret "{meta["name"]}" is invalid: data[{key}]: illegal base64'
            ) from None
    secret["kind"] = "Secret"
    secret["apiVersion"] = "v1"
    secret.setdefault("type", "Opaque")
    meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=objects.api_time())
    meta.pop("resourceVersion", None)
    return secret


class SecretsApi:
    """create, patch and delete of core/v1 Secrets on the fake API server."""

    def __init__(self, server: APIServer) -> None:
        self.server = server

    def create(self, namespace: str, manifest: JSON) -> JSON:
        secret = create_secret_object(manifest, namespace)
        name = secret["metadata"]["name"]
        if self.server.get("secrets", namespace, name) is not None:
            raise ConflictError(f'secrets "{name}" already exists')
        return objects.load(self.server.write("secrets", secret))

    def patch(self, namespace: str, name: str, patch: JSON) -> JSON:
        current = self.server.get("secrets", namespace, name)
        if current is None:
            raise NotFoundError(f'secrets "{name}" not found')
        updated = apply_patch(objects.clone(current), patch)
        for key in ("name", "namespace", "uid", "creationTimestamp"):
            updated["metadata"][key] = current["metadata"][key]
        return objects.load(self.server.write("secrets", updated))

    def delete(self, namespace: str, name: str) -> None:
        if self.server.remove("secrets", namespace, name) is None:
            raise NotFoundError(f'secrets "{name}" not found')

    def data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's decoded data (what the kubelet gives a ``secretKeyRef``), or None."""
        secret = self.server.get("secrets", namespace, name)
        if secret is None:
            return None
        return {
            key: base64.b64decode(value).decode(errors="replace")
            for key, value in (secret.get("data") or {}).items()
        }

    def collect_garbage(self, resource: str, type: str, obj: JSON, previous: JSON | None) -> None:
        """An observer of the API server: when a pod goes, the Secrets it owns go too."""
        if resource != "pods" or type != DELETED:
            return
        owner = obj["metadata"].get("uid")
        namespace = obj["metadata"].get("namespace", "")
        for (ns, name), secret in list(self.server.secrets.objects.items()):
            refs = secret["metadata"].get("ownerReferences") or []
            if ns == namespace and any(ref.get("uid") == owner for ref in refs):
                self.server.remove("secrets", ns, name)
