"""Judging the lines of a kubelet log read against what was delivered: which are new,
which a resumed read repeats, and which a log rotation took away.

Pure: no I/O, no event loop, no clock. :class:`~buildruntime.logs.capture.LogCapture`
reads the streams and asks a :class:`ResumeJudge` about every line of every read.

**What a read returns.** The capture asks for the log with ``timestamps``; a resume adds
``sinceTime``, which has whole seconds only. The kubelet then sends the lines of the
node's *current* log file stamped in or after that second, in file order (it filters
line by line). That file may be the one read before, or a newer one after a rotation,
which does not hold every line of the resumed second; so the lines already delivered
are recognised by their full nanosecond stamps, not by their position in the second.
The runtime (containerd) stamps each line when it reads it and writes it under a lock
shared by stdout and stderr, so within one stream stamps follow file order, while a
stdout and a stderr line can be written in the opposite order to their stamps (by the
microseconds between stamping and writing). Hence, for the first lines of a resumed
read (its *overlap*):

- the first line stamped after everything delivered ends the overlap: it has not been
  delivered, and nothing after it in the file has been either;
- a line stamped exactly like the newest delivered line is skipped as many times as
  lines with that stamp were delivered (stamps repeat on a coarse clock);
- a line stamped earlier is skipped when it is one of the last :data:`RECENT_LINES`
  delivered (matched by stamp and text) or, once more lines than that were delivered,
  older than all of them; otherwise it is a line of the other stream written after the
  last delivered one, and is delivered.

A live stream that goes back in time is judged the same way, from that line on: a line
of the other stream written out of order is kept, and a file the kubelet sends again
(it reopens the current file once per rotation it was told of) adds nothing.

**Rotation.** The kubelet rotates a running container's log once it passes
``containerLogMaxSize`` and serves only the current file. If the first stamped line of
a resumed read is new (or the read holds nothing), the current file no longer holds the
last delivered line: it was rotated since. The lines between the two files are lost if
the stream before stopped short of the end of its file (it was cut while bytes were
flowing), and may be lost if the gap is long enough for a whole rotated file
(:data:`ROTATION_GAP_NS`): either way one line starting with :data:`MISSING_PREFIX` says
which span. Otherwise a line the rotation cut in two (containerd ends the old file with
a partial record and starts the new one with the rest) is delivered whole.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from buildruntime.logs.stamps import (
    STAMP_WIDTH,
    fixed_stamp,
    parse_stamp,
    stamp_ns,
    timestamp_second,
)

RECENT_LINES = 256
"""Delivered lines remembered for a resume: enough to cover stdout and stderr lines
written out of stamp order (microseconds apart at most), bounded in memory."""
_KEY_BYTES = 1024  # a line is remembered by its stamp and up to this much of its text

ROTATION_GAP_NS = 3 * 1_000_000_000
"""The kubelet looks at a container's log size once per ``containerLogMonitorInterval``
(3 s at the least, 10 s by default), so a current file that starts less than this
after the last line read from the file before it has (barring a delayed check) no
whole rotated file between them."""

MISSING_PREFIX = b"[buildruntime] "
"""Start of the one line added to a step's log where the node had rotated lines away
before they could be read: the lines it prints are all a user sees, and a log with a
silent hole would look complete."""


@dataclass(frozen=True, slots=True)
class Delivered:
    """How far the log was delivered, in the terms a resumed read can be checked in."""

    stamp: bytes = b""
    """The newest stamp delivered (fixed width, so byte order is time order); empty
    before the first line."""
    count: int = 0
    """Lines delivered stamped exactly :attr:`stamp`: a coarse clock stamps several
    lines alike, and a resume skips that many of them."""


@dataclass(frozen=True, slots=True)
class Rotation:
    """Lines the node rotated away between the file a stream read and the current one."""

    after: bytes
    """The stamp of the last line delivered from the older file."""
    before: bytes | None
    """The stamp of the first line of the current file; None when it holds no line of
    the resumed second or after."""
    certain: bool
    """The stream before stopped short of its file's end, so lines *are* missing; if
    not, only the gap between the files (long enough for a whole rotated file) says
    they *may be*."""

    @property
    def reason(self) -> str:
        """What is missing, as the log's notice and the buffer's ``lost_reason`` say."""
        after = self.after.decode()
        if self.before is None:
            what = f"log lines written after {after} are missing"
        else:
            verb = "are" if self.certain else "may be"
            before = self.before.decode()
            what = f"log lines written after {after} and before {before} {verb} missing"
        return f"{what}: the node rotated the log file that held them before they were read"

    @property
    def notice(self) -> bytes:
        """The line that takes the missing lines' place in the log."""
        return MISSING_PREFIX + self.reason.encode()


def judge_rotation(after: bytes, before: bytes | None, *, read_to_end: bool) -> Rotation | None:
    """Whether a rotation between a delivered line stamped ``after`` and a current file
    starting at ``before`` (None: holding nothing from then on) can have cost lines.

    The stream before had read its file to the end (``read_to_end``) and the gap is
    shorter than one log-size check of the kubelet: the current file follows the old
    one directly, nothing is missing."""
    gap = before is not None and stamp_ns(before) - stamp_ns(after) >= ROTATION_GAP_NS
    if read_to_end and not gap:
        return None
    return Rotation(after, before, certain=not read_to_end)


