"""KubeCluster against a small HTTP server on 127.0.0.1 that plays the API server.

The server speaks just enough of the API: JSON bodies, Status errors, chunked watch and
log bodies written chunk by chunk (with pauses, so the client sees them in separate
reads), a silent watch, a connection cut in the middle of a body. Each test sets the
routes it needs and asserts what the port returns or raises, what reached the server,
and the request accounting.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import kubernetes.client
import pytest

from buildruntime.cluster.kube import KubeCluster, connection
from buildruntime.cluster.kube.chunked import Dechunker
from buildruntime.cluster.kube.watch import LineSplitter
from buildruntime.cluster.port import (
    ApiError,
    ConflictError,
    ExpiredError,
    NotFoundError,
    Request,
    Resource,
    UnavailableError,
)
from buildruntime.cluster.watch_events import decode_event
from buildruntime.informer.decoders import EVENT_SNAPSHOTS, POD_SNAPSHOTS, SnapshotDecoder

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- the fake API server ---------------------------------------------------------------


class Seen:
    """One request as the server received it."""

    def __init__(
        self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes
    ):
        self.method = method
        self.path = path
        self.query = {key: values[-1] for key, values in query.items()}
        self.headers = headers
        self.body = body


Route = Callable[["Handler"], None]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeApiServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append(
            Seen(self.command, url.path, parse_qs(url.query), self.headers, body)
        )
        route = self.server.routes.get((self.command, url.path))
        if route is None:
            status(self, 404, "NotFound", f"no route for {self.command} {url.path}")
            return
        try:
            route(self)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PATCH = do_DELETE = _dispatch


# A self-signed certificate for 127.0.0.1 (valid until 2126), for the TLS variants: real
# API servers speak TLS, and waking a read blocked in an SSL socket is its own case.
TEST_CERT = """\
-----BEGIN CERTIFICATE-----
MIIBkDCCATagAwIBAgIUBycYlB9fQkGHgfOvo/E8CogaFAUwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJMTI3LjAuMC4xMCAXDTI2MTEyMzE4MTgwMloYDzIxMjYxMDMw
MTgxODAyWjAUMRIwEAYDVQQDDAkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAASp+wQQjvY6xgi84lWqLC6zEAmwFEVUiVNPjh392Ha89CGjueH8A3Wy
EDB/yMoJBckcMMeeTKLyuX3EiqRuofwUo2QwYjAdBgNVHQ4EFgQUEJ00ojTU1uhP
1hobQ0Ok64yppKUwHwYDVR0jBBgwFoAUEJ00ojTU1uhP1hobQ0Ok64yppKUwDwYD
VR0TAQH/BAUwAwEB/zAPBgNVHREECDAGhwR/AAABMAoGCCqGSM49BAMCA0gAMEUC
IQCz9quHF1M0d3AZ/gNlUVIdvHe64RFocfX9uce66HA8UwIgN4IdBEblSFv9lxj0
p3Oftt6QB8OYQVBLCdKcvByQiTg=
-----END CERTIFICATE-----
"""
TEST_KEY = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQggre2oVtwkLmGPrjT
M9Ju7MDWFY6bCsC/1QXQScORwRShRANCAASp+wQQjvY6xgi84lWqLC6zEAmwFEVU
iVNPjh392Ha89CGjueH8A3WyEDB/yMoJBckcMMeeTKLyuX3EiqRuofwU
-----END PRIVATE KEY-----
"""


class FakeApiServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, tls_dir: Path | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[tuple[str, str], Route] = {}
        self.seen: list[Seen] = []
        self.release = threading.Event()  # lets stalled handlers go at teardown
        self.stalled = threading.Event()  # a stalled handler is holding its connection
        self.connections = 0
        self.tls = tls_dir is not None
        if tls_dir is not None:
            (tls_dir / "cert.pem").write_text(TEST_CERT)
            (tls_dir / "key.pem").write_text(TEST_KEY)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls_dir / "cert.pem", tls_dir / "key.pem")
            self.socket = context.wrap_socket(self.socket, server_side=True)
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server_address[1]}"

    def get_request(self) -> tuple[socket.socket, Any]:
        self.connections += 1
        return super().get_request()

    def route(self, method: str, path: str, handler: Route) -> None:
        self.routes[(method, path)] = handler


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    yield from _serve(FakeApiServer())


@pytest.fixture(params=["http", "https"])
def any_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeApiServer]:
    yield from _serve(FakeApiServer(tmp_path if request.param == "https" else None))


def _serve(srv: FakeApiServer) -> Iterator[FakeApiServer]:
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()


def send(h: Handler, code: int, body: bytes, content_type: str = "application/json") -> None:
    h.send_response(code)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def send_json(h: Handler, code: int, obj: Any) -> None:
    send(h, code, json.dumps(obj).encode())


