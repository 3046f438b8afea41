"""Reading one step's log from the kubelet into its buffer, across cuts and rotations."""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import Awaitable, Callable

import anyio

from buildruntime.cluster.port import ApiError, Cluster, NotFoundError, UnavailableError
from buildruntime.logs.buffer import LogBuffer
from buildruntime.logs.stamps import (
    STAMP_WIDTH,
    fixed_stamp,
    parse_stamp,
    since_time_of,
    stamp_ns,
    timestamp_second,
)

log = logging.getLogger("buildruntime.logs")

RECENT_LINES = 256
"""Delivered lines remembered for a resume: enough to cover stdout and stderr lines
written out of stamp order (microseconds apart at most), bounded in memory."""
_KEY_BYTES = 1024  # a line is remembered by its stamp and up to this much of its text

ROTATION_CHECK_BYTES = 1024 * 1024
"""Below this much output no log file can have been rotated (the kubelet rotates at
``containerLogMaxSize``, 10 MiB by default; a smaller setting than this is not
covered), so a step that printed less needs no read after its end."""
_CRI_LINE_OVERHEAD = len("stdout F ")  # what a line takes in the node's file beyond our copy

ROTATION_GAP_NS = 3 * 1_000_000_000
"""The kubelet looks at a container's log size once per ``containerLogMonitorInterval``
(3 s at the least, 10 s by default), so a current file that starts less than this
after the last line read from the file before it has (barring a delayed check) no
whole rotated file between them."""

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

MISSING_PREFIX = b"[buildruntime] "
"""Start of the one line the capture adds to a step's log where the node had rotated
lines away before they could be read: the lines it prints are all a user sees, and a
log with a silent hole would look complete."""