@dataclass(slots=True)
class Judgement:
    """What one batch of a read's lines comes to."""

    lines: list[bytes]
    """To deliver, in order: the texts (without stamps) of the new lines, and a
    rotation's notice where lines are missing."""
    repeated: int = 0
    """Lines that had been delivered before (a resume's overlap, a file sent again)."""
    unstamped: int = 0
    """Lines without a timestamp, delivered as they came (no kubelet sends them)."""
    rotation: Rotation | None = None
    """Lines the node rotated away before this read, said by a notice in :attr:`lines`
    (only the first stamped line of a resumed read, or its end, can show one)."""


@dataclass(slots=True)
class _Overlap:
    """The lines of a read that may have been delivered before, being skipped."""

    since: Delivered
    """Where delivery stood when the overlap began: nothing newer can be a repeat."""
    seen_at_since: int = 0
    """Lines stamped exactly ``since.stamp`` skipped so far (up to ``since.count``)."""
    unmatched: Counter[bytes] | None = None
    """The remembered lines not met again yet; made at the first line stamped before
    ``since.stamp`` (most resumes never need it)."""
    oldest: bytes = b""
    """The oldest stamp remembered, made with :attr:`unmatched`."""


@dataclass(slots=True)
class _Read:
    """The read in progress."""

    overlap: _Overlap | None
    """Set while the read's lines may repeat delivered ones: from a resume's first line,
    and again from a line that goes back in time."""
    judged: bool = False
    """A stamped line of this read was judged against the delivered ones: only the first
    one can show a rotation."""
    delivered_any: bool = False
    """This read delivered a line, so where its stream stopped matters to the next."""
    join: bytes = b""
    """The part of a line the rotation cut, which the next delivered line completes."""