def status(h: Handler, code: int, reason: str, message: str) -> None:
    send_json(h, code, status_object(code, reason, message))


def status_object(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def start_chunked(h: Handler, content_type: str = "application/json") -> None:
    h.send_response(200)
    h.send_header("Content-Type", content_type)
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    h.wfile.flush()


def write_chunk(h: Handler, data: bytes, pause: float = 0.0) -> None:
    h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
    h.wfile.flush()
    if pause:
        time.sleep(pause)


def end_chunked(h: Handler) -> None:
    h.wfile.write(b"0\r\n\r\n")
    h.wfile.flush()


def chunked(*chunks: bytes, pause: float = 0.02, content_type: str = "application/json") -> Route:
    def route(h: Handler) -> None:
        start_chunked(h, content_type)
        for chunk in chunks:
            write_chunk(h, chunk, pause)
        end_chunked(h)

    return route


def stalled(*chunks: bytes) -> Route:
    """Headers (and maybe some chunks), then silence until the test ends."""

    def route(h: Handler) -> None:
        start_chunked(h)
        for chunk in chunks:
            write_chunk(h, chunk)
        h.server.stalled.set()
        h.server.release.wait(30)
        h.close_connection = True

    return route


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def pod(name: str, rv: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ci", "resourceVersion": rv, "uid": "u-" + name},
        "spec": {"containers": [{"name": "test", "image": "busybox"}]},
    }


def make_cluster(server: FakeApiServer, **settings: Any) -> KubeCluster:
    configuration = kubernetes.client.Configuration(host=server.url)
    configuration.proxy = None
    if server.tls:
        configuration.ca_cert_data = TEST_CERT
    return KubeCluster(kubernetes.client.ApiClient(configuration), **settings)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def collect(stream: Any, into: list[Any]) -> None:
    """Enter a watch or log stream and append everything it yields to ``into``."""
    async with stream as items:
        async for item in items:
            into.append(item)


PODS = "/api/v1/namespaces/ci/pods"
EVENTS = "/api/v1/namespaces/ci/events"


# -- unary calls -----------------------------------------------------------------------


async def test_list_returns_the_decoded_list_and_sends_the_selectors(server: FakeApiServer) -> None:
    pod_list = {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "42"},
        "items": [pod("a", "41"), pod("b", "42")],
    }
    server.route("GET", PODS, lambda h: send_json(h, 200, pod_list))
    async with make_cluster(server) as cluster:
        got = await cluster.list("pods", "ci", label_selector="build=b1", resource_version="0")
        assert got == pod_list
        assert cluster.requests == [Request("list", "pods")]
    assert server.seen[0].query == {"labelSelector": "build=b1", "resourceVersion": "0"}
    assert server.seen[0].headers["Accept"] == "application/json"


async def test_list_without_resource_version_is_a_consistent_read(server: FakeApiServer) -> None:
    server.route("GET", EVENTS, lambda h: send_json(h, 200, {"items": [], "metadata": {}}))
    async with make_cluster(server) as cluster:
        got = await cluster.list("events", "ci", field_selector="involvedObject.name=p")
        assert got == {"items": [], "metadata": {}}
        assert cluster.requests == [Request("list", "events")]
    assert server.seen[0].query == {"fieldSelector": "involvedObject.name=p"}


async def test_create_sends_the_manifest_as_is_and_returns_the_created_pod(
    server: FakeApiServer,
) -> None:
    manifest = pod("p", "")
    # A field the client's models do not know must reach the server untouched.
    manifest["spec"]["someFutureField"] = {"x": 1}
    created = pod("p", "7")
    server.route("POST", PODS, lambda h: send_json(h, 201, created))
    async with make_cluster(server) as cluster:
        assert await cluster.create_pod("ci", manifest) == created
        assert cluster.requests == [Request("create", "pods")]
    assert json.loads(server.seen[0].body) == manifest
    assert server.seen[0].headers["Content-Type"] == "application/json"


async def test_admission_denial_on_create_keeps_the_webhook_message(server: FakeApiServer) -> None:
    message = (
        'admission webhook "policy.example.com" denied the request: '
        "image busybox is not from an allowed registry"
    )
    server.route("POST", PODS, lambda h: status(h, 403, "Forbidden", message))
    async with make_cluster(server) as cluster:
        with pytest.raises(ApiError) as caught:
            await cluster.create_pod("ci", pod("p", ""))
        assert cluster.requests == [Request("create", "pods")]
    assert type(caught.value) is ApiError
    assert (caught.value.status, caught.value.reason, caught.value.message) == (
        403,
        "Forbidden",
        message,
    )


