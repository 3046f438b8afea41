"""The tracer and the instruments, made once per pair of providers."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from opentelemetry import metrics, trace

from buildruntime.telemetry import names


@dataclass(frozen=True)
class Instruments:
    """Everything the runtime records through."""

    tracer: trace.Tracer
    requests: metrics.Counter
    watch_restarts: metrics.Counter
    watch_relists: metrics.Counter
    log_lines: metrics.Counter
    log_bytes: metrics.Counter
    log_missing: metrics.Counter
    step_duration: metrics.Histogram
    step_overhead: metrics.Histogram
    builds_running: metrics.UpDownCounter


@functools.lru_cache(maxsize=32)
def instruments_for(
    tracer_provider: trace.TracerProvider | None, meter_provider: metrics.MeterProvider | None
) -> Instruments:
    """The instruments of these providers (None: the global ones, which follow a provider
    the application sets later). Cached: every build of a runtime shares them."""
    meter = metrics.get_meter(names.SCOPE, meter_provider=meter_provider)
    return Instruments(
        tracer=trace.get_tracer(names.SCOPE, tracer_provider=tracer_provider),
        requests=meter.create_counter(
            names.REQUESTS_METRIC,
            unit="{request}",
            description="Requests sent to the API server, by verb and resource",
        ),
        watch_restarts=meter.create_counter(
            names.WATCH_RESTARTS_METRIC,
            unit="{watch}",
            description="Watches that ended and were opened again from the last "
            "resourceVersion, by resource and cause (closed, error, stalled)",
        ),
        watch_relists=meter.create_counter(
            names.WATCH_RELISTS_METRIC,
            unit="{list}",
            description="Lists that (re)filled a build's cache, by resource and cause "
            "(initial, resync, expired)",
        ),
        log_lines=meter.create_counter(
            names.LOG_LINES_METRIC,
            unit="{line}",
            description="Log lines captured from steps",
        ),
        log_bytes=meter.create_counter(
            names.LOG_BYTES_METRIC,
            unit="By",
            description="Bytes of the log lines captured from steps (newlines not counted)",
        ),
        log_missing=meter.create_counter(
            names.LOG_MISSING_METRIC,
            unit="{notice}",
            description="Notices written into a step's log where the node rotated lines "
            "away before they were read",
        ),
        step_duration=meter.create_histogram(
            names.STEP_DURATION_METRIC,
            unit="s",
            description="From a step's image patch to its end seen in the cache",
        ),
        step_overhead=meter.create_histogram(
            names.STEP_OVERHEAD_METRIC,
            unit="s",
            description="From a step's image patch to the cache showing its container "
            "running (or already ended)",
        ),
        builds_running=meter.create_up_down_counter(
            names.BUILDS_RUNNING_METRIC,
            unit="{build}",
            description="Builds assembled or assembling and not removed yet",
        ),
    )
