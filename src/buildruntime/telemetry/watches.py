"""What the reflectors report: relists and re-watches, counted by resource and cause.

Every build's telemetry is one (see :class:`~buildruntime.telemetry.build.BuildTelemetry`);
the runtime's shared events watch has its own, as it belongs to no build.
"""

from __future__ import annotations

from buildruntime.cluster.port import Resource
from buildruntime.telemetry import names
from buildruntime.telemetry.instruments import Instruments


class WatchTelemetry:
    """A :class:`~buildruntime.informer.reflector.WatchObserver` recording into the
    runtime's instruments; never called per watch event."""

    def __init__(self, instruments: Instruments) -> None:
        self._instruments = instruments

    def relisted(self, resource: Resource, cause: str) -> None:
        self._instruments.watch_relists.add(1, {names.WATCH_RESOURCE: resource, names.CAUSE: cause})

    def rewatched(self, resource: Resource, cause: str) -> None:
        self._instruments.watch_restarts.add(
            1, {names.WATCH_RESOURCE: resource, names.CAUSE: cause}
        )