async def test_create_conflict_is_a_conflict_error(server: FakeApiServer) -> None:
    server.route("POST", PODS, lambda h: status(h, 409, "AlreadyExists", 'pods "p" already exists'))
    async with make_cluster(server) as cluster:
        with pytest.raises(ConflictError) as caught:
            await cluster.create_pod("ci", pod("p", ""))
    assert (caught.value.status, caught.value.reason) == (409, "AlreadyExists")
    assert caught.value.message == 'pods "p" already exists'


async def test_patch_is_a_strategic_merge_patch(server: FakeApiServer) -> None:
    patched = pod("p", "9")
    server.route("PATCH", PODS + "/p", lambda h: send_json(h, 200, patched))
    patch = {"spec": {"containers": [{"name": "test", "image": "alpine:3.20"}]}}
    async with make_cluster(server) as cluster:
        assert await cluster.patch_pod("ci", "p", patch) == patched
        assert cluster.requests == [Request("patch", "pods")]
    seen = server.seen[0]
    assert seen.headers["Content-Type"] == "application/strategic-merge-patch+json"
    assert json.loads(seen.body) == patch


@pytest.mark.parametrize("code", [200, 202])
async def test_delete(server: FakeApiServer, code: int) -> None:
    # 200 with the pod, or 202 with whatever: the body is not needed.
    body = json.dumps(pod("p", "10")).encode() if code == 200 else b"accepted"
    server.route("DELETE", PODS + "/p", lambda h: send(h, code, body))
    async with make_cluster(server) as cluster:
        await cluster.delete_pod("ci", "p", grace_period_seconds=0)
        assert cluster.requests == [Request("delete", "pods")]
    assert server.seen[0].query == {"gracePeriodSeconds": "0"}


async def test_delete_of_a_missing_pod_is_not_found(server: FakeApiServer) -> None:
    server.route(
        "DELETE", PODS + "/gone", lambda h: status(h, 404, "NotFound", 'pods "gone" not found')
    )
    async with make_cluster(server) as cluster:
        with pytest.raises(NotFoundError) as caught:
            await cluster.delete_pod("ci", "gone")
        assert cluster.requests == [Request("delete", "pods")]
    assert (caught.value.status, caught.value.reason) == (404, "NotFound")
    assert caught.value.message == 'pods "gone" not found'


LEASES = "/apis/coordination.k8s.io/v1/namespaces/ci/leases"


async def test_lease_calls_go_to_the_coordination_api(server: FakeApiServer) -> None:
    lease = {"metadata": {"name": "l", "uid": "u", "resourceVersion": "5"}, "spec": {}}
    listed = {"metadata": {"resourceVersion": "6"}, "items": [lease]}
    server.route("POST", LEASES, lambda h: send_json(h, 201, lease))
    server.route("GET", LEASES + "/l", lambda h: send_json(h, 200, lease))
    server.route("PATCH", LEASES + "/l", lambda h: send_json(h, 200, lease))
    server.route("GET", LEASES, lambda h: send_json(h, 200, listed))
    async with make_cluster(server) as cluster:
        assert await cluster.create_lease("ci", {"metadata": {"name": "l"}}) == lease
        assert await cluster.get_lease("ci", "l") == lease
        assert await cluster.patch_lease("ci", "l", {"spec": {"renewTime": "t"}}) == lease
        assert await cluster.list_leases("ci", label_selector="a=b") == listed
        assert cluster.requests == [
            Request("create", "leases"),
            Request("get", "leases"),
            Request("patch", "leases"),
            Request("list", "leases"),
        ]
    patch, listing = server.seen[2], server.seen[3]
    assert patch.headers["Content-Type"] == "application/merge-patch+json"
    assert json.loads(patch.body) == {"spec": {"renewTime": "t"}}
    assert listing.query == {"labelSelector": "a=b"}


async def test_a_lease_delete_carries_its_resource_version_precondition(
    server: FakeApiServer,
) -> None:
    message = (
        'Operation cannot be fulfilled on leases.coordination.k8s.io "l": Precondition '
        "failed: the ResourceVersion in the precondition (5) does not match the "
        "ResourceVersion in record (6). The object might have been modified"
    )
    server.route("DELETE", LEASES + "/l", lambda h: status(h, 409, "Conflict", message))
    async with make_cluster(server) as cluster:
        with pytest.raises(ConflictError) as caught:
            await cluster.delete_lease("ci", "l", resource_version="5")
        assert cluster.requests == [Request("delete", "leases")]
    assert caught.value.message == message
    assert json.loads(server.seen[0].body) == {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "propagationPolicy": "Background",
        "preconditions": {"resourceVersion": "5"},
    }


