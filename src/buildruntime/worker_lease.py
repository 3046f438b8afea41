"""The worker's Lease, held while the runtime runs: created on entry, renewed in the
background, deleted on a clean exit (after the builds were removed).

Renewal is one merge patch of ``renewTime`` every ``lease_renew_interval``. After a
failed renewal it retries every :data:`RETRY_INTERVAL` (not at the next interval), so
that a worker cut off from the API server renews as soon as the server is back: the
reaper's grace period is sized for that (see :mod:`buildruntime.reaper`). A Lease found
gone (reaped while this worker was cut off for longer than the grace) is created again,
with a new uid, so that builds assembled from then on are owned by a Lease that exists;
the pods of the old one are the garbage collector's.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus

from buildruntime import api_calls
from buildruntime.cluster.port import (
    JSON,
    ApiError,
    Cluster,
    ConflictError,
    NotFoundError,
    UnavailableError,
)
from buildruntime.errors import LeaseError
from buildruntime.settings import RuntimeSettings
from buildruntime.workers import lease_name, owner_reference, render_lease, renewal

log = logging.getLogger("buildruntime")

RETRY_INTERVAL = 1.0
"""Seconds between renewal attempts while they fail (capped by the renew interval)."""


class WorkerLease:
    """This worker's Lease in the runtime's namespace."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        settings: RuntimeSettings,
        *,
        on_lapse: Callable[[], None] | None = None,
    ) -> None:
        self.on_lapse = on_lapse
        """Called whenever a renewal fails (the reaper stops counting time)."""
        self.cluster = cluster
        self.namespace = namespace
        self.settings = settings
        self.worker_id = settings.worker_id
        self.name = lease_name(settings.worker_id)
        self.lease: JSON | None = None
        """The Lease as last written by this worker."""
        self.renewed_at: float | None = None
        """``time.monotonic()`` of the last successful write (creation or renewal)."""
        self.healthy = False
        """The last renewal attempt succeeded: the worker sees the API server."""

    @property
    def uid(self) -> str:
        assert self.lease is not None, "the Lease is not held"
        return str(self.lease["metadata"]["uid"])

    def owner_reference(self) -> JSON:
        """What each build pod's ``ownerReferences`` holds."""
        assert self.lease is not None, "the Lease is not held"
        return owner_reference(self.lease)

    async def acquire(self) -> None:
        """Create the Lease, or take over the one a previous process of the same worker
        id left (its pods stay owned by it: this worker's clean exit removes them).
        Retries while the API server is unreachable (``api_timeout``)."""

        async def create_or_take_over() -> JSON:
            manifest = render_lease(self.worker_id, self.namespace, self.settings.lease_duration)
            try:
                return await self.cluster.create_lease(self.namespace, manifest)
            except ConflictError:
                log.warning(
                    "worker %s: taking over the Lease %s a previous process left",
                    self.worker_id,
                    self.name,
                )
                return await self._patch()
            except ApiError as error:
                raise LeaseError(
                    f"the API server refused the worker's Lease {self.name}",
                    reason=error.reason,
                    message=error.message,
                ) from error

        self._written(
            await api_calls.send(
                create_or_take_over,
                api_timeout=self.settings.api_timeout,
                build_id=None,
                step=None,
                what=f"create the worker's Lease {self.name}",
            )
        )

    async def keep(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Renew the Lease until cancelled."""
        task_status.started()
        interval = self.settings.lease_renew_interval
        retry = min(RETRY_INTERVAL, interval)
        while True:
            await anyio.sleep(interval if self.healthy else retry)
            await self.renew()

    async def renew(self) -> bool:
        """One renewal attempt, bounded by the renew interval (a connection that hangs
        must not hold up the next attempt); True when it succeeded."""
        failure: BaseException | None = None
        with anyio.move_on_after(max(self.settings.lease_renew_interval, RETRY_INTERVAL)):
            try:
                self._written(await self._patch())
                return True
            except NotFoundError:
                return await self._recreate()
            except (UnavailableError, ApiError) as error:
                failure = error
        self._failed(failure or TimeoutError("no answer from the API server"))
        return False

    async def release(self, within: float) -> None:
        """Delete the Lease (a clean exit): whatever pods it still owns go with it.
        Bounded by ``within`` seconds; a Lease already gone counts as done, one left
        behind is reaped once it is stale (nothing is lost either way)."""
        if self.lease is None:
            return

        async def delete() -> None:
            with contextlib.suppress(NotFoundError):
                await self.cluster.delete_lease(self.namespace, self.name)

        problem: object = "no answer from the API server in time"
        with anyio.move_on_after(max(within, 0.0)):
            try:
                await api_calls.send(
                    delete,
                    api_timeout=max(within, 0.001),
                    build_id=None,
                    step=None,
                    what=f"delete the worker's Lease {self.name}",
                )
                problem = None
            except Exception as error:
                problem = error
        if problem is not None:
            log.warning(
                "worker %s: its Lease %s is left to be reaped: %s",
                self.worker_id,
                self.name,
                problem,
            )
        self.lease = None
        self.healthy = False

    async def _patch(self) -> JSON:
        return await self.cluster.patch_lease(
            self.namespace, self.name, renewal(self.worker_id, self.settings.lease_duration)
        )

    async def _recreate(self) -> bool:
        log.error(
            "worker %s: its Lease %s was deleted (reaped while this worker could not renew "
            "it?): the pods it owned are being garbage-collected; creating it again",
            self.worker_id,
            self.name,
        )
        manifest = render_lease(self.worker_id, self.namespace, self.settings.lease_duration)
        try:
            self._written(await self.cluster.create_lease(self.namespace, manifest))
        except (UnavailableError, ApiError) as error:
            self._failed(error)
            return False
        return True

    def _written(self, lease: Any) -> None:
        if not self.healthy and self.renewed_at is not None:
            log.info("worker %s: its Lease %s is renewed again", self.worker_id, self.name)
        self.lease = lease
        self.renewed_at = time.monotonic()
        self.healthy = True

    def _failed(self, error: BaseException) -> None:
        if self.on_lapse is not None:
            self.on_lapse()
        if self.healthy:
            log.warning(
                "worker %s: cannot renew its Lease %s (retrying every %g s): %s",
                self.worker_id,
                self.name,
                min(RETRY_INTERVAL, self.settings.lease_renew_interval),
                error,
            )
        self.healthy = False