class LogCapture:
    """Reads one step's log into its buffer, resuming after cuts, until the step ends.

    ``step_ended()`` waits until the cache shows the step's container terminated or the
    pod gone, returning False if that does not happen within the time given.

    **Resuming.** A read with ``sinceTime`` (whole seconds) returns the lines of the
    node's *current* log file stamped in or after that second, in file order (the
    kubelet filters line by line). That file may be the one read before, or a newer
    one after a rotation, which does not hold every line of the resumed second; so the
    lines already delivered are recognised by their full nanosecond stamps, not by
    their position in the second. The runtime (containerd) stamps each line when it
    reads it and writes it under a lock shared by stdout and stderr, so within one
    stream stamps follow file order, while a stdout and a stderr line can be written
    in the opposite order to their stamps (by the microseconds between stamping and
    writing). Hence, for the first lines of a resumed read:

    - the first line stamped after everything delivered ends the overlap: it has not
      been delivered, and nothing after it in the file has been either;
    - a line stamped exactly like the newest delivered line is skipped as many times
      as lines with that stamp were delivered (stamps can repeat on a coarse clock);
    - a line stamped earlier is skipped when it is one of the last
      :data:`RECENT_LINES` delivered (matched by stamp and text) or, once more lines
      than that were delivered, older than all of them; otherwise it is a line of the
      other stream written after the last delivered one, and is delivered.

    The same judgement applies inside one live stream whenever a line is stamped before
    the newest delivered one: a line of the other stream written out of order is kept,
    and a file the kubelet sends again (it reopens the current file once per rotation
    it was told of) adds nothing.

    **Rotation.** If the first line of a resumed read is new (or the read is empty),
    the node's current file no longer holds the last delivered line: it was rotated
    since. Lines between the two files are lost if the previous stream stopped short
    of the end of its file (it was cut while bytes were flowing), and may be lost if
    the gap is long enough for a whole rotated file (:data:`ROTATION_GAP_NS`); either
    way one line starting with :data:`MISSING_PREFIX` says which span is missing, and
    the buffer's ``lost_reason`` says the same. Otherwise a line the rotation cut in
    two (the old file ends without its newline) is delivered whole. Two reads make a
    stream that was behind the step at a rotation complete: after the step ended, one
    plain read of the current file (for logs of :data:`ROTATION_CHECK_BYTES` or more,
    so small steps keep one log request), and while it runs, a new read when the
    stream goes quiet after a backlog (:data:`STALL_SILENCE`).
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
        # What has been delivered.
        self._last = b""  # the newest stamp delivered (fixed width); b"" before any line
        self._at_last = 0  # lines delivered stamped exactly self._last
        self._recent: deque[bytes] = deque(maxlen=RECENT_LINES)  # keys of the latest lines
        self._file_bytes = 0  # at least the bytes the node's files hold of what was read
        self._at_file_end = True  # the last delivered line was the last of its file
        self._carry = b""  # a final partial line of a stream that ended, not yet delivered
        self._join = b""  # a partial line the next delivered line completes
        self._missing: list[str] = []
        # The read in progress.
        self._overlap = False  # still judging lines that may have been delivered
        self._judged = False  # a stamped line of this read was judged
        self._fresh_lines = False  # this read delivered a line
        self._start_last = b""
        self._start_at_last = 0
        self._seen_at_last = 0
        self._remaining: Counter[bytes] | None = None
        self._low = b""

    async def run(self) -> None:
        """Capture until the container's log is read to its end (or the pod vanished)."""
        delay = self._retry_delay
        try:
            while True:
                try:
                    if await self._read_once():
                        self.buffer.finish(lost_reason="; ".join(self._missing) or None)
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
            self._overlap = False
            return False
        # The server ended the stream: the container has ended, or the stream stalled
        # (a proxy, or the end of a file the node rotated). Only the cache can tell which.
        if not await self._step_ended(self._end_grace):
            self._overlap = False
            if pending:
                self._carry = pending  # sent again by the resume if the file still holds it
            return False
        if not ended_before and self._last and self._file_bytes >= ROTATION_CHECK_BYTES:
            # The stream may have been reading a file the node had rotated while the
            # stream was behind (kubelet ReadLogs keeps the file it opened, and only a
            # stream that had caught up with it notices the new one): the rest is in the
            # node's current file, which a read from now on returns. A read opened after
            # the container ended needs none: the node rotates only running containers.
            self._overlap = False  # the read below is the one that reads to the end
            if pending:
                self._carry = pending
            pending = await self._read(follow=False)
        if pending:
            # A final line without a newline: complete now that the container ended.
            self._take([pending])
        self._end_read()
        leftover = self._join or (self._carry_line() if self._carry else b"")
        if leftover:
            self.buffer.append([leftover])
        self._carry = self._join = b""
        return True

    async def _read(self, *, follow: bool) -> bytes | None:
        """One log request; returns what followed the last newline when the stream
        ended normally (a final line without one), None when it was given up as stalled
        at the end of a rotated file (see :data:`STALL_SILENCE`)."""
        resuming = bool(self._last)
        self._overlap = resuming
        self._judged = self._fresh_lines = False
        self._start_last, self._start_at_last = self._last, self._at_last
        self._seen_at_last = 0
        self._remaining = None
        if not resuming:
            self._carry = b""  # the read starts at the first line: it sends it again
        pending = b""
        async with self._cluster.stream_logs(
            self._namespace,
            self._pod,
            self._container,
            follow=follow,
            timestamps=True,
            since_time=since_time_of(timestamp_second(self._last)) if resuming else None,
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
                        self._at_file_end = True
                        if pending:
                            self._carry = pending
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
                    self._take(lines)
            except BaseException:
                if self._fresh_lines:
                    self._at_file_end = anyio.current_time() - heard >= IDLE_AT_END
                raise
        self._at_file_end = True
        return pending

    def _end_read(self) -> None:
        """A read ended normally after the container ended, so it read the node's file to
        its end: if it had nothing at all for a resume, that file is newer than the last
        delivered line's (which it would have held). (A stream that ends while the
        container runs may have been closed by a proxy before its first byte.)"""
        if self._overlap and not self._judged:
            fresh: list[bytes] = []
            self._rotated_away(None, fresh)
            self.buffer.append(fresh)
        self._overlap = False

    def _take(self, raw_lines: list[bytes]) -> None:
        """Deliver the lines of a read that were not delivered before."""
        while raw_lines:
            raw_lines = self._take_run(raw_lines)

    def _take_run(self, raw_lines: list[bytes]) -> list[bytes]:
        """Deliver lines up to the first that goes back in time; returns the lines from
        there on, to be judged as an overlap (empty when all were taken)."""
        fresh: list[bytes] = []
        start = self._judge_overlap(raw_lines, fresh) if self._overlap else 0
        if start == len(raw_lines):
            self.buffer.append(fresh)
            return []
        self._fresh_lines = True
        join_at = len(fresh) if self._join else -1
        last, at_last = self._last, self._at_last
        irregular = False
        back_at = -1
        for index, raw in enumerate(raw_lines[start:] if start else raw_lines):
            if (  # inline fixed_stamp(raw): this loop sees every line
                len(raw) > STAMP_WIDTH
                and raw[STAMP_WIDTH] == 32  # " "
                and raw[STAMP_WIDTH - 1] == 90  # "Z"
                and raw[19] == 46  # "."
                and raw[10] == 84  # "T"
            ):
                stamp, content = raw[:STAMP_WIDTH], raw[STAMP_WIDTH + 1 :]
            else:
                irregular = True
                parsed = parse_stamp(raw)
                if parsed is None:
                    log.warning("log line of %s/%s without a timestamp", self._pod, self._container)
                    fresh.append(raw)
                    continue
                stamp, content = parsed
            if stamp > last:
                last, at_last = stamp, 1
            elif stamp == last:
                at_last += 1
            else:
                # The stream went back in time: a line of the other stream (stdout or
                # stderr) written out of stamp order, or the kubelet reopening a file
                # it already sent (it reopens the current file once per rotation it
                # was told of, so a stream behind by two rotations sends the newest
                # file twice). Judge the rest as a resumed read's overlap.
                back_at = start + index
                break
            fresh.append(content)
        self._last, self._at_last = last, at_last
        if join_at >= 0:
            fresh[join_at] = self._join + fresh[join_at]
            self._join = b""
        end = back_at if back_at >= 0 else len(raw_lines)
        tail = raw_lines[max(start, end - RECENT_LINES) : end]
        if irregular:
            self._recent.extend(key for key in map(_key, tail) if key is not None)
        else:
            self._recent.extend([raw[:_KEY_BYTES] for raw in tail])
        self.buffer.append(fresh)
        if back_at < 0:
            return []
        self._overlap = self._judged = True
        self._start_last, self._start_at_last = self._last, self._at_last
        self._seen_at_last = 0
        self._remaining = None
        return raw_lines[back_at:]

    def _judge_overlap(self, raw_lines: list[bytes], fresh: list[bytes]) -> int:
        """Skip the lines of a resumed read that were delivered before (see the class
        docstring); returns the index of the first line after the overlap."""
        for index, raw in enumerate(raw_lines):
            parsed = parse_stamp(raw)
            if parsed is None:
                if not self._judged:
                    # The rest of a long line whose first 16 KiB fragment was stamped
                    # before sinceTime: the kubelet skips that fragment and sends the
                    # rest unstamped. The line was delivered whole before.
                    continue
                log.warning("log line of %s/%s without a timestamp", self._pod, self._container)
                fresh.append(raw)
                continue
            stamp, content = parsed
            first = not self._judged
            self._judged = True
            if stamp > self._start_last:
                self._overlap = False
                if first:
                    self._rotated_away(stamp, fresh)
                else:
                    self._carry = b""
                return index
            if stamp == self._start_last and self._seen_at_last < self._start_at_last:
                self._seen_at_last += 1
                self._carry = b""
                continue
            if self._remaining is None:
                self._remaining = Counter(self._recent)
                self._low = min((key[:STAMP_WIDTH] for key in self._recent), default=stamp)
            key = _key(raw)
            if key is not None and self._remaining[key] > 0:
                self._remaining[key] -= 1
                self._carry = b""
                continue
            if stamp < self._low and len(self._recent) == RECENT_LINES:
                # Older than every remembered line, and lines were delivered before
                # those: delivered long ago. (While the window holds every line ever
                # delivered, membership alone decides.)
                self._carry = b""
                continue
            # Stamped before the newest delivered line, yet not delivered: a line of the
            # other stream (stdout or stderr) written after the last delivered one.
            if first:
                self._rotated_away(stamp, fresh)
            self._fresh_lines = True
            if stamp == self._last:
                self._at_last += 1
            if key is not None:
                self._recent.append(key)
            fresh.append(self._join + content)
            self._join = b""
        return len(raw_lines)

    def _rotated_away(self, first_stamp: bytes | None, fresh: list[bytes]) -> None:
        """A resumed read starts after the last delivered line: the node's file that held
        it was rotated. Say which lines, if any, could not be read."""
        carry = self._carry_line() if self._carry else None
        self._carry = b""
        short = not self._at_file_end
        gap = first_stamp is not None and (
            stamp_ns(first_stamp) - stamp_ns(self._start_last) >= ROTATION_GAP_NS
        )
        if not (short or gap):
            if carry is not None and first_stamp is not None:
                # The old file ended inside a line: containerd cuts the line it is writing
                # when the kubelet has it reopen the log (a P record at the end of the old
                # file, the rest first in the new one). A stream that follows the
                # rotation sends the two as one line; so does this.
                self._join = carry
            elif carry is not None:
                fresh.append(carry)
            return
        if carry is not None:
            fresh.append(carry)
        after = self._start_last.decode()
        if first_stamp is None:
            what = f"log lines written after {after} are missing"
        else:
            verb = "are" if short else "may be"
            what = (
                f"log lines written after {after} and before {first_stamp.decode()} {verb} missing"
            )
        reason = f"{what}: the node rotated the log file that held them before they were read"
        log.warning("%s/%s: %s", self._pod, self._container, reason)
        self._missing.append(reason)
        fresh.append(MISSING_PREFIX + reason.encode())

    def _carry_line(self) -> bytes:
        parsed = parse_stamp(self._carry)
        return self._carry if parsed is None else parsed[1]


def _key(raw: bytes) -> bytes | None:
    """How a delivered line is remembered: its fixed-width stamp and (the start of) its
    text, exactly as sent."""
    if fixed_stamp(raw):
        return raw[:_KEY_BYTES]
    parsed = parse_stamp(raw)
    return None if parsed is None else (parsed[0] + b" " + parsed[1])[:_KEY_BYTES]