@pytest.mark.parametrize("code", [429, 500, 502, 503, 504])
async def test_overload_and_server_errors_are_unavailable(server: FakeApiServer, code: int) -> None:
    server.route("GET", PODS, lambda h: status(h, code, "TooManyRequests", "slow down"))
    async with make_cluster(server) as cluster:
        with pytest.raises(UnavailableError, match="slow down"):
            await cluster.list("pods", "ci")


async def test_an_error_body_that_is_not_a_status_still_maps(server: FakeApiServer) -> None:
    server.route("DELETE", PODS + "/p", lambda h: send(h, 401, b"Unauthorized\n", "text/plain"))
    async with make_cluster(server) as cluster:
        with pytest.raises(ApiError) as caught:
            await cluster.delete_pod("ci", "p")
    assert (caught.value.status, caught.value.message) == (401, "Unauthorized")


async def test_connection_refused_is_unavailable() -> None:
    configuration = kubernetes.client.Configuration(host=f"http://127.0.0.1:{free_port()}")
    configuration.proxy = None
    async with KubeCluster(kubernetes.client.ApiClient(configuration)) as cluster:
        with pytest.raises(UnavailableError):
            await cluster.list("pods", "ci")
        with pytest.raises(UnavailableError):
            async with cluster.watch("pods", "ci", resource_version="1"):
                pass
        with pytest.raises(UnavailableError):
            async with cluster.stream_logs("ci", "p", "test"):
                pass
        assert cluster.requests == [
            Request("list", "pods"),
            Request("watch", "pods"),
            Request("log", "pods"),
        ]
        assert (cluster.open_watches, cluster.open_log_streams) == (0, 0)


async def test_urllib3_does_not_retry_behind_our_back(server: FakeApiServer) -> None:
    """A server that drops the connection without answering: urllib3 would retry 3 times
    on its own by default; the library's backoff must be the only one."""

    def hang_up(h: Handler) -> None:
        h.close_connection = True
        h.connection.shutdown(socket.SHUT_RDWR)

    server.route("POST", PODS, hang_up)
    async with make_cluster(server) as cluster:
        with pytest.raises(UnavailableError):
            await cluster.create_pod("ci", pod("p", ""))
    assert len(server.seen) == 1
    assert server.connections == 1


# -- watches ---------------------------------------------------------------------------


