"""How the log capture tells delivered lines from new ones when it reads again: against
log streams written byte for byte as a real kubelet sends them, including what FakeCluster
never produces (stdout and stderr lines written out of stamp order, a clock that stamps
several lines alike, the rest of a long line whose start was before ``sinceTime``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from buildruntime.cluster.port import UnavailableError
from buildruntime.logs import MISSING_PREFIX, LogBuffer, LogCapture

pytestmark = pytest.mark.anyio


def at(second: int, ns: int) -> bytes:
    """A kubelet timestamp: 2026-11-23T20:00:SS.nnnnnnnnnZ."""
    return f"2026-11-23T20:00:{second:02d}.{ns:09d}Z".encode()


def line(stamp: bytes, text: str) -> bytes:
    return stamp + b" " + text.encode() + b"\n"


@dataclass
class Read:
    """One log request's answer: its bytes, then a normal end or a cut."""

    data: bytes
    cut: bool = False
    ends_step: bool = False  # the container is seen terminated once this read is over


@dataclass
class ScriptedLogs:
    """A cluster whose log endpoint answers a fixed script, one :class:`Read` a request."""

    reads: list[Read]
    asked: list[tuple[bool, str | None]] = field(default_factory=list)  # (follow, since)
    ended: bool = False

    @asynccontextmanager
    async def stream_logs(
        self,
        namespace: str,
        pod: str,
        container: str,
        *,
        follow: bool = True,
        timestamps: bool = True,
        since_time: str | None = None,
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        assert timestamps
        self.asked.append((follow, since_time))
        read = self.reads.pop(0)

        async def chunks() -> AsyncIterator[bytes]:
            # Odd chunk sizes: lines arrive split anywhere.
            for start in range(0, len(read.data), 777):
                yield read.data[start : start + 777]
            self.ended = self.ended or read.ends_step
            if read.cut:
                raise UnavailableError("connection reset by peer")

        yield chunks()

    async def step_ended(self, within: float) -> bool:
        return self.ended


async def capture(cluster: ScriptedLogs) -> LogBuffer:
    buffer = LogBuffer()
    await LogCapture(
        cluster,  # type: ignore[arg-type]
        "ci",
        "pod",
        "step",
        buffer,
        step_ended=cluster.step_ended,
        pod_gone=lambda: False,
        retry_delay=0,
        end_grace=0,
    ).run()
    assert buffer.complete
    assert not cluster.reads, "the capture stopped before the script's last read"
    return buffer


async def test_a_line_of_the_other_stream_stamped_before_the_last_delivered_one_is_kept() -> None:
    # containerd stamps stdout and stderr lines in two goroutines and writes them under
    # one lock: "err" was stamped before "out-2" but written after it.
    first = line(at(1, 1000), "out-1") + line(at(1, 3000), "out-2")
    cluster = ScriptedLogs(
        [
            Read(first, cut=True),
            Read(first + line(at(1, 2000), "err") + line(at(1, 4000), "out-3"), ends_step=True),
        ]
    )
    buffer = await capture(cluster)
    assert buffer.lines(0, len(buffer)) == [b"out-1", b"out-2", b"err", b"out-3"]
    assert cluster.asked == [(True, None), (True, "2026-11-23T20:00:01Z")]


async def test_lines_that_share_a_stamp_are_counted() -> None:
    # A coarse clock stamps several lines alike: the resume skips as many as were
    # delivered with the last stamp, and delivers the others.
    same = at(1, 5000)
    delivered = line(same, "a") + line(same, "b")
    cluster = ScriptedLogs(
        [
            Read(line(at(0, 9), "before") + delivered, cut=True),
            Read(delivered + line(same, "c") + line(at(2, 0), "d"), ends_step=True),
        ]
    )
    buffer = await capture(cluster)
    assert buffer.lines(0, len(buffer)) == [b"before", b"a", b"b", b"c", b"d"]


async def test_a_resume_that_starts_inside_a_long_line_skips_its_rest() -> None:
    # The kubelet stamps only the first 16 KiB fragment of a long line (since 1.26); a
    # read from a later second leaves that fragment out and sends the rest unstamped.
    head, rest = "x" * 16384, "y" * 3000
    long = at(0, 999_999_000) + b" " + (head + rest).encode() + b"\n"
    cluster = ScriptedLogs(
        [
            Read(long + line(at(1, 10), "next"), cut=True),
            Read(
                rest.encode() + b"\n" + line(at(1, 10), "next") + line(at(1, 20), "last"),
                ends_step=True,
            ),
        ]
    )
    buffer = await capture(cluster)
    assert buffer.lines(0, len(buffer)) == [(head + rest).encode(), b"next", b"last"]


def burst(second: int, count: int, prefix: str) -> tuple[bytes, list[bytes]]:
    """``count`` 100-byte lines stamped within ``second`` (over a megabyte for 9,000)."""
    texts = [f"{prefix}{i:06d}-" + "x" * 90 for i in range(count)]
    data = b"".join(line(at(second, 1000 + i * 100), text) for i, text in enumerate(texts))
    return data, [text.encode() for text in texts]


async def test_after_the_end_the_current_file_is_read_once_more() -> None:
    # The follow stream read a file the node had rotated to its end; the rest of the
    # step's output is in the current file, which a plain read returns.
    old, old_lines = burst(1, 9_000, "a")
    new, new_lines = burst(2, 100, "b")
    cluster = ScriptedLogs([Read(old, ends_step=True), Read(new)])
    buffer = await capture(cluster)
    assert buffer.lines(0, len(buffer)) == old_lines + new_lines
    assert buffer.lost_reason is None
    assert cluster.asked == [(True, None), (False, "2026-11-23T20:00:01Z")]


async def test_after_the_end_a_read_of_the_same_file_adds_nothing() -> None:
    # No rotation: the read after the end returns the last second again, all delivered,
    # and the final line without a newline once.
    old, old_lines = burst(1, 9_000, "a")
    final = at(1, 999_000_000) + b" no newline"
    cluster = ScriptedLogs([Read(old + final, ends_step=True), Read(old + final)])
    buffer = await capture(cluster)
    assert buffer.lines(0, len(buffer)) == [*old_lines, b"no newline"]


async def test_a_small_log_gets_no_read_after_its_end() -> None:
    cluster = ScriptedLogs([Read(line(at(1, 0), "only"), ends_step=True)])
    buffer = await capture(cluster)
    assert buffer.lines(0, len(buffer)) == [b"only"]
    assert cluster.asked == [(True, None)]


async def test_a_long_gap_before_the_current_file_may_hide_a_rotated_one() -> None:
    # Between the end of the file read and the start of the current one, 9 s: long
    # enough for a whole file to have been rotated in between (or for a quiet step).
    old, old_lines = burst(1, 9_000, "a")
    new, new_lines = burst(10, 10, "b")
    cluster = ScriptedLogs([Read(old, ends_step=True), Read(new)])
    buffer = await capture(cluster)
    got = buffer.lines(0, len(buffer))
    assert got[: len(old_lines)] == old_lines
    assert got[len(old_lines) + 1 :] == new_lines
    notice = got[len(old_lines)]
    last_old = at(1, 1000 + 8_999 * 100).decode()
    assert notice == (
        MISSING_PREFIX
        + f"log lines written after {last_old} and before "
        f"{at(10, 1000).decode()} may be missing: the node rotated the log file that held "
        "them before they were read".encode()
    )
    assert buffer.lost_reason == notice[len(MISSING_PREFIX) :].decode()


async def test_a_line_cut_by_the_rotation_is_delivered_whole() -> None:
    # containerd cuts the line it is writing when the log is reopened: the old file ends
    # with its first part (a P record, sent without a newline), the new file starts with
    # the rest (as seen on the local cluster at every rotation under a burst).
    old, old_lines = burst(1, 9_000, "a")
    cluster = ScriptedLogs(
        [
            Read(old + at(1, 999_000_000) + b" 0123456789ab", ends_step=True),
            Read(line(at(1, 999_000_500), "cdef") + line(at(2, 0), "next")),
        ]
    )
    buffer = await capture(cluster)
    assert buffer.lines(0, len(buffer)) == [*old_lines, b"0123456789abcdef", b"next"]


async def test_a_live_stream_keeps_out_of_order_lines_and_drops_a_file_sent_again() -> None:
    # One follow stream, no cut: stderr lines written after stdout lines stamped later
    # are kept, many times over in one read; then the kubelet reopens the newest file
    # it already sent (two rotations it was told of), which adds nothing.
    interleaved = b"".join(
        line(at(1, 10 * i + 5), f"out-{i}") + line(at(1, 10 * i + 1), f"err-{i}")
        for i in range(1, 1500)
    )
    newest = line(at(2, 0), "new-1") + line(at(2, 5), "new-2")
    cluster = ScriptedLogs(
        [Read(interleaved + newest + newest + line(at(3, 0), "last"), ends_step=True)]
    )
    buffer = await capture(cluster)
    expected = [t for i in range(1, 1500) for t in (f"out-{i}".encode(), f"err-{i}".encode())]
    assert buffer.lines(0, len(buffer)) == [*expected, b"new-1", b"new-2", b"last"]
    assert cluster.asked == [(True, None)]
