"""Workers for the hand-over tests, each in the way its target allows.

On the real cluster a worker is a separate process (:mod:`integration.handover_worker`)
started with the test's own python and killed with SIGKILL: nothing of it survives but
what it left in the cluster.

On FakeCluster the node (its processes and their log files) lives in the test process,
so a worker cannot be another process. There the worker is a Runtime in a task of the
test process behind a :class:`SeverableCluster`; its "SIGKILL" severs every connection
at once (every later request fails as a refused connection would) and cancels the task,
so the runtime's exit, which would remove its builds, cannot reach the cluster. What
differs from a real kill: the dead worker's coroutines run their ``finally`` blocks
(their requests all fail), and its memory goes with the test process, not at once.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process, TaskGroup, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from buildruntime import Build, Runtime
from buildruntime.testing.severable import SeverableCluster

from .conftest import BUSYBOX, Target
from .handover_worker import STEPS, start_builds

ROOT = Path(__file__).resolve().parent.parent


class Worker:
    """A worker that started builds and ran their first steps; what it printed of them."""

    def __init__(self) -> None:
        self.lines: dict[str, list[bytes]] = {}
        self._changed = anyio.Event()

    def seen(self, build_id: str) -> list[bytes]:
        return list(self.lines.get(build_id, []))

    def _saw(self, build_id: str, line: bytes) -> None:
        self.lines.setdefault(build_id, []).append(line)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_lines(self, build_id: str, count: int) -> None:
        with anyio.fail_after(120):
            while len(self.lines.get(build_id, [])) < count:
                await self._changed.wait()

    async def kill(self) -> None:
        raise NotImplementedError

    async def release(self) -> list[str]:
        """Release the builds and let the worker exit cleanly; the released ids."""
        raise NotImplementedError


class ProcessWorker(Worker):
    def __init__(self, process: Process) -> None:
        super().__init__()
        self.process = process
        assert process.stdout is not None
        self._stdout = BufferedByteReceiveStream(process.stdout)
        self.released: list[str] | None = None

    async def read_until_ready(self) -> list[str]:
        started = []
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
                    self._saw(build_id.decode(), text)
                elif kind == b"released":
                    self.released = rest.decode().split(",") if rest else []
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError):
            return

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert await self.process.wait() == -signal.SIGKILL

    async def release(self) -> list[str]:
        assert self.process.stdin is not None
        await self.process.stdin.send(b"release\n")
        with anyio.fail_after(60):
            code = await self.process.wait()
        assert code == 0, f"the worker exited with {code}"
        assert self.released is not None
        return self.released


class TaskWorker(Worker):
    def __init__(self, target: Target, worker_id: str) -> None:
        super().__init__()
        self.port = SeverableCluster(target.cluster)
        self._target = target
        self._worker_id = worker_id
        self._scope = anyio.CancelScope()
        self._release = anyio.Event()
        self._exited = anyio.Event()
        self.released: list[str] = []

    async def run(
        self, build_ids: list[str], lines: int, pause: float, *, task_status: TaskStatus[None]
    ) -> None:
        try:
            with self._scope:
                async with Runtime(
                    self.port,  # type: ignore[arg-type]
                    self._target.namespace,
                    pause_image=self._target.pause_image or "registry.k8s.io/pause:3.10",
                    worker_id=self._worker_id,
                    api_timeout=0.5,
                    delete_timeout=1.0,
                ) as rt:
                    builds = await start_builds(
                        rt, build_ids, lines=lines, pause=pause, busybox=BUSYBOX
                    )
                    task_status.started()
                    async with anyio.create_task_group() as tg:
                        for build in builds:
                            tg.start_soon(self._follow, rt, build)
                        await self._release.wait()
                        self.released = await rt.release_builds()
        finally:
            self._exited.set()

    async def _follow(self, rt: Runtime, build: Build) -> None:
        async for line in rt.tail_container(build, STEPS[0]):
            self._saw(build.build_id, line)

    async def kill(self) -> None:
        self.port.sever()
        self._scope.cancel()
        await self._exited.wait()

    async def release(self) -> list[str]:
        self._release.set()
        await self._exited.wait()
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
) -> AsyncIterator[Worker]:
    """A worker (a process on the real cluster, a task on FakeCluster) that has started
    ``build_ids`` and runs their first steps."""
    if target.kind == "fake":
        worker = TaskWorker(target, worker_id)
        await tg.start(worker.run, build_ids, lines, pause)
        try:
            yield worker
        finally:
            if not worker._exited.is_set():
                await worker.kill()
        return
    command = [
        sys.executable,
        "-m",
        "integration.handover_worker",
        "--kubeconfig",
        os.environ["KUBECONFIG"],
        "--namespace",
        target.namespace,
        "--pause-image",
        target.pause_image or "",
        "--busybox",
        BUSYBOX,
        "--worker-id",
        worker_id,
        "--builds",
        ",".join(build_ids),
        "--lines",
        str(lines),
        "--pause",
        str(pause),
        "--mode",
        mode,
    ]
    async with await anyio.open_process(command, cwd=ROOT, stderr=None) as process:
        process_worker = ProcessWorker(process)
        with anyio.fail_after(120):
            started = await process_worker.read_until_ready()
        assert started == build_ids
        tg.start_soon(process_worker.read_output)
        try:
            yield process_worker
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


def container_status(pod: dict[str, Any], name: str) -> dict[str, Any]:
    statuses: list[dict[str, Any]] = pod["status"]["containerStatuses"]
    return next(status for status in statuses if status["name"] == name)
