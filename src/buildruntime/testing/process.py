"""Container instances: what containerd + runc would run, as local processes.

A step image runs its command line (``command + args`` merged with the image's
``ENTRYPOINT``/``CMD`` by :func:`.environment.command_line`) in the working directory
the kubelet resolved inside the pod's root (:mod:`.rootfs`), with only the environment
:mod:`.environment` gives it, as a subprocess in its own session, so
signalling it reaches every process of the "container" the way a signal to a container's
init and the end of its PID namespace would. stdout and stderr are read line by line and
timestamped as they are read. A memory limit is enforced by polling the resident memory
of the process group and SIGKILLing it past the limit (reported as ``OOMKilled``, exit
137, as the kernel's cgroup OOM killer would be). The pause image runs nothing: it
"runs" until stopped and then exits 0, like the pause binary on SIGTERM.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream

from buildruntime.testing import objects
from buildruntime.testing.logs import ContainerLog
from buildruntime.testing.tasks import Notifier

_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def parse_quantity(text: Any) -> float:
    """A Kubernetes resource quantity (``16Mi``, ``64M``, ``1.5Gi``, ``128e6``) as a number."""
    match = _QUANTITY.match(str(text).strip())
    if not match or (match.group(2) not in _BINARY and match.group(2) not in _DECIMAL):
        raise ValueError(f"quantities must match the regular expression: {text!r}")
    number, suffix = float(match.group(1)), match.group(2)
    return number * (_BINARY.get(suffix) or _DECIMAL[suffix])


class _ProcessGroups:
    """Which processes belong to which process group, from one scan of ``/proc`` shared
    by every memory watcher and refreshed at most every ``max_age`` seconds."""

    def __init__(self, max_age: float = 0.05) -> None:
        self._max_age = max_age
        self._scanned_at = -math.inf
        self._groups: dict[int, list[int]] = {}

    def members(self, pgid: int) -> list[int]:
        now = time.monotonic()
        if now - self._scanned_at >= self._max_age:
            self._groups = self._scan()
            self._scanned_at = now
        return self._groups.get(pgid, [pgid])

    @staticmethod
    def _scan() -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    stat = handle.read()
            except OSError:
                continue
            fields = stat.rsplit(b")", 1)[-1].split()
            if len(fields) > 2:
                groups.setdefault(int(fields[2]), []).append(int(entry))
        return groups


_GROUPS = _ProcessGroups()


def _resident_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as handle:
                total += int(handle.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


class Instance:
    """One runtime container: one attempt at running a container of the pod spec."""

    def __init__(
        self, *, name: str, image: str, reported_image: str, image_id: str, pause: bool
    ) -> None:
        self.name = name
        self.image = image
        """The image as the pod spec names it (a changed spec restarts the container)."""
        self.reported_image = reported_image
        """The image as the container status names it (normal form, or the alias)."""
        self.image_id = image_id
        self.pause = pause
        self.container_id = objects.container_id()
        self.log = ContainerLog()
        self.state = "created"
        self.started_at: str | None = None
        self.finished_at: str | None = None
        self.exit_code: int | None = None
        self.reason: str | None = None
        self.message: str | None = None
        self.changed = Notifier()
        self.on_change: Callable[[Instance], None] | None = None
        """Called synchronously when the instance starts running and when it terminates."""
        self._forced: tuple[str, int] | None = None
        self._oom = False
        self._pgid: int | None = None
        self._process: anyio.abc.Process | None = None
        self._stop_signal: int | None = None

    # --------------------------------------------------------------- state
    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def terminated(self) -> bool:
        return self.state == "terminated"

    def _set_running(self) -> None:
        self.state = "running"
        self.started_at = objects.api_time()
        self.changed.notify()
        if self.on_change is not None:
            self.on_change(self)

    def _set_terminated(self, exit_code: int, reason: str, message: str | None = None) -> None:
        if self.terminated:
            return
        if self.started_at is None:
            self.started_at = objects.api_time()
        if self._forced is not None:
            reason, exit_code = self._forced
        elif self._oom:
            reason, exit_code = "OOMKilled", 137
        self.state = "terminated"
        self.finished_at = objects.api_time()
        self.exit_code, self.reason, self.message = exit_code, reason, message
        self.log.finish()
        self.changed.notify()
        if self.on_change is not None:
            self.on_change(self)

    async def wait_started(self) -> None:
        while self.state == "created":
            await self.changed.wait()

    async def wait_terminated(self) -> None:
        while not self.terminated:
            await self.changed.wait()

    # ------------------------------------------------------------- signals
    def signal(self, signum: int) -> None:
        """Deliver a signal to the whole container (its process group)."""
        if self.terminated:
            return
        if self.pause or self._pgid is None:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._set_terminated(0, "Completed")
            elif signum == signal.SIGKILL:
                self._set_terminated(128 + signum, "Error")
            return
        self._killpg(signum)

    def _killpg(self, signum: int) -> None:
        if self._pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pgid, signum)

    async def stop(self, grace_seconds: float) -> None:
        """What StopContainer does: SIGTERM, then SIGKILL after the grace period."""
        if self.terminated:
            return
        self.signal(signal.SIGTERM)
        with anyio.move_on_after(max(grace_seconds, 0.0)):
            await self.wait_terminated()
        if not self.terminated:
            self.signal(signal.SIGKILL)
            await self.wait_terminated()

    async def force_kill(self, reason: str, exit_code: int) -> None:
        """SIGKILL, reporting ``reason`` and ``exit_code`` as the runtime's verdict."""
        if self.terminated:
            return
        self._forced = (reason, exit_code)
        self.signal(signal.SIGKILL)
        await self.wait_terminated()

    # ----------------------------------------------------------------- run
    def start_pause(self) -> None:
        self._set_running()

    async def run(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        memory_limit: float | None,
    ) -> None:
        """Run the process in ``cwd`` until it exits; always leaves the instance
        terminated and no process of its group alive."""
        try:
            await self._run(argv, env=env, cwd=cwd, memory_limit=memory_limit)
        finally:
            with anyio.CancelScope(shield=True):
                await self._reap()

    def start_failed(self, message: str) -> None:
        """The runtime could not start the process (``StartError``, exit 128)."""
        self._set_terminated(
            128,
            "StartError",
            "failed to create containerd task: failed to create shim task: OCI runtime "
            f"create failed: runc create failed: unable to start container process: {message}"
            ": unknown",
        )

    async def _run(
        self, argv: list[str], *, env: Mapping[str, str], cwd: str, memory_limit: float | None
    ) -> None:
        if self.terminated:
            return
        if not argv:
            self._set_running()
            self._set_terminated(0, "Completed")
            return
        try:
            process = await anyio.open_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=dict(env),
                start_new_session=True,
            )
        except OSError as error:
            if isinstance(error, FileNotFoundError):
                why = "executable file not found in $PATH"
            elif isinstance(error, PermissionError):
                why = "permission denied"
            else:
                why = str(error.strerror)
            self.start_failed(f'exec: "{argv[0]}": {why}')
            return
        self._process = process
        self._pgid = process.pid
        if self.terminated:
            # Stopped while being created.
            self._killpg(signal.SIGKILL)
            return
        self._set_running()
        assert process.stdout is not None
        assert process.stderr is not None
        async with anyio.create_task_group() as pumps:
            pumps.start_soon(self._pump, process.stdout, "stdout")
            pumps.start_soon(self._pump, process.stderr, "stderr")
            async with anyio.create_task_group() as watchers:
                if memory_limit is not None:
                    watchers.start_soon(self._watch_memory, memory_limit)
                code = await process.wait()
                watchers.cancel_scope.cancel()
            # The container's init exited: the rest of its processes die with it.
            self._killpg(signal.SIGKILL)
            # Bounded wait for the pipes to drain (a process that escaped the group
            # could hold them open).
            pumps.cancel_scope.deadline = anyio.current_time() + 2.0
        exit_code = 128 - code if code < 0 else code
        self._set_terminated(exit_code, "Completed" if exit_code == 0 else "Error")

    async def _pump(self, stream: ByteReceiveStream, name: str) -> None:
        partial = b""
        try:
            while True:
                try:
                    data = await stream.receive(65536)
                except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                    break
                data = partial + data
                *lines, partial = data.split(b"\n")
                for line in lines:
                    self.log.append(objects.now_ns(), line, complete=True, stream=name)
        finally:
            if partial:
                self.log.append(objects.now_ns(), partial, complete=False, stream=name)

    async def _watch_memory(self, limit: float) -> None:
        assert self._pgid is not None
        while True:
            if _resident_bytes(_GROUPS.members(self._pgid)) > limit:
                self._oom = True
                self.signal(signal.SIGKILL)
                return
            await anyio.sleep(0.01)

    async def _reap(self) -> None:
        process = self._process
        if process is not None:
            if process.returncode is None:
                self._killpg(signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            self._killpg(signal.SIGKILL)
            with contextlib.suppress(Exception):
                await process.aclose()
        if not self.terminated:
            self._set_terminated(137, "Error")
