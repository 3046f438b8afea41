"""Worker processes for the tests that kill one: :func:`worker_process` starts
``integration/worker_process.py`` with this interpreter, connected to the target through
a connection of its own that the test can cut (a :class:`TcpProxy` to the real API
server, a :class:`FakeClusterServer` socket to the fake), and kills it on the way out."""

from __future__ import annotations

import json
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from buildruntime.testing.remote import FakeClusterServer

from .conftest import JSON, Target
from .tcp_proxy import TcpProxy

ROOT = Path(__file__).parent.parent
START_BOUND = 120.0
"""Seconds a worker may take to assemble its build and start its step."""


@dataclass
class Worker:
    """A running worker process and what it said."""

    worker_id: str
    build_id: str
    process: Process
    cut: Any
    """``cut(seconds)``: cut this worker's connections and refuse new ones."""
    pod_name: str = ""
    output: list[str] = field(default_factory=list)
    _reader: BufferedByteReceiveStream | None = None

    async def _line(self) -> str:
        if self._reader is None:
            assert self.process.stdout is not None
            self._reader = BufferedByteReceiveStream(self.process.stdout)
        line = (await self._reader.receive_until(b"\n", 1 << 20)).decode()
        self.output.append(line)
        return line

    async def started(self) -> None:
        """Wait for ``RUNNING``: the build's pod exists and its step runs."""
        with anyio.fail_after(START_BOUND):
            while True:
                words = (await self._line()).split()
                if words[:1] == ["RUNNING"]:
                    assert words[1] == self.build_id
                    self.pod_name = words[2]
                    return

    async def result(self) -> JSON:
        """The step's lines and exit code, once the worker finished (``--finish``)."""
        while True:
            line = await self._line()
            if line.startswith("RESULT "):
                result: JSON = json.loads(line[len("RESULT ") :])
                return result

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs in the worker."""
        self.process.send_signal(signal.SIGKILL)


@asynccontextmanager
async def worker_process(
    target: Target,
    worker_id: str,
    build_id: str,
    *options: str,
) -> AsyncIterator[Worker]:
    """Start a worker process (see ``worker_process.py`` for ``options``); it is killed
    (if still running) when the block ends."""
    async with AsyncExitStack() as stack:
        connection: list[str]
        if target.kind == "fake":
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="br-worker-"))
            server = FakeClusterServer(target.cluster, Path(directory) / "api.sock")
            await stack.enter_async_context(server.serving())
            connection, cut = ["--socket", str(server.path)], server.refuse
        else:
            kubeconfig = target.kubeconfig  # type: ignore[attr-defined]
            upstream = urlparse(target.upstream)  # type: ignore[attr-defined]
            proxy = stack.enter_context(
                TcpProxy(upstream.hostname or "127.0.0.1", upstream.port or 443)
            )
            connection = ["--kubeconfig", kubeconfig, "--server", proxy.url]
            connection += ["--pause-image", str(target.pause_image)]
            cut = proxy.refuse
        command = [
            sys.executable,
            "-m",
            "integration.worker_process",
            "--namespace",
            target.namespace,
            "--worker-id",
            worker_id,
            "--build-id",
            build_id,
            *connection,
            *options,
        ]
        process = await anyio.open_process(command, cwd=ROOT, stderr=None)
        worker = Worker(worker_id, build_id, process, cut)
        try:
            yield worker
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    worker.kill()
                await process.wait()
                await process.aclose()
