"""Injected faults: what goes wrong between a client and a real API server.

``drop_watches``, ``expire`` and ``cut_logs`` act once, at once; ``outage`` lasts its
seconds; ``latency``, ``deny_create``, ``unschedulable`` and ``slow_logs`` hold until
:meth:`clear`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from buildruntime.cluster.port import UnavailableError

CONNECTION_RESET = "connection reset by peer"
CONNECTION_REFUSED = "connection refused"


class Faults:
    """The fault switches of one :class:`~buildruntime.testing.FakeCluster`."""

    def __init__(
        self,
        *,
        cut_watches: Callable[[Exception | None], None],
        cut_logs: Callable[[Exception], None],
        compact: Callable[[], None],
        changed: Callable[[], None],
    ) -> None:
        self._cut_watches = cut_watches
        self._cut_logs = cut_logs
        self._compact = compact
        self._changed = changed
        self.latency_seconds = 0.0
        self.create_denial: str | None = None
        self.unschedulable_message: str | None = None
        self.log_bytes_per_second: float | None = None
        self._outage_until = 0.0

    # ------------------------------------------------------------ one-shot
    def drop_watches(self) -> None:
        """Every open watch breaks at once with ``UnavailableError`` (connection reset);
        changes not yet delivered are not sent."""
        self._cut_watches(UnavailableError(CONNECTION_RESET))

    def expire(self) -> None:
        """Compaction: every resourceVersion seen so far becomes too old. Open watches end
        normally; resuming one from its last version gets 410 Gone
        (``ExpiredError``); a fresh list returns a version that can be watched from."""
        self._compact()
        self._cut_watches(None)

    def cut_logs(self) -> None:
        """Every open log stream breaks at once with ``UnavailableError``, after half of a
        pending line when one is waiting to be sent (a cut in the middle of a line)."""
        self._cut_logs(UnavailableError(CONNECTION_RESET))

    # ------------------------------------------------------------- lasting
    def outage(self, seconds: float) -> None:
        """For ``seconds``, every request fails as a refused connection; open watches and
        log streams break at once. The node keeps running its containers meanwhile."""
        self._outage_until = time.monotonic() + seconds
        error = UnavailableError(CONNECTION_REFUSED)
        self._cut_watches(error)
        self._cut_logs(error)

    def latency(self, seconds: float) -> None:
        """Delay every request by ``seconds`` until :meth:`clear`."""
        self.latency_seconds = seconds

    def deny_create(self, message: str) -> None:
        """An admission webhook denies every pod creation until :meth:`clear`."""
        self.create_denial = message

    def unschedulable(self, message: str) -> None:
        """The scheduler cannot place new pods until :meth:`clear` (condition
        PodScheduled=False/Unschedulable and repeated FailedScheduling events)."""
        self.unschedulable_message = message
        self._changed()

    def slow_logs(self, bytes_per_second: float) -> None:
        """Log streams send at most ``bytes_per_second`` (nothing at all for 0) until
        :meth:`clear`, as a kubelet that serves a burst slower than the step writes it;
        nothing is lost, they go on from where they were."""
        self.log_bytes_per_second = bytes_per_second

    def clear(self) -> None:
        """Lift every lasting fault (an outage in progress included)."""
        self.latency_seconds = 0.0
        self.create_denial = None
        self.unschedulable_message = None
        self.log_bytes_per_second = None
        self._outage_until = 0.0
        self._changed()

    # ------------------------------------------------------------ queries
    @property
    def in_outage(self) -> bool:
        return time.monotonic() < self._outage_until

    def check_available(self) -> None:
        """Raise the refused connection of an outage in progress."""
        if self.in_outage:
            raise UnavailableError(CONNECTION_REFUSED)