async def test_watch_yields_events_across_chunks_and_skips_a_malformed_line(
    any_server: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    added = {"type": "ADDED", "object": pod("p", "11")}
    modified = {"type": "MODIFIED", "object": pod("p", "12")}
    bookmark = {
        "type": "BOOKMARK",
        "object": {"kind": "Pod", "metadata": {"resourceVersion": "13"}},
    }
    modified_line = line(modified)
    any_server.route(
        "GET",
        PODS,
        chunked(
            line(added),
            modified_line[:25],  # one event split across two chunks (and two reads)
            modified_line[25:],
            b'{"type": "MODIFIED", "object": {trunc\n',  # malformed: skipped, logged
            line(bookmark),
        ),
    )
    caplog.set_level(logging.WARNING, logger="buildruntime.cluster")
    async with make_cluster(any_server) as cluster:
        async with cluster.watch(
            "pods",
            "ci",
            resource_version="10",
            label_selector="build=b1",
            field_selector="metadata.name=p",
            timeout_seconds=345,
        ) as events:
            assert cluster.open_watches == 1
            got = [event async for event in events]
        assert cluster.open_watches == 0
        assert cluster.requests == [Request("watch", "pods")]
    assert got == [added, modified, bookmark]
    assert any_server.seen[0].query == {
        "watch": "true",
        "allowWatchBookmarks": "true",
        "resourceVersion": "10",
        "labelSelector": "build=b1",
        "fieldSelector": "metadata.name=p",
        "timeoutSeconds": "345",
    }
    warnings = [r for r in caplog.records if r.name == "buildruntime.cluster"]
    assert len(warnings) == 1
    assert "not JSON" in warnings[0].getMessage()


async def test_watch_of_events_without_bookmarks(server: FakeApiServer) -> None:
    event = {"type": "ADDED", "object": {"kind": "Event", "reason": "Pulled"}}
    server.route("GET", EVENTS, chunked(line(event)))
    async with make_cluster(server) as cluster:
        async with cluster.watch(
            "events", "ci", resource_version="5", allow_bookmarks=False
        ) as events:
            assert [e async for e in events] == [event]
        assert cluster.requests == [Request("watch", "events")]
    assert server.seen[0].query == {"watch": "true", "resourceVersion": "5"}


async def test_watch_error_event_410_is_expired(server: FakeApiServer) -> None:
    added = {"type": "ADDED", "object": pod("p", "11")}
    error = {
        "type": "ERROR",
        "object": status_object(410, "Expired", "too old resource version: 1 (11)"),
    }
    server.route("GET", PODS, chunked(line(added), line(error)))
    async with make_cluster(server) as cluster:
        got: list[dict[str, Any]] = []
        with pytest.raises(ExpiredError) as caught:
            await collect(cluster.watch("pods", "ci", resource_version="1"), got)
        assert cluster.open_watches == 0
    assert got == [added]
    assert caught.value.status == 410
    assert caught.value.message == "too old resource version: 1 (11)"


@pytest.mark.parametrize(
    ("resource", "path", "decoder"),
    [("pods", PODS, POD_SNAPSHOTS), ("events", EVENTS, EVENT_SNAPSHOTS)],
)
async def test_typed_watch_decodes_snapshots_and_raises_410(
    server: FakeApiServer, resource: Resource, path: str, decoder: SnapshotDecoder[Any]
) -> None:
    # A Status fails the strict pod decoder but fits the event one (its fields are all
    # optional there): both must end in ExpiredError, never in a cached "object".
    obj = (
        pod("p", "11")
        if resource == "pods"
        else {
            "metadata": {"name": "e", "uid": "e1", "resourceVersion": "11"},
            "involvedObject": {"name": "p"},
            "reason": "Pulled",
        }
    )
    error = {
        "type": "ERROR",
        "object": status_object(410, "Expired", "too old resource version: 1 (11)"),
    }
    server.route(
        "GET", path, chunked(line({"type": "ADDED", "object": obj}), b"garbage\n", line(error))
    )
    async with make_cluster(server) as cluster:
        got: list[Any] = []
        with pytest.raises(ExpiredError) as caught:
            await collect(cluster.watch(resource, "ci", resource_version="1", decoder=decoder), got)
        assert cluster.open_watches == 0
    assert [(e.type, e.object.resource_version) for e in got] == [("ADDED", "11")]
    assert got[0].object == decoder.from_item(obj)
    assert caught.value.message == "too old resource version: 1 (11)"


async def test_watch_error_event_other_status_is_an_api_error(server: FakeApiServer) -> None:
    error = {"type": "ERROR", "object": status_object(500, "InternalError", "etcd is sad")}
    server.route("GET", PODS, chunked(line(error)))
    async with make_cluster(server) as cluster:
        with pytest.raises(ApiError) as caught:
            await collect(cluster.watch("pods", "ci", resource_version="1"), [])
    assert (caught.value.status, caught.value.reason, caught.value.message) == (
        500,
        "InternalError",
        "etcd is sad",
    )


async def test_watch_http_410_is_expired(server: FakeApiServer) -> None:
    server.route(
        "GET", PODS, lambda h: status(h, 410, "Expired", "too old resource version: 1 (50)")
    )
    async with make_cluster(server) as cluster:
        with pytest.raises(ExpiredError, match="too old resource version"):
            async with cluster.watch("pods", "ci", resource_version="1"):
                pytest.fail("the watch should not open")
        assert cluster.open_watches == 0
        assert cluster.requests == [Request("watch", "pods")]


async def test_watch_cut_in_the_middle_is_unavailable(any_server: FakeApiServer) -> None:
    added = {"type": "ADDED", "object": pod("p", "11")}

    def cut(h: Handler) -> None:
        start_chunked(h)
        write_chunk(h, line(added))
        write_chunk(h, b'{"type": "MODIFIED", "obj')
        h.close_connection = True  # no terminating chunk: the connection broke

    any_server.route("GET", PODS, cut)
    async with make_cluster(any_server) as cluster:
        got: list[dict[str, Any]] = []
        with pytest.raises(UnavailableError, match="broke"):
            await collect(cluster.watch("pods", "ci", resource_version="1"), got)
        assert cluster.open_watches == 0
    assert got == [added]


async def test_a_silent_watch_times_out_as_unavailable(any_server: FakeApiServer) -> None:
    added = {"type": "ADDED", "object": pod("p", "11")}
    any_server.route("GET", PODS, stalled(line(added)))
    async with make_cluster(any_server, watch_read_timeout=0.3) as cluster:
        got: list[dict[str, Any]] = []
        started = time.monotonic()
        with pytest.raises(UnavailableError, match=r"no data for 0\.3 s"):
            await collect(cluster.watch("pods", "ci", resource_version="1"), got)
        assert time.monotonic() - started < 5
        assert cluster.open_watches == 0
    assert got == [added]


async def test_a_quiet_events_watch_is_given_until_the_servers_own_end(
    any_server: FakeApiServer,
) -> None:
    # Events get no bookmarks (the API server does not cache them), so silence on an
    # events watch is normal until its timeoutSeconds: only then is it presumed broken.
    any_server.route("GET", EVENTS, stalled())
    async with make_cluster(any_server, watch_read_timeout=0.3) as cluster:
        started = time.monotonic()
        with pytest.raises(UnavailableError, match=r"no data for 1\.3 s"):
            await collect(
                cluster.watch("events", "ci", resource_version="1", timeout_seconds=1), []
            )
        assert 1.2 < time.monotonic() - started < 5


async def test_a_silent_log_stream_has_its_own_read_timeout(any_server: FakeApiServer) -> None:
    # A quiet step is silent as long as it likes: its log stream is reopened after
    # log_read_timeout, not after the watches' 70 s.
    any_server.route("GET", PODS + "/p/log", stalled(b"2026-01-01T00:00:00Z hello\n"))
    async with make_cluster(any_server, watch_read_timeout=5, log_read_timeout=0.3) as cluster:
        chunks: list[bytes] = []

        async def read() -> None:
            async with cluster.stream_logs("ci", "p", "c") as stream:
                async for chunk in stream:
                    chunks.append(chunk)

        started = time.monotonic()
        with pytest.raises(UnavailableError, match=r"no data for 0\.3 s"):
            await read()
        assert time.monotonic() - started < 4
    assert b"".join(chunks) == b"2026-01-01T00:00:00Z hello\n"


def _threads_reading() -> list[str]:
    """Names of the threads whose stack is inside our stream readers right now."""
    names = {t.ident: t.name for t in threading.enumerate()}
    reading = []
    for ident, frame in sys._current_frames().items():
        f: Any = frame
        while f is not None:
            if f.f_code.co_filename == connection.__file__ and f.f_code.co_name == "read":
                reading.append(names.get(ident, str(ident)))
                break
            f = f.f_back
    return reading


async def _wait_no_reader(limit: float = 1.0) -> list[str]:
    deadline = time.monotonic() + limit
    while (reading := _threads_reading()) and time.monotonic() < deadline:
        await anyio.sleep(0.01)
    return reading


async def test_cancelling_a_silent_watch_leaves_no_blocked_thread(
    any_server: FakeApiServer,
) -> None:
    any_server.route("GET", PODS, stalled())
    async with make_cluster(any_server) as cluster:  # 70 s read timeout: only closing can help
        iterating = anyio.Event()

        async def consume() -> None:
            async with cluster.watch("pods", "ci", resource_version="1") as events:
                iterating.set()
                async for _ in events:
                    pass

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await iterating.wait()
            await anyio.to_thread.run_sync(any_server.stalled.wait, 5)
            await anyio.sleep(0.05)  # the reader is now blocked in recv
            assert _threads_reading(), "expected a reader blocked on the silent watch"
            tg.cancel_scope.cancel()
        assert time.monotonic() - started < 3
        assert cluster.open_watches == 0
        assert await _wait_no_reader() == []


async def test_cancelling_a_silent_log_stream_leaves_no_blocked_thread(
    any_server: FakeApiServer,
) -> None:
    any_server.route("GET", PODS + "/p/log", stalled(b"2024-01-01T00:00:00Z first\n"))
    async with make_cluster(any_server) as cluster:
        got: list[bytes] = []
        with anyio.move_on_after(0.5):
            async with cluster.stream_logs("ci", "p", "test") as chunks:
                async for chunk in chunks:
                    got.append(chunk)
        assert got == [b"2024-01-01T00:00:00Z first\n"]
        assert cluster.open_log_streams == 0
        assert await _wait_no_reader() == []


def test_no_thread_is_left_once_the_event_loop_ends(server: FakeApiServer) -> None:
    """After cancelling a task group that iterates a silent watch, every thread the
    cluster used ends: anyio stops its idle workers when the loop ends, and a worker
    still blocked in a read would be counted here."""
    server.route("GET", PODS, stalled())

    def client_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if "process_request" not in t.name}

    before = client_threads()

    async def scenario() -> None:
        async with make_cluster(server) as cluster:

            async def consume() -> None:
                async with cluster.watch("pods", "ci", resource_version="1") as events:
                    async for _ in events:
                        pass

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await anyio.to_thread.run_sync(server.stalled.wait, 5)
                await anyio.sleep(0.05)
                tg.cancel_scope.cancel()

    anyio.run(scenario, backend="asyncio")
    deadline = time.monotonic() + 2
    while client_threads() - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client_threads() - before == set()


