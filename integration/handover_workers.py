"""Workers for the hand-over tests: each a separate process
(:mod:`integration.handover_worker`, started with the test's own python) that starts
builds and runs their first steps, then is killed with SIGKILL or releases its builds
and exits cleanly. On the real cluster it talks to the API server; on FakeCluster, whose
node lives in the test process, to the fake through a
:class:`~buildruntime.testing.remote.FakeClusterServer` socket, as the worker-death tests do.
"""

from __future__ import annotations

import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from buildruntime.testing.remote import FakeClusterServer

from .conftest import BUSYBOX, Target

ROOT = Path(__file__).resolve().parent.parent
START_BOUND = 120.0
"""Seconds a worker may take to assemble its builds and start their first steps."""


class Worker:
    """A worker process that started builds and ran their first steps; what it printed
    of them."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.lines: dict[str, list[bytes]] = {}
        self.released: list[str] | None = None
        self._changed = anyio.Event()
        assert process.stdout is not None
        self._stdout = BufferedByteReceiveStream(process.stdout)

    def seen(self, build_id: str) -> list[bytes]:
        return list(self.lines.get(build_id, []))

    async def wait_lines(self, build_id: str, count: int) -> None:
        with anyio.fail_after(START_BOUND):
            while len(self.lines.get(build_id, [])) < count:
                await self._changed.wait()

    async def read_until_ready(self) -> list[str]:
        started = []
        with anyio.fail_after(START_BOUND):
            while True:
                line = (await self._stdout.receive_until(b"\n", 1 << 20)).decode()
                if line == "ready":
                    return started
                kind, _, rest = line.partition(" ")
                if kind == "started":
                    started.append(rest)

    async def read_output(self) -> None:
        try:
            while True:
                line = await self._stdout.receive_until(b"\n", 1 << 20)
                kind, _, rest = line.partition(b" ")
                if kind == b"line":
                    build_id, _step, text = rest.split(b" ", 2)
                    self.lines.setdefault(build_id.decode(), []).append(text)
                    self._changed.set()
                    self._changed = anyio.Event()
                elif kind == b"released":
                    self.released = rest.decode().split(",") if rest else []
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError):
            return

    async def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs in the worker."""
        self.process.send_signal(signal.SIGKILL)
        assert await self.process.wait() == -signal.SIGKILL

    async def release(self) -> list[str]:
        """Tell the worker to release its builds; it exits cleanly. The released ids."""
        assert self.process.stdin is not None
        await self.process.stdin.send(b"release\n")
        with anyio.fail_after(60):
            code = await self.process.wait()
        assert code == 0, f"the worker exited with {code}"
        assert self.released is not None
        return self.released


@asynccontextmanager
async def start_worker(
    target: Target,
    tg: TaskGroup,
    worker_id: str,
    build_ids: list[str],
    *,
    lines: int,
    pause: float,
    mode: str,
    lease_duration: float = 2.0,
) -> AsyncIterator[Worker]:
    """A worker process that has started ``build_ids`` and runs their first steps
    (``mode``: ``kill`` or ``release``, what it waits for). Its Lease lasts
    ``lease_duration`` unrenewed (renewed four times as often), so that a new worker
    sees a killed one gone soon. Killed, if still running, when the block ends."""
    async with AsyncExitStack() as stack:
        connection: list[str]
        if target.kind == "fake":
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="br-handover-"))
            server = FakeClusterServer(target.cluster, Path(directory) / "api.sock")
            await stack.enter_async_context(server.serving())
            connection = ["--socket", str(server.path)]
        else:
            cluster: Any = target
            connection = ["--kubeconfig", cluster.kubeconfig, "--server", cluster.upstream]
        command = [
            sys.executable,
            "-m",
            "integration.handover_worker",
            *connection,
            "--namespace",
            target.namespace,
            "--pause-image",
            target.pause_image or "",
            "--busybox",
            BUSYBOX,
            "--worker-id",
            worker_id,
            "--lease-duration",
            str(lease_duration),
            "--builds",
            ",".join(build_ids),
            "--lines",
            str(lines),
            "--pause",
            str(pause),
            "--mode",
            mode,
        ]
        process = await anyio.open_process(command, cwd=ROOT, stderr=None)
        stack.push_async_callback(process.aclose)
        worker = Worker(process)
        try:
            started = await worker.read_until_ready()
            assert started == build_ids
            tg.start_soon(worker.read_output)
            yield worker
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                    await process.wait()


def container_status(pod: dict[str, Any], name: str) -> dict[str, Any]:
    statuses: list[dict[str, Any]] = pod["status"]["containerStatuses"]
    return next(status for status in statuses if status["name"] == name)