class ResumeJudge:
    """Decides, read after read, which lines of a step's log to deliver.

    Each read starts with :meth:`start_read` and gives its whole lines to :meth:`take`;
    how its stream stopped is told by :meth:`reached_file_end`, :meth:`cut` and
    :meth:`hold`; the read that reaches the end of the log after the container ended
    closes with :meth:`finish`.
    """

    __slots__ = ("_read", "delivered", "partial", "read_to_end", "recent", "rotations")

    def __init__(self) -> None:
        self.delivered = Delivered()
        self.recent: deque[bytes] = deque(maxlen=RECENT_LINES)
        """Keys (:func:`_key`) of the latest lines delivered, oldest first."""
        self.read_to_end = True
        """The last delivered line was the last of its file when its stream stopped; if
        not, a rotation before the next read took the rest of that file."""
        self.partial = b""
        """The final partial line (as sent, stamped) of a stream that stopped, not yet
        delivered: a resume that meets the same file again sends it again (whole, if
        it was completed since), a newer file starts with its rest."""
        self.rotations: list[Rotation] = []
        """Every span said to be missing, in order."""
        self._read = _Read(overlap=None)

    def start_read(self) -> int | None:
        """A new read: the whole second to ask for with ``sinceTime``, or None for a
        read from the first line (nothing was delivered)."""
        if not self.delivered.stamp:
            self._read = _Read(overlap=None)
            self.partial = b""  # the read sends the whole log again, this line too
            return None
        self._read = _Read(overlap=_Overlap(self.delivered))
        return timestamp_second(self.delivered.stamp)

    def reached_file_end(self) -> None:
        """The read's stream stopped at the end of the node's file (it ended, or waited
        there): nothing of that file is left unread."""
        self.read_to_end = True

    def cut(self, *, idle: bool) -> None:
        """The read's stream was cut; ``idle``: after a silence long enough to say it
        was waiting at the end of its file. (A read that delivered nothing leaves the
        answer of the one that delivered the last line.)"""
        if self._read.delivered_any:
            self.read_to_end = idle

    def hold(self, partial: bytes) -> None:
        """Keep the partial last line of a stream that stopped while the container may
        still write: the next read decides whether it is sent again or was cut."""
        if partial:
            self.partial = partial

    @property
    def lost_reason(self) -> str | None:
        """What the rotations took, for the buffer; None when nothing is missing."""
        return "; ".join(rotation.reason for rotation in self.rotations) or None

    def take(self, raw_lines: list[bytes]) -> Judgement:
        """Judge the next whole lines of the read (as sent: stamp, space, text)."""
        out = Judgement([])
        while raw_lines:
            raw_lines = self._take_run(raw_lines, out)
        return out

    def finish(self, partial: bytes) -> Judgement:
        """The container ended and this read went to the end of its log: deliver its
        final line without a newline (``partial``), say what a rotation took if the
        read held nothing of a resume, and whatever partial line is still held."""
        out = self.take([partial]) if partial else Judgement([])
        read = self._read
        if read.overlap is not None and not read.judged:
            # A resume that read the node's file to its end found nothing at all: that
            # file is newer than the last delivered line's, which it would have held.
            self._rotated_away(read.overlap.since.stamp, None, out)
        read.overlap = None
        leftover = read.join or (self._partial_text() if self.partial else b"")
        if leftover:
            out.lines.append(leftover)
        self.partial = read.join = b""
        return out

    def _take_run(self, raw_lines: list[bytes], out: Judgement) -> list[bytes]:
        """Deliver lines up to the first that goes back in time; returns the lines from
        there on, to be judged as an overlap (empty when all were taken)."""
        read = self._read
        fresh = out.lines
        start = self._judge_overlap(raw_lines, out) if read.overlap is not None else 0
        if start == len(raw_lines):
            return []
        read.delivered_any = True
        join_at = len(fresh) if read.join else -1
        last, at_last = self.delivered.stamp, self.delivered.count
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
                    out.unstamped += 1
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
        self.delivered = Delivered(last, at_last)
        if join_at >= 0:
            fresh[join_at] = read.join + fresh[join_at]
            read.join = b""
        end = back_at if back_at >= 0 else len(raw_lines)
        tail = raw_lines[max(start, end - RECENT_LINES) : end]
        if irregular:
            self.recent.extend(key for key in map(_key, tail) if key is not None)
        else:
            self.recent.extend([raw[:_KEY_BYTES] for raw in tail])
        if back_at < 0:
            return []
        read.overlap = _Overlap(self.delivered)
        read.judged = True
        return raw_lines[back_at:]

    def _judge_overlap(self, raw_lines: list[bytes], out: Judgement) -> int:
        """Skip the lines of an overlap that were delivered before (see the module's
        docstring); returns the index of the first line after the overlap."""
        read = self._read
        overlap = read.overlap
        assert overlap is not None
        since = overlap.since
        for index, raw in enumerate(raw_lines):
            parsed = parse_stamp(raw)
            if parsed is None:
                if not read.judged:
                    # The rest of a long line whose first 16 KiB fragment was stamped
                    # before sinceTime: the kubelet skips that fragment and sends the
                    # rest unstamped. The line was delivered whole before.
                    out.repeated += 1
                    continue
                out.unstamped += 1
                out.lines.append(raw)
                continue
            stamp, content = parsed
            first = not read.judged
            read.judged = True
            if stamp > since.stamp:
                read.overlap = None
                if first:
                    self._rotated_away(since.stamp, stamp, out)
                else:
                    self.partial = b""  # the file still held the delivered lines
                return index
            if stamp == since.stamp and overlap.seen_at_since < since.count:
                overlap.seen_at_since += 1
                out.repeated += 1
                self.partial = b""
                continue
            if overlap.unmatched is None:
                overlap.unmatched = Counter(self.recent)
                overlap.oldest = min((key[:STAMP_WIDTH] for key in self.recent), default=stamp)
            key = _key(raw)
            if key is not None and overlap.unmatched[key] > 0:
                overlap.unmatched[key] -= 1
                out.repeated += 1
                self.partial = b""
                continue
            if stamp < overlap.oldest and len(self.recent) == RECENT_LINES:
                # Older than every remembered line, and lines were delivered before
                # those: delivered long ago. (While the window holds every line ever
                # delivered, membership alone decides.)
                out.repeated += 1
                self.partial = b""
                continue
            # Stamped before the newest delivered line, yet not delivered: a line of the
            # other stream (stdout or stderr) written after the last delivered one.
            if first:
                self._rotated_away(since.stamp, stamp, out)
            read.delivered_any = True
            if stamp == self.delivered.stamp:
                self.delivered = Delivered(stamp, self.delivered.count + 1)
            if key is not None:
                self.recent.append(key)
            out.lines.append(read.join + content)
            read.join = b""
        return len(raw_lines)

    def _rotated_away(self, after: bytes, before: bytes | None, out: Judgement) -> None:
        """The read's first line is newer than the last delivered one (``after``), or
        the read is empty: the node's file that held it was rotated. Say which lines,
        if any, could not be read; place the held partial line."""
        partial = self._partial_text() if self.partial else None
        self.partial = b""
        rotation = judge_rotation(after, before, read_to_end=self.read_to_end)
        if rotation is None:
            if partial is not None and before is not None:
                # The old file ended inside a line: containerd cuts the line it is writing
                # when the kubelet has it reopen the log (a P record at the end of the old
                # file, the rest first in the new one). A stream that follows the
                # rotation sends the two as one line; so does this.
                self._read.join = partial
            elif partial is not None:
                out.lines.append(partial)
            return
        if partial is not None:
            out.lines.append(partial)
        self.rotations.append(rotation)
        out.rotation = rotation
        out.lines.append(rotation.notice)

    def _partial_text(self) -> bytes:
        parsed = parse_stamp(self.partial)
        return self.partial if parsed is None else parsed[1]


def _key(raw: bytes) -> bytes | None:
    """How a delivered line is remembered: its fixed-width stamp and (the start of) its
    text, exactly as sent."""
    if fixed_stamp(raw):
        return raw[:_KEY_BYTES]
    parsed = parse_stamp(raw)
    return None if parsed is None else (parsed[0] + b" " + parsed[1])[:_KEY_BYTES]
