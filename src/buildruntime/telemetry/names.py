"""The names a user's dashboards and queries see: spans, instruments, attributes."""

from __future__ import annotations

SCOPE = "buildruntime"
"""The instrumentation scope of every tracer and meter."""

BUILD_SPAN = "buildruntime.build"
"""One per build, from ``assemble_build`` to ``remove_build``."""
STEP_SPAN = "buildruntime.step"
"""One per step, from ``run_container``'s image patch to the step's end seen in the
cache; a child of its build's span."""

REQUESTS_METRIC = "buildruntime.api.requests"
WATCH_RESTARTS_METRIC = "buildruntime.watch.restarts"
WATCH_RELISTS_METRIC = "buildruntime.watch.relists"
LOG_LINES_METRIC = "buildruntime.log.lines"
LOG_BYTES_METRIC = "buildruntime.log.bytes"
LOG_MISSING_METRIC = "buildruntime.log.missing_notices"
STEP_DURATION_METRIC = "buildruntime.step.duration"
STEP_OVERHEAD_METRIC = "buildruntime.step.overhead"
BUILDS_RUNNING_METRIC = "buildruntime.builds.running"

BUILD_ID = "buildruntime.build.id"
NAMESPACE = "buildruntime.namespace"
POD = "buildruntime.pod"
STEP = "buildruntime.step.name"
IMAGE = "buildruntime.step.image"
EXIT_CODE = "buildruntime.step.exit_code"
FAILURE = "buildruntime.step.failure"
"""A :class:`~buildruntime.results.Failure` value; absent when the step succeeded."""
VERB = "buildruntime.request.verb"
RESOURCE = "buildruntime.request.resource"
WATCH_RESOURCE = "buildruntime.watch.resource"
CAUSE = "buildruntime.watch.cause"
CERTAIN = "buildruntime.log.certain"
"""On a missing-lines notice: True when lines are missing, False when they may be."""
