"""The reaper: deletes the Leases of dead workers, so that Kubernetes' garbage collector
deletes their build pods (and the pods' Secrets).

A Lease is dead once it has gone unrenewed for longer than its own
``leaseDurationSeconds`` plus the reaper's ``reap_grace``. How long it has gone
unrenewed is judged as client-go's leader election judges it, on this process's
monotonic clock: the reaper remembers each Lease's resourceVersion and when it first saw
that version, and every renewal changes the version. No other machine's clock is
trusted, with one exception: a Lease seen for the first time (at start, or the first
reap of ``buildruntime gc``) is taken to have been unchanged since its ``renewTime``, so
that a runtime started long after a worker died reaps it at once. That one judgement
trusts the holder's clock, and ``reap_grace`` (30 s by default) is its margin for skew.

Two rules keep a live worker safe from a reaper:

- the delete carries the resourceVersion the reaper judged (a precondition): a Lease
  renewed since, even at the last moment, is not deleted (the API server answers 409,
  which is the reaper's answer too); two reapers deleting the same Lease cannot both
  succeed either;
- a reaper counts only time during which it could see the API server. When its own
  Lease renewal or its list fails, it forgets when it saw each Lease; once it sees the
  server again every Lease gets a full ``duration + grace`` from then. After an outage
  of the API server itself, every worker thus has a whole Lease period to renew before
  anyone judges it, however long the outage lasted. A worker cut off alone (its
  network) renews within ``lease_renew_interval`` + the outage + one retry
  (:data:`~buildruntime.worker_lease.RETRY_INTERVAL`) of its last renewal, and the
  defaults make that (10 + 30 + 1 s for a 30 s outage) shorter than ``duration +
  grace`` (30 + 30 s).

Only Leases with the runtime's managed-by label are listed, and never the reaper's own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
from anyio.abc import TaskStatus

from buildruntime.cluster.port import (
    JSON,
    ApiError,
    Cluster,
    ConflictError,
    NotFoundError,
    UnavailableError,
)
from buildruntime.labels import WORKER, managed_selector
from buildruntime.workers import declared_duration, last_renewed

log = logging.getLogger("buildruntime")


@dataclass(frozen=True)
class ReapedLease:
    """A Lease the reaper deleted: its name, its holder and how long it had gone
    unrenewed when it was judged (seconds)."""

    name: str
    worker_id: str
    unrenewed_for: float


@dataclass
class _Sighting:
    uid: str
    resource_version: str
    since: float
    """``time.monotonic()`` from which the Lease is known to have stayed at this version."""


class Reaper:
    """Finds and deletes dead workers' Leases in one namespace. ``own_lease``: the
    name of the Lease never to judge (this worker's)."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        *,
        grace: float,
        own_lease: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.grace = grace
        self.own_lease = own_lease
        self._seen: dict[str, _Sighting] = {}
        self._blind = False
        """The reaper lost sight of the API server since it last listed."""

    def lost_sight(self) -> None:
        """The API server could not be reached (by this worker's own renewal, say): time
        from now until the next successful list does not count against any Lease."""
        self._blind = True

    async def reap_once(self) -> list[ReapedLease]:
        """List the Leases, delete the dead ones; returns what was deleted. Raises
        :class:`UnavailableError` or :class:`ApiError` when the list fails."""
        try:
            listed = await self.cluster.list_leases(
                self.namespace, label_selector=managed_selector()
            )
        except (UnavailableError, ApiError):
            self._blind = True
            raise
        now, wall = time.monotonic(), datetime.now(UTC)
        regained = self._blind
        self._blind = False
        present: set[str] = set()
        dead: list[tuple[JSON, float]] = []
        for lease in listed.get("items") or []:
            meta = lease.get("metadata") or {}
            name = str(meta.get("name", ""))
            if not name or name == self.own_lease:
                continue
            present.add(name)
            sighting = self._sight(lease, now, wall, regained)
            unrenewed = now - sighting.since
            if unrenewed > declared_duration(lease) + self.grace:
                dead.append((lease, unrenewed))
        for gone in set(self._seen) - present:
            del self._seen[gone]
        reaped = []
        for lease, unrenewed in dead:
            done = await self._delete(lease, unrenewed)
            if done is not None:
                reaped.append(done)
        return reaped

    def _sight(self, lease: JSON, now: float, wall: datetime, regained: bool) -> _Sighting:
        meta = lease["metadata"]
        name, uid, version = (
            str(meta["name"]),
            str(meta.get("uid", "")),
            str(meta.get("resourceVersion", "")),
        )
        seen = self._seen.get(name)
        if seen is None or seen.uid != uid:
            renewed = last_renewed(lease)
            age = 0.0 if renewed is None else max(0.0, (wall - renewed).total_seconds())
            seen = self._seen[name] = _Sighting(uid, version, now - age)
        elif seen.resource_version != version:
            seen.resource_version, seen.since = version, now
        if regained:
            # Time the reaper could not see is nobody's fault.
            seen.since = max(seen.since, now)
        return seen

    async def _delete(self, lease: JSON, unrenewed: float) -> ReapedLease | None:
        meta = lease["metadata"]
        name, version = str(meta["name"]), str(meta["resourceVersion"])
        labels = meta.get("labels") or {}
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or labels.get(WORKER) or "")
        try:
            await self.cluster.delete_lease(self.namespace, name, resource_version=version)
        except ConflictError:
            # Renewed at the last moment (the next list shows its new version and its
            # clock starts again), or deleted and made anew: not this reaper's to delete.
            return None
        except NotFoundError:
            self._seen.pop(name, None)  # another reaper was first
            return None
        self._seen.pop(name, None)
        log.warning(
            "reaped the Lease %s of worker %s, unrenewed for %.1f s: the garbage collector "
            "deletes its builds",
            name,
            holder,
            unrenewed,
        )
        return ReapedLease(name, holder, unrenewed)

    async def run(
        self,
        interval: float | None,
        healthy: Callable[[], bool],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Reap once now and then every ``interval`` seconds (only once when None), for
        as long as ``healthy()`` (this worker's own Lease renewal) holds; while it does
        not, the reaper is blind (see :meth:`lost_sight`)."""
        task_status.started()
        while True:
            if healthy():
                try:
                    await self.reap_once()
                except (UnavailableError, ApiError) as error:
                    log.warning("cannot list the workers' Leases to reap dead ones: %s", error)
            else:
                self.lost_sight()
            if interval is None:
                return
            await anyio.sleep(interval)
