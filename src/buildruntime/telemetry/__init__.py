"""OpenTelemetry traces and metrics of the runtime, through ``opentelemetry-api`` only.

Nothing is recorded unless the application configures an SDK: either globally
(``opentelemetry.trace.set_tracer_provider`` / ``opentelemetry.metrics.set_meter_provider``)
or for one runtime (``RuntimeSettings(tracer_provider=..., meter_provider=...)``, which
win over the global ones). Without an SDK the API's no-op implementations cost next to
nothing, and nothing is called per watch event.

Spans (:data:`BUILD_SPAN`, :data:`STEP_SPAN`) and instruments (the ``*_METRIC`` names)
are listed in :mod:`buildruntime.telemetry.names`; the README shows them with their
attributes.
"""

from buildruntime.telemetry.build import BuildTelemetry
from buildruntime.telemetry.cluster import MeteredCluster
from buildruntime.telemetry.instruments import Instruments, instruments_for
from buildruntime.telemetry.names import (
    BUILD_SPAN,
    BUILDS_RUNNING_METRIC,
    LOG_BYTES_METRIC,
    LOG_LINES_METRIC,
    LOG_MISSING_METRIC,
    REQUESTS_METRIC,
    STEP_DURATION_METRIC,
    STEP_OVERHEAD_METRIC,
    STEP_SPAN,
    WATCH_RELISTS_METRIC,
    WATCH_RESTARTS_METRIC,
)
from buildruntime.telemetry.watches import WatchTelemetry

__all__ = [
    "BUILDS_RUNNING_METRIC",
    "BUILD_SPAN",
    "LOG_BYTES_METRIC",
    "LOG_LINES_METRIC",
    "LOG_MISSING_METRIC",
    "REQUESTS_METRIC",
    "STEP_DURATION_METRIC",
    "STEP_OVERHEAD_METRIC",
    "STEP_SPAN",
    "WATCH_RELISTS_METRIC",
    "WATCH_RESTARTS_METRIC",
    "BuildTelemetry",
    "Instruments",
    "MeteredCluster",
    "WatchTelemetry",
    "instruments_for",
]
