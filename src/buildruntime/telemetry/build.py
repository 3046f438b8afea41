"""One build's spans and measurements.

A :class:`BuildTelemetry` is told what the controller does (the build starts and ends, a
step's image is patched in) and sees the build view's domain events (a step started,
completed or failed, the pod deleted) as they are derived from the cache, so a step's
overhead and duration are measured at the moment the cache showed the change. It is the
reflectors' :class:`~buildruntime.informer.reflector.WatchObserver` and the log
captures' :class:`~buildruntime.logs.capture.CaptureObserver` too; none of them calls it
per watch event or per log line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from buildruntime.cluster.port import Cluster
from buildruntime.events import BuildEvent
from buildruntime.results import Failure
from buildruntime.spec import BuildSpec, StepSpec
from buildruntime.telemetry import names
from buildruntime.telemetry.cluster import MeteredCluster
from buildruntime.telemetry.instruments import Instruments
from buildruntime.telemetry.watches import WatchTelemetry

_POD_GONE = {
    "Evicted": Failure.EVICTED,
    "NodeLost": Failure.NODE_LOST,
    "DeadlineExceeded": Failure.DEADLINE_EXCEEDED,
}
"""The failure of a step still running when its pod went, by the pod's reason."""


@dataclass
class _Step:
    span: Span
    patched_at: float
    """``time.monotonic()`` just before the image patch was sent."""
    running: bool = False


class BuildTelemetry(WatchTelemetry):
    """The build's span, its steps' spans, and what it adds to the runtime's metrics."""

    def __init__(self, instruments: Instruments, spec: BuildSpec, namespace: str) -> None:
        super().__init__(instruments)
        self._spec = spec
        self._namespace = namespace
        self._span: Span | None = None
        self._steps: dict[str, _Step] = {}

    def cluster(self, cluster: Cluster) -> Cluster:
        """``cluster`` with every request counted."""
        return MeteredCluster(cluster, self._instruments.requests)

    # -- the build --------------------------------------------------------------------

    def build_started(self) -> None:
        """The build's watches start (its pod is about to be created). The span's parent
        is the span current where the build was assembled, if any."""
        if self._span is not None:
            return
        spec = self._spec
        self._span = self._instruments.tracer.start_span(
            names.BUILD_SPAN,
            attributes={
                names.BUILD_ID: spec.build_id,
                names.NAMESPACE: self._namespace,
                names.POD: spec.pod_name,
            },
        )
        self._instruments.builds_running.add(1)

    def build_failed(self, error: BaseException) -> None:
        """The build could not be assembled, or its watches stopped on an error."""
        if self._span is not None and self._span.is_recording():
            self._span.record_exception(error)
            self._span.set_status(Status(StatusCode.ERROR, str(error) or type(error).__name__))

    def build_ended(self) -> None:
        """The build's tasks have all stopped (removed, abandoned, or the runtime closed):
        steps still open end unfinished, then the build's span."""
        if self._span is None:
            return
        for name in list(self._steps):
            self._end_step(name, error="the build ended before the step did")
        self._span.end()
        self._span = None
        self._instruments.builds_running.add(-1)

    # -- steps ------------------------------------------------------------------------

    def step_patched(self, spec: StepSpec) -> None:
        """``run_container`` is about to patch the step's image in."""
        if spec.name in self._steps:
            return
        context = trace.set_span_in_context(self._span) if self._span is not None else None
        span = self._instruments.tracer.start_span(
            names.STEP_SPAN,
            context=context,
            attributes={
                names.BUILD_ID: self._spec.build_id,
                names.STEP: spec.name,
                names.IMAGE: spec.image,
            },
        )
        self._steps[spec.name] = _Step(span, time.monotonic())

    def publish(self, event: BuildEvent) -> None:
        """A domain event of the build, as the view derived it from the cache."""
        if event.step is None:
            if event.kind == "deleted":
                failure = _POD_GONE.get(event.reason or "", Failure.POD_DELETED)
                for name in list(self._steps):
                    self._end_step(name, failure=failure, error=f"the pod went ({event.reason})")
            return
        step = self._steps.get(event.step)
        if step is None:
            return
        if event.kind == "started" and not step.running:
            step.running = True
            overhead = time.monotonic() - step.patched_at
            self._instruments.step_overhead.record(overhead)
            step.span.add_event("running", {"overhead_seconds": overhead})
        elif event.kind in ("completed", "failed"):
            self._end_step(event.step, exit_code=event.exit_code, failure=event.failure)

    def _end_step(
        self,
        name: str,
        *,
        exit_code: int | None = None,
        failure: Failure | None = None,
        error: str | None = None,
    ) -> None:
        step = self._steps.pop(name, None)
        if step is None:
            return
        span = step.span
        if exit_code is not None:
            span.set_attribute(names.EXIT_CODE, exit_code)
        if failure is not None:
            span.set_attribute(names.FAILURE, failure.value)
        if failure is not None or error is not None:
            span.set_status(Status(StatusCode.ERROR, error or failure or ""))
        self._instruments.step_duration.record(
            time.monotonic() - step.patched_at,
            {names.FAILURE: failure.value} if failure is not None else None,
        )
        span.end()

    # -- the log captures (the reflectors: see WatchTelemetry) ---------------------------

    def captured(self, lines: int, size: int) -> None:
        self._instruments.log_lines.add(lines)
        self._instruments.log_bytes.add(size)

    def missing(self, *, certain: bool) -> None:
        self._instruments.log_missing.add(1, {names.CERTAIN: certain})
