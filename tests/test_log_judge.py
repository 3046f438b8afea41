"""The resume judge on its own: each row a sequence of kubelet log reads, as the capture
would hand them over (whole lines, then how the stream stopped), and what the judge
delivers. No event loop, no cluster: the reads are written byte for byte as a kubelet
sends them with ``timestamps``, including what FakeCluster never produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from buildruntime.logs.resume import (
    MISSING_PREFIX,
    RECENT_LINES,
    Delivered,
    ResumeJudge,
    Rotation,
    judge_rotation,
)
from buildruntime.logs.stamps import timestamp_second


def at(second: int, ns: int = 0) -> bytes:
    """A kubelet timestamp: 2026-11-23T20:00:SS.nnnnnnnnnZ."""
    return f"2026-11-23T20:00:{second:02d}.{ns:09d}Z".encode()


def sent(stamp: bytes, text: str) -> bytes:
    """A line as the log endpoint sends it (without its newline)."""
    return stamp + b" " + text.encode()


def notice(after: bytes, before: bytes | None, verb: str = "are") -> bytes:
    span = f"after {after.decode()}" + ("" if before is None else f" and before {before.decode()}")
    return (
        MISSING_PREFIX
        + f"log lines written {span} {verb} missing: the node rotated the log "
        "file that held them before they were read".encode()
    )


@dataclass(frozen=True)
class Read:
    """One log request as the capture sees it."""

    lines: list[bytes]
    """The whole lines it returned."""
    stop: Literal["end", "cut", "idle cut"] = "end"
    """How its stream stopped: the server ended it (or it waited at its file's end), it
    was cut while bytes were flowing, or cut after a silence (at its file's end)."""
    partial: bytes = b""
    """What followed its last newline (dropped by a cut: the resume sends it again)."""
    last: bool = False
    """The container ended: this read closes the log."""


@dataclass(frozen=True)
class Row:
    id: str
    reads: list[Read]
    delivered: list[bytes]
    """Every line the judge delivers, in order, notices included."""
    since: list[bytes | None]
    """For each read: a stamp in the second it resumes from (None: from the first line)."""
    repeated: int = 0
    unstamped: int = 0
    lost: list[bytes] = field(default_factory=list)
    """The notices whose spans make the buffer's ``lost_reason``."""
    known_gap: str | None = None
    """Why the judge does not do this yet (the row is a strict xfail until it does)."""


LONG_HEAD, LONG_REST = "x" * 16384, "y" * 3000
MANY = [sent(at(1, 1000 + i), f"n{i}") for i in range(RECENT_LINES + 10)]

ROWS = [
    Row(
        "first read",
        [Read([sent(at(1, 1), "one"), sent(at(1, 2), "two")], last=True)],
        [b"one", b"two"],
        since=[None],
    ),
    Row(
        "first read, a final line without a newline",
        [Read([sent(at(1, 1), "one")], partial=sent(at(1, 2), "last"), last=True)],
        [b"one", b"last"],
        since=[None],
    ),
    Row(
        "resume after a cut mid-line: the line comes whole, once",
        [
            Read(
                [sent(at(1, 1), "l1"), sent(at(1, 2), "l2")], stop="cut", partial=at(1, 3) + b" l"
            ),
            Read([sent(at(1, 1), "l1"), sent(at(1, 2), "l2"), sent(at(1, 3), "l3")], last=True),
        ],
        [b"l1", b"l2", b"l3"],
        since=[None, at(1)],
        repeated=2,
    ),
    Row(
        "resume from an earlier second than the cut's",
        [
            Read([sent(at(1, 5), "a")], stop="cut"),
            Read([sent(at(1, 5), "a"), sent(at(2, 5), "b")], stop="cut"),
            Read([sent(at(2, 5), "b"), sent(at(3, 5), "c")], last=True),
        ],
        [b"a", b"b", b"c"],
        since=[None, at(1), at(2)],
        repeated=2,
    ),
    Row(
        "resume whose first lines repeat the last delivered stamp several times",
        [
            Read([sent(at(1, 5), "x"), sent(at(1, 5), "y"), sent(at(1, 5), "z")], stop="cut"),
            Read(
                [
                    sent(at(1, 5), "x"),
                    sent(at(1, 5), "y"),
                    sent(at(1, 5), "z"),
                    sent(at(1, 6), "w"),
                ],
                last=True,
            ),
        ],
        [b"x", b"y", b"z", b"w"],
        since=[None, at(1)],
        repeated=3,
    ),
    Row(
        "resume: a line sharing the last stamp beyond those delivered is new (coarse clock)",
        [
            Read([sent(at(0, 9), "before"), sent(at(1, 5), "a"), sent(at(1, 5), "b")], stop="cut"),
            Read(
                [sent(at(1, 5), "a"), sent(at(1, 5), "b"), sent(at(1, 5), "c"), sent(at(2), "d")],
                last=True,
            ),
        ],
        [b"before", b"a", b"b", b"c", b"d"],
        since=[None, at(1)],
        repeated=2,
    ),
    Row(
        "several lines sharing one stamp in one read",
        [Read([sent(at(1, 5), "a"), sent(at(1, 5), "b"), sent(at(1, 5), "c")], last=True)],
        [b"a", b"b", b"c"],
        since=[None],
    ),
    Row(
        "a live stream going back in time: the other stream's line is kept",
        # containerd stamped "err" before "out-2" and wrote it after.
        [
            Read(
                [
                    sent(at(1, 1), "out-1"),
                    sent(at(1, 3), "out-2"),
                    sent(at(1, 2), "err"),
                    sent(at(1, 4), "out-3"),
                ],
                last=True,
            )
        ],
        [b"out-1", b"out-2", b"err", b"out-3"],
        since=[None],
    ),
    Row(
        "a live stream going back in time, then a new line sharing the newest stamp",
        [
            Read(
                [
                    sent(at(1, 5), "a"),
                    sent(at(1, 5), "b"),
                    sent(at(1, 4), "err"),
                    sent(at(1, 5), "c"),
                    sent(at(2), "d"),
                ],
                last=True,
            )
        ],
        [b"a", b"b", b"err", b"c", b"d"],
        since=[None],
        known_gap="after a line of the other stream, lines stamped like the newest delivered "
        "one are taken for repeats of it, up to as many as were delivered",
    ),
    Row(
        "a live stream going back in time: a file sent again adds nothing",
        # The kubelet reopens the current file once per rotation it was told of.
        [
            Read(
                [
                    sent(at(1), "a"),
                    sent(at(2), "b"),
                    sent(at(1), "a"),
                    sent(at(2), "b"),
                    sent(at(3), "c"),
                ],
                last=True,
            )
        ],
        [b"a", b"b", b"c"],
        since=[None],
        repeated=2,
    ),
    Row(
        "resume: the other stream's line stamped before the last delivered one is kept",
        [
            Read([sent(at(1, 1000), "out-1"), sent(at(1, 3000), "out-2")], stop="cut"),
            Read(
                [
                    sent(at(1, 1000), "out-1"),
                    sent(at(1, 3000), "out-2"),
                    sent(at(1, 2000), "err"),
                    sent(at(1, 4000), "out-3"),
                ],
                last=True,
            ),
        ],
        [b"out-1", b"out-2", b"err", b"out-3"],
        since=[None, at(1)],
        repeated=2,
    ),
    Row(
        "resume: lines older than every remembered one were delivered long ago",
        [Read(MANY, stop="cut"), Read([*MANY, sent(at(2), "new")], last=True)],
        [line[len(at(1)) + 1 :] for line in MANY] + [b"new"],
        since=[None, at(1)],
        repeated=len(MANY),
    ),
    Row(
        "resume: the rest of a long line, unstamped, is skipped",
        # The kubelet stamps only a long line's first 16 KiB fragment; a read from a
        # later second leaves that fragment out and sends the rest unstamped.
        [
            Read(
                [sent(at(0, 999_999_000), LONG_HEAD + LONG_REST), sent(at(1, 10), "next")],
                stop="cut",
            ),
            Read([LONG_REST.encode(), sent(at(1, 10), "next"), sent(at(1, 20), "last")], last=True),
        ],
        [(LONG_HEAD + LONG_REST).encode(), b"next", b"last"],
        since=[None, at(1)],
        repeated=2,
    ),
    Row(
        "an unstamped line in a live stream is delivered as it came",
        [Read([sent(at(1), "a"), b"no stamp", sent(at(2), "b")], last=True)],
        [b"a", b"no stamp", b"b"],
        since=[None],
        unstamped=1,
    ),
    Row(
        "a stamp with its fraction's zeros trimmed compares as time",
        [
            Read([sent(at(1, 500_000_000), "x")], stop="cut"),
            Read(
                [b"2026-11-23T20:00:01.5Z x", b"2026-11-23T20:00:01.6Z y"],
                last=True,
            ),
        ],
        [b"x", b"y"],
        since=[None, at(1)],
        repeated=1,
    ),
    Row(
        "a rotation that cut lines: the resume's first line is new, the stream was short",
        [
            Read([sent(at(1), "a")], stop="cut"),
            Read([sent(at(1, 500_000_000), "b")], last=True),
        ],
        [b"a", notice(at(1), at(1, 500_000_000)), b"b"],
        since=[None, at(1)],
        lost=[notice(at(1), at(1, 500_000_000))],
    ),
    Row(
        "a rotation after a stream waited at its file's end, a short gap: nothing lost",
        [
            Read([sent(at(1), "a")], stop="idle cut"),
            Read([sent(at(1, 500_000_000), "b")], last=True),
        ],
        [b"a", b"b"],
        since=[None, at(1)],
    ),
    Row(
        "a rotation that may have cut lines: a gap long enough for a whole file",
        [
            Read([sent(at(1), "a")]),
            Read([sent(at(9), "b")], last=True),
        ],
        [b"a", notice(at(1), at(9), "may be"), b"b"],
        since=[None, at(1)],
        lost=[notice(at(1), at(9), "may be")],
    ),
    Row(
        "a resume that finds nothing after a short stream: the rest is missing",
        [Read([sent(at(1), "a")], stop="cut"), Read([], last=True)],
        [b"a", notice(at(1), None)],
        since=[None, at(1)],
        lost=[notice(at(1), None)],
        known_gap="a read that ends normally counts as read to its end even when it held "
        "nothing, which hides that the stream before it stopped short",
    ),
    Row(
        "a resume that finds nothing after a stream read to its end: nothing lost",
        [Read([sent(at(1), "a")]), Read([], last=True)],
        [b"a"],
        since=[None, at(1)],
    ),
    Row(
        "partial record: a line the rotation cut in two is delivered whole",
        # containerd ends the old file with a P record and starts the new one with the rest.
        [
            Read([sent(at(1), "a")], partial=sent(at(1, 999_000_000), "0123")),
            Read(
                [sent(at(1, 999_000_500), "cdef"), sent(at(2), "next")],
                last=True,
            ),
        ],
        [b"a", b"0123cdef", b"next"],
        since=[None, at(1)],
    ),
    Row(
        "partial record: the same file sends it again, it is delivered once",
        [
            Read([sent(at(1), "a")], partial=sent(at(1, 9), "no newline")),
            Read([sent(at(1), "a")], partial=sent(at(1, 9), "no newline"), last=True),
        ],
        [b"a", b"no newline"],
        since=[None, at(1)],
        repeated=1,
    ),
    Row(
        "partial record before lines a rotation may have cut: delivered before the notice",
        [
            Read([sent(at(1), "a")], partial=sent(at(1, 9), "part")),
            Read([sent(at(9), "b")], last=True),
        ],
        [b"a", b"part", notice(at(1), at(9), "may be"), b"b"],
        since=[None, at(1)],
        lost=[notice(at(1), at(9), "may be")],
    ),
    Row(
        "partial record held at the end, nothing after it: delivered",
        [Read([sent(at(1), "a")], partial=sent(at(1, 9), "part")), Read([], last=True)],
        [b"a", b"part"],
        since=[None, at(1)],
    ),
    Row(
        "partial record dropped by a cut: the resume sends it whole",
        [
            Read([sent(at(1), "a")], stop="cut", partial=sent(at(1, 9), "pa")),
            Read([sent(at(1), "a"), sent(at(1, 9), "part")], last=True),
        ],
        [b"a", b"part"],
        since=[None, at(1)],
        repeated=1,
    ),
]


@pytest.mark.parametrize(
    "row",
    [
        pytest.param(
            row,
            id=row.id,
            marks=[pytest.mark.xfail(reason=row.known_gap, strict=True)] if row.known_gap else [],
        )
        for row in ROWS
    ],
)
def test_judge(row: Row) -> None:
    judge = ResumeJudge()
    delivered: list[bytes] = []
    since: list[int | None] = []
    repeated = unstamped = 0
    for read in row.reads:
        since.append(judge.start_read())
        judgements = [judge.take(list(read.lines))]
        if read.stop == "cut":
            judge.cut(idle=False)
        elif read.stop == "idle cut":
            judge.cut(idle=True)
        else:
            judge.reached_file_end()
            if read.last:
                judgements.append(judge.finish(read.partial))
            else:
                judge.hold(read.partial)
        for judgement in judgements:
            delivered += judgement.lines
            repeated += judgement.repeated
            unstamped += judgement.unstamped
    assert delivered == row.delivered
    assert since == [None if s is None else timestamp_second(s) for s in row.since]
    assert (repeated, unstamped) == (row.repeated, row.unstamped)
    assert [rotation.notice for rotation in judge.rotations] == row.lost
    assert judge.lost_reason == (
        "; ".join(n[len(MISSING_PREFIX) :].decode() for n in row.lost) or None
    )


def test_the_delivered_position_counts_lines_at_the_newest_stamp() -> None:
    judge = ResumeJudge()
    assert judge.start_read() is None
    judge.take([sent(at(1, 5), "a"), sent(at(1, 5), "b")])
    assert judge.delivered == Delivered(at(1, 5), 2)
    judge.take([sent(at(1, 5), "c"), sent(at(1, 4), "err")])
    assert judge.delivered == Delivered(at(1, 5), 3)  # the other stream's line is behind it
    judge.take([sent(at(2), "d")])
    assert judge.delivered == Delivered(at(2), 1)


def test_only_the_first_line_of_a_resume_can_show_a_rotation() -> None:
    # After the first line the read is known to continue the delivered log: a later
    # jump in time is the step's own pause.
    judge = ResumeJudge()
    judge.start_read()
    judge.take([sent(at(1), "a")])
    judge.cut(idle=False)
    judge.start_read()
    first = judge.take([sent(at(1), "a")])
    later = judge.take([sent(at(30), "b")])
    assert (first.lines, first.rotation) == ([], None)
    assert (later.lines, later.rotation) == ([b"b"], None)


@pytest.mark.parametrize(
    ("before", "read_to_end", "expected"),
    [
        (at(1, 500_000_000), True, None),
        (at(3, 999_999_999), True, None),
        (at(4), True, Rotation(at(1), at(4), certain=False)),
        (at(1, 500_000_000), False, Rotation(at(1), at(1, 500_000_000), certain=True)),
        (at(9), False, Rotation(at(1), at(9), certain=True)),
        (None, True, None),
        (None, False, Rotation(at(1), None, certain=True)),
    ],
    ids=[
        "followed at once",
        "just under the kubelet's check interval",
        "a gap a whole file fits in",
        "the stream before stopped short",
        "short and a long gap",
        "an empty current file after a whole read",
        "an empty current file after a short read",
    ],
)
def test_judge_rotation(before: bytes | None, read_to_end: bool, expected: Rotation | None) -> None:
    assert judge_rotation(at(1), before, read_to_end=read_to_end) == expected


def test_a_rotation_says_what_is_missing() -> None:
    assert Rotation(at(1), at(9), certain=False).reason == (
        "log lines written after 2026-11-23T20:00:01.000000000Z and before "
        "2026-11-23T20:00:09.000000000Z may be missing: the node rotated the log file that "
        "held them before they were read"
    )
    assert Rotation(at(1), None, certain=True).notice == notice(at(1), None)
