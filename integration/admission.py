"""Sidecar injection at pod admission, the way a service mesh does it.

On a real cluster, :class:`SidecarWebhook` is a mutating admission webhook served by the
test process over TLS on 127.0.0.1 (the local API server runs on this machine's
loopback, so it can call it), registered with a MutatingWebhookConfiguration that
matches only the runtime's pods in one namespace: the API server adds the sidecar
containers to the pod as it is created, and the kubelet runs them with their own
statuses, logs and events. On FakeCluster, :class:`InjectingCluster` adds the very same
containers in ``create_pod``, before the fake API server stores the pod, so its kubelet
runs them too.
"""

from __future__ import annotations

import base64
import copy
import json
import ssl
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from buildruntime.cluster.port import JSON, Cluster
from buildruntime.labels import MANAGED_BY, MANAGED_BY_VALUE
from buildruntime.testing.wrapper import ClusterWrapper


def _sidecar(name: str, script: str) -> JSON:
    return {
        "name": name,
        "image": "busybox",
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", script],
    }


PROXY_SIDECAR = "istio-proxy"
EARLY_EXIT_SIDECAR = "istio-init-check"
SIDECARS: list[JSON] = [
    # Long-lived and chatty, like a proxy; it leaves promptly on SIGTERM as a real proxy
    # does (a shell running as PID 1 would otherwise ignore it and hold up pod deletion).
    _sidecar(PROXY_SIDECAR, "trap 'exit 0' TERM; while true; do echo proxy-up; sleep 0.2; done"),
    # Prints and fails at once: a non-step container that terminates with an error while
    # the steps are still to run.
    _sidecar(EARLY_EXIT_SIDECAR, "echo checking; echo check failed >&2; exit 1"),
]


def injects(pod: JSON) -> bool:
    """Whether the injector mutates this pod: only the runtime's own."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(MANAGED_BY) == MANAGED_BY_VALUE)


def sidecar_patch(containers: list[JSON]) -> list[JSON]:
    """The JSON patch that appends ``containers`` to a pod's containers."""
    return [{"op": "add", "path": "/spec/containers/-", "value": c} for c in containers]


class InjectingCluster(ClusterWrapper):
    """A cluster port whose ``create_pod`` adds ``containers`` to every pod of the
    runtime first, as a mutating admission webhook would (for FakeCluster)."""

    def __init__(self, inner: Cluster, containers: list[JSON]) -> None:
        super().__init__(inner)
        self.containers = containers
        self.injected: list[str] = []

    async def create_pod(self, namespace: str, manifest: JSON) -> JSON:
        if injects(manifest):
            manifest = copy.deepcopy(manifest)
            manifest["spec"]["containers"].extend(copy.deepcopy(self.containers))
            self.injected.append(manifest["metadata"]["name"])
        return await self.inner.create_pod(namespace, manifest)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_serving_cert(directory: Path) -> tuple[Path, Path, bytes]:
    """A throwaway CA and a serving certificate for 127.0.0.1 signed by it, with the
    openssl command line tool: (certificate, key, CA certificate PEM)."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
        "-subj", "/CN=buildruntime integration webhook CA", cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=127.0.0.1",
        cwd=directory,
    )  # fmt: skip
    (directory / "tls.ext").write_text(
        "subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n"
        "keyUsage = critical, digitalSignature\n"
    )
    _openssl(
        "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "tls.crt", "-days", "1", "-extfile", "tls.ext",
        cwd=directory,
    )  # fmt: skip
    return directory / "tls.crt", directory / "tls.key", (directory / "ca.crt").read_bytes()


class SidecarWebhook:
    """A mutating admission webhook on https://127.0.0.1:<port>/mutate that appends
    ``containers`` to every pod of the runtime it is asked about. Serves on a thread of
    its own; use as ``with SidecarWebhook(...) as webhook``."""

    def __init__(self, containers: list[JSON]) -> None:
        self.containers = containers
        self.mutated: list[str] = []
        """Names of the pods it added the sidecars to (dry runs included)."""
        self._tmp = tempfile.TemporaryDirectory(prefix="buildruntime-webhook-")
        cert, key, self.ca_bundle = make_serving_cert(Path(self._tmp.name))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sidecar-webhook", daemon=True
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/mutate"

    def __enter__(self) -> SidecarWebhook:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._tmp.cleanup()

    def review(self, request: JSON) -> JSON:
        """The AdmissionReview response for one request."""
        pod = request.get("object") or {}
        response: JSON = {"uid": request.get("uid", ""), "allowed": True}
        if injects(pod):
            patch = json.dumps(sidecar_patch(self.containers)).encode()
            response.update(patchType="JSONPatch", patch=base64.b64encode(patch).decode())
            meta = pod.get("metadata") or {}
            self.mutated.append(meta.get("name") or meta.get("generateName") or "")
        return {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = json.dumps(webhook.review(json.loads(body).get("request") or {}))
                data = answer.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the API server calls it for every pod; pytest output stays quiet

        return Handler

    def configuration(self, name: str, namespace: str) -> JSON:
        """The MutatingWebhookConfiguration that sends this webhook the runtime's pods
        in ``namespace`` only. failurePolicy Fail: if the webhook cannot be called the
        pod is not created, so a test cannot pass without the sidecars."""
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "sidecar.integration.buildruntime.io",
                    "clientConfig": {
                        "url": self.url,
                        "caBundle": base64.b64encode(self.ca_bundle).decode(),
                    },
                    "rules": [
                        {
                            "operations": ["CREATE"],
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "resources": ["pods"],
                            "scope": "Namespaced",
                        }
                    ],
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "objectSelector": {"matchLabels": {MANAGED_BY: MANAGED_BY_VALUE}},
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "reinvocationPolicy": "Never",
                    "timeoutSeconds": 10,
                }
            ],
        }