async def test_reads_batch_many_events_per_thread_hop(any_server: FakeApiServer) -> None:
    """A burst of events arrives in a few large reads, not one hop per event."""
    events = [{"type": "MODIFIED", "object": pod("p", str(i))} for i in range(500)]
    body = [line(e) for e in events]
    any_server.route("GET", PODS, chunked(*body, pause=0))
    async with make_cluster(any_server) as cluster:
        hops = 0
        original = cluster._threads.run

        async def counting(func: Any) -> Any:
            nonlocal hops
            hops += 1
            return await original(func)

        cluster._threads.run = counting  # type: ignore[method-assign]
        async with cluster.watch("pods", "ci", resource_version="1") as stream:
            got = [e async for e in stream]
    assert got == events
    assert hops < 100


# -- log streams -----------------------------------------------------------------------


async def test_log_stream_yields_raw_chunks_as_they_arrive(any_server: FakeApiServer) -> None:
    pieces = [
        b"2024-05-01T10:00:00.000000001Z line one\n",
        b"2024-05-01T10:00:00.500000000Z line two is spl",
        b"it across chunks\n\xff\xfe not utf-8\n",
        b"2024-05-01T10:00:01.000000000Z no trailing newline",
    ]
    any_server.route(
        "GET", PODS + "/p/log", chunked(*pieces, pause=0.05, content_type="text/plain")
    )
    async with make_cluster(any_server) as cluster:
        got: list[bytes] = []
        async with cluster.stream_logs(
            "ci", "p", "test", since_time="2024-05-01T10:00:00Z"
        ) as chunks:
            assert cluster.open_log_streams == 1
            async for chunk in chunks:
                assert isinstance(chunk, bytes)
                got.append(chunk)
        assert cluster.open_log_streams == 0
        assert cluster.requests == [Request("log", "pods")]
    assert b"".join(got) == b"".join(pieces)
    assert len(got) >= 3  # delivered as they came, not all at the end
    seen = any_server.seen[0]
    assert seen.query == {
        "container": "test",
        "follow": "true",
        "timestamps": "true",
        "sinceTime": "2024-05-01T10:00:00Z",
    }
    # A real API server answers 406 to "Accept: text/plain" on the log endpoint.
    assert seen.headers["Accept"] == "*/*"


