"""Reading one step's log from the kubelet into its buffer, across cuts and rotations.

The I/O half of the capture: log requests (``follow`` and ``timestamps``, then
``sinceTime`` to resume), retries with backoff while the container runs, the reads a
kubelet stream behind a rotation needs (after the step ended, or once it goes quiet),
and the buffer. Which lines of a read are new is :class:`~buildruntime.logs.resume.ResumeJudge`'s
call.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio

from buildruntime.cluster.port import ApiError, Cluster, NotFoundError, UnavailableError
from buildruntime.logs.buffer import LogBuffer
from buildruntime.logs.resume import MISSING_PREFIX, Judgement, ResumeJudge
from buildruntime.logs.stamps import since_time_of

__all__ = ["MISSING_PREFIX", "LogCapture"]

log = logging.getLogger("buildruntime.logs")

ROTATION_CHECK_BYTES = 1024 * 1024
"""Below this much output no log file can have been rotated (the kubelet rotates at
``containerLogMaxSize``, 10 MiB by default; a smaller setting than this is not
covered), so a step that printed less needs no read after its end."""
_CRI_LINE_OVERHEAD = len("stdout F ")  # what a line takes in the node's file beyond our copy

IDLE_AT_END = 2.0
"""Seconds without a byte after which a follow stream is taken to be waiting at the
end of its file: the kubelet sends what its file holds at once and looks for more at
least every second, so a stream cut after such a silence had read its file to the end."""

STALL_SILENCE = 1.0
"""Seconds of silence after a backlog (:data:`STALL_BURST_BYTES` received without a
pause) after which a follow stream is read again. A kubelet stream that was behind the
step when the node rotated its log reads the old file to its end and then waits,
sending nothing, while the step writes to the new file; at the next rotation it jumps
to the newest file, past the one in between (seen on kubelet 1.33). A new request
reads the current file from the last delivered second instead; a step that merely went
quiet after a burst costs one request."""
STALL_BURST_BYTES = 1024 * 1024
BURST_PAUSE = 0.25  # a gap between chunks that ends a burst


class CaptureObserver(Protocol):
    """Told of every batch of lines delivered (never of single lines), for metrics."""

    def captured(self, lines: int, size: int) -> None:
        """``lines`` lines of ``size`` bytes (newlines not counted) went to the buffer."""

    def missing(self, *, certain: bool) -> None:
        """A notice that lines are (``certain``) or may be missing went to the buffer."""


class _Unobserved:
    def captured(self, lines: int, size: int) -> None:
        pass

    def missing(self, *, certain: bool) -> None:
        pass


class LogCapture:
    """Reads one step's log into its buffer, resuming after cuts, until the step ends.

    ``step_ended()`` waits until the cache shows the step's container terminated or the
    pod gone, returning False if that does not happen within the time given.

    A stream cut while the container runs is opened again (after ``retry_delay``,
    doubling up to ``max_retry_delay``) from the second of the last delivered line; the
    judge drops what that read repeats. A stream the server ends is the container's
    end only if the cache says so within ``end_grace`` (a proxy, or the end of a file
    the node rotated, ends one too). Two reads make a stream that was behind the step at
    a rotation complete: after the step ended, one plain read of the current file (for
    logs of :data:`ROTATION_CHECK_BYTES` or more, so small steps keep one log request),
    and while it runs, a new read when the stream goes quiet after a backlog
    (:data:`STALL_SILENCE`).
    """

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        pod: str,
        container: str,
        buffer: LogBuffer,
        *,
        step_ended: Callable[[float], Awaitable[bool]],
        pod_gone: Callable[[], bool],
        retry_delay: float = 0.2,
        max_retry_delay: float = 5.0,
        end_grace: float = 5.0,
        observer: CaptureObserver | None = None,
    ) -> None:
        self._cluster = cluster
        self._namespace = namespace
        self._pod = pod
        self._container = container
        self.buffer = buffer
        self._step_ended = step_ended
        self._pod_gone = pod_gone
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._end_grace = end_grace
        self._observer: CaptureObserver = observer or _Unobserved()
        self._judge = ResumeJudge()
        # At least the bytes the node's files hold of what was read: whether they can
        # have been rotated at all, and so whether the extra reads are worth a request.
        self._file_bytes = 0

    async def run(self) -> None:
        """Capture until the container's log is read to its end (or the pod vanished)."""
        delay = self._retry_delay
        try:
            while True:
                try:
                    if await self._read_once():
                        self.buffer.finish(lost_reason=self._judge.lost_reason)
                        return
                    delay = self._retry_delay
                except NotFoundError:
                    self.buffer.finish(lost_reason="the pod was deleted")
                    return
                except UnavailableError as error:
                    log.info("log stream of %s/%s cut: %s", self._pod, self._container, error)
                except ApiError as error:
                    if error.status != 400:
                        log.warning(
                            "log stream of %s/%s failed: %s", self._pod, self._container, error
                        )
                if self._pod_gone() and await self._step_ended(0):
                    # Nothing left to read from: the pod is gone and with it the log.
                    self.buffer.finish(lost_reason="the pod was deleted")
                    return
                await anyio.sleep(delay)
                delay = min(delay * 2, self._max_retry_delay)
        finally:
            self.buffer.finish()

    async def _read_once(self) -> bool:
        """One follow request (and the read after the end it may need); True when the
        log has been read to its end."""
        ended_before = await self._step_ended(0)
        pending = await self._read(follow=True)
        if pending is None:
            return False
        # The server ended the stream: the container has ended, or the stream stalled
        # (a proxy, or the end of a file the node rotated). Only the cache can tell which.
        if not await self._step_ended(self._end_grace):
            self._judge.hold(pending)  # sent again by the resume if the file still holds it
            return False
        if (
            not ended_before
            and self._judge.delivered.stamp
            and self._file_bytes >= ROTATION_CHECK_BYTES
        ):
            # The stream may have been reading a file the node had rotated while the
            # stream was behind (kubelet ReadLogs keeps the file it opened, and only a
            # stream that had caught up with it notices the new one): the rest is in the
            # node's current file, which a read from now on returns. A read opened after
            # the container ended needs none: the node rotates only running containers.
            self._judge.hold(pending)
            pending = await self._read(follow=False)
        # A final line without a newline is complete now that the container ended.
        self._deliver(self._judge.finish(pending or b""))  # (no stall without follow)
        return True

    async def _read(self, *, follow: bool) -> bytes | None:
        """One log request; returns what followed the last newline when the stream
        ended normally (a final line without one), None when it was given up as stalled
        at the end of a rotated file (see :data:`STALL_SILENCE`)."""
        since = self._judge.start_read()
        pending = b""
        async with self._cluster.stream_logs(
            self._namespace,
            self._pod,
            self._container,
            follow=follow,
            timestamps=True,
            since_time=None if since is None else since_time_of(since),
        ) as chunks:
            heard = anyio.current_time()
            burst = 0  # bytes received with no pause since the stream last paused
            iterator = aiter(chunks)
            try:
                while True:
                    stall_check = (
                        follow
                        and burst >= STALL_BURST_BYTES
                        and self._file_bytes >= ROTATION_CHECK_BYTES
                    )
                    with anyio.move_on_after(STALL_SILENCE if stall_check else math.inf) as quiet:
                        try:
                            chunk = await anext(iterator)
                        except StopAsyncIteration:
                            break
                    if quiet.cancelled_caught:
                        # Behind the step, then nothing: the end of a file the node may
                        # have rotated, where the kubelet's stream waits for the step to
                        # stop (and then jumps to the newest file, past any between).
                        log.info(
                            "log stream of %s/%s went quiet after a backlog: reading the "
                            "node's current log file again",
                            self._pod,
                            self._container,
                        )
                        self._judge.reached_file_end()
                        self._judge.hold(pending)
                        return None
                    now = anyio.current_time()
                    burst = len(chunk) if now - heard >= BURST_PAUSE else burst + len(chunk)
                    heard = now
                    data = pending + chunk if pending else chunk
                    cut = data.rfind(b"\n")
                    if cut < 0:
                        pending = data
                        continue
                    pending = data[cut + 1 :]
                    lines = data[:cut].split(b"\n")
                    self._file_bytes += cut + 1 + _CRI_LINE_OVERHEAD * len(lines)
                    self._deliver(self._judge.take(lines))
            except BaseException:
                # A partial line is dropped: the resume sends it again, whole.
                self._judge.cut(idle=anyio.current_time() - heard >= IDLE_AT_END)
                raise
        self._judge.reached_file_end()
        return pending

    def _deliver(self, judgement: Judgement) -> None:
        """Append a judgement's lines to the buffer, and say what it found amiss."""
        for _ in range(judgement.unstamped):
            log.warning("log line of %s/%s without a timestamp", self._pod, self._container)
        lines = judgement.lines
        count, size = len(lines), sum(map(len, lines))
        rotation = judgement.rotation
        if rotation is not None:
            log.warning("%s/%s: %s", self._pod, self._container, rotation.reason)
            self._observer.missing(certain=rotation.certain)
            count, size = count - 1, size - len(rotation.notice)  # the notice is ours
        if count:
            self._observer.captured(count, size)
        self.buffer.append(lines)