async def test_log_of_a_finished_container_with_a_content_length(server: FakeApiServer) -> None:
    body = b"".join(b"line %d\n" % i for i in range(20000))
    server.route("GET", PODS + "/p/log", lambda h: send(h, 200, body, "text/plain"))
    got: list[bytes] = []
    async with make_cluster(server) as cluster:
        await collect(cluster.stream_logs("ci", "p", "test", follow=False, timestamps=False), got)
    assert b"".join(got) == body
    assert server.seen[0].query == {"container": "test"}


async def test_log_of_a_container_waiting_to_start_is_a_400(server: FakeApiServer) -> None:
    message = 'container "test" in pod "p" is waiting to start: ContainerCreating'
    server.route("GET", PODS + "/p/log", lambda h: status(h, 400, "BadRequest", message))
    async with make_cluster(server) as cluster:
        with pytest.raises(ApiError) as caught:
            async with cluster.stream_logs("ci", "p", "test"):
                pytest.fail("the stream should not open")
        assert cluster.open_log_streams == 0
        assert cluster.requests == [Request("log", "pods")]
    assert (caught.value.status, caught.value.reason, caught.value.message) == (
        400,
        "BadRequest",
        message,
    )


async def test_log_of_a_deleted_pod_is_not_found(server: FakeApiServer) -> None:
    server.route("GET", PODS + "/p/log", lambda h: status(h, 404, "NotFound", 'pods "p" not found'))
    async with make_cluster(server) as cluster:
        with pytest.raises(NotFoundError):
            async with cluster.stream_logs("ci", "p", "test"):
                pass


# -- construction ----------------------------------------------------------------------


async def test_from_kubeconfig_uses_a_private_configuration(
    server: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
                "users": [{"name": "ci", "user": {"token": "s3cret"}}],
                "contexts": [
                    {"name": "other", "context": {"cluster": "fake", "user": "nobody"}},
                    {"name": "ci", "context": {"cluster": "fake", "user": "ci"}},
                ],
                "current-context": "other",
            }
        )
    )
    monkeypatch.setattr(kubernetes.client.Configuration, "_default", None)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    server.route("GET", PODS, lambda h: send_json(h, 200, {"items": []}))
    async with KubeCluster.from_kubeconfig(context="ci", request_timeout=5) as cluster:
        assert cluster.request_timeout == 5
        assert await cluster.list("pods", "ci") == {"items": []}
    assert server.seen[0].headers["Authorization"] == "Bearer s3cret"
    assert kubernetes.client.Configuration._default is None  # the global stays untouched


def test_in_cluster_reads_the_service_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubernetes.config import incluster_config

    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("not really a certificate")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(kubernetes.client.Configuration, "_default", None)
    cluster = KubeCluster.in_cluster(stream_threads=8)
    configuration = cluster._api_client.configuration
    assert configuration.host == "https://10.0.0.1:443"
    assert configuration.auth_settings()["BearerToken"]["value"] == "bearer sa-token"
    assert configuration.retries is False
    assert cluster.stream_threads == 8
    assert kubernetes.client.Configuration._default is None
    cluster._api_client.close()


async def test_aclose_closes_the_connection_pool(server: FakeApiServer) -> None:
    server.route("GET", PODS, lambda h: send_json(h, 200, {"items": []}))
    cluster = make_cluster(server)
    await cluster.list("pods", "ci")
    pool_manager = cluster._api_client.rest_client.pool_manager
    assert len(pool_manager.pools) == 1
    await cluster.aclose()
    await cluster.aclose()  # idempotent
    assert len(pool_manager.pools) == 0


def test_settings_are_validated() -> None:
    client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host="http://127.0.0.1:1"))
    with pytest.raises(ValueError, match="stream_threads"):
        KubeCluster(client, stream_threads=0)
    with pytest.raises(ValueError, match="timeouts"):
        KubeCluster(client, watch_read_timeout=0)
    cluster = KubeCluster(client)
    assert (cluster.stream_threads, cluster.request_timeout, cluster.watch_read_timeout) == (
        512,
        30.0,
        70.0,
    )
    with pytest.raises(ValueError, match="unsupported resource"):
        cluster.watch("nodes", "ci", resource_version="1")  # type: ignore[arg-type]


def test_server_is_the_url_the_configuration_points_at() -> None:
    cluster = KubeCluster(
        kubernetes.client.ApiClient(kubernetes.client.Configuration(host="https://10.0.0.1:6443"))
    )
    assert cluster.server == "https://10.0.0.1:6443"
    cluster._api_client.close()


# -- the body readers, byte by byte ----------------------------------------------------


def _chunked_body(pieces: list[bytes]) -> bytes:
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces)
    return body + b"0\r\n\r\n"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
def test_dechunker_and_json_lines_at_every_split_point(anyio_backend: str) -> None:
    events = [{"type": "ADDED", "object": {"n": i, "s": "x" * (i * 7)}} for i in range(6)]
    payload = b"".join(line(e) for e in events)
    pieces = [payload[:10], payload[10:11], payload[11:200], payload[200:]]
    body = _chunked_body(pieces)
    for split in range(1, len(body)):
        in_two = [body[:split], body[split:]]
        in_many = [body[i : i + split] for i in range(0, len(body), split)]
        for blocks in (in_two, in_many):
            dechunker, splitter = Dechunker(), LineSplitter()
            got_payload = b""
            got_lines: list[bytes] = []
            for block in blocks:
                if dechunker.done:  # only the final CRLF is left, never read
                    break
                data = dechunker.feed(block)
                got_payload += data
                got_lines += splitter.feed(data)
            assert dechunker.done
            got_lines += splitter.finish()
            assert got_payload == payload
            assert [decode_event(x) for x in got_lines] == events


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
def test_line_splitter_keeps_a_partial_line_and_a_last_line_without_newline(
    anyio_backend: str,
) -> None:
    splitter = LineSplitter()
    assert splitter.feed(b'{"type": "ADDED"}\n\n{"type": "DEL') == [b'{"type": "ADDED"}']
    assert splitter.feed(b"ET") == []
    assert splitter.feed(b'ED"}') == []
    assert splitter.finish() == [b'{"type": "DELETED"}']
    assert splitter.finish() == []


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
def test_decode_event_skips_what_is_not_an_event(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="buildruntime.cluster")
    assert decode_event(b'{"type": "ADDED", "object": {}}') == {"type": "ADDED", "object": {}}
    assert decode_event(b"[1, 2]") is None
    assert decode_event(b'{"object": {}}') is None
    assert decode_event(b"\xff\xfe") is None
    assert decode_event(b"{not json") is None
    assert len(caplog.records) == 4


def test_no_kubeconfig_is_the_librarys_own_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The README's example on a machine with no cluster configured: one line, one of
    our errors, not the client's ConfigException."""
    from buildruntime import ClusterUnavailableError, Runtime
    from buildruntime import sync as bsync

    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ClusterUnavailableError, match="cannot load a kubeconfig") as info:
        Runtime.from_kubeconfig(namespace="ci")
    assert info.value.reason == "ConfigException"
    with pytest.raises(ClusterUnavailableError, match="cannot load the kubeconfig /nowhere"):
        Runtime.from_kubeconfig("/nowhere", namespace="ci")
    with pytest.raises(ClusterUnavailableError), bsync.Runtime.from_kubeconfig(namespace="ci"):
        pass
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ClusterUnavailableError, match="in-cluster configuration"):
        Runtime.in_cluster(namespace="ci")
