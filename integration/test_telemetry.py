"""What a user's OpenTelemetry exporter receives from a build: its span and its steps'
spans, and the metrics, compared with what the build did and what the target saw."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from buildruntime import Build, BuildSpec, StepSpec
from buildruntime.telemetry import names

from .conftest import BUSYBOX, Target, target_kind
from .observe import run_build
from .telemetry import Recorder

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"] if target_kind() == "fake" else ["asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_build_s_spans_and_metrics(target: Target) -> None:
    build_id = f"otel-{uuid.uuid4().hex[:6]}"
    spec = BuildSpec(
        build_id=build_id,
        steps=[
            StepSpec(name="greet", image=BUSYBOX, commands=["echo one", "echo two", "echo 3"]),
            StepSpec(name="fail", image=BUSYBOX, commands=["echo four; exit 3"]),
        ],
    )
    recorder = Recorder()
    running_while_assembled: list[float] = []

    async def during(build: Build, lines: dict[str, list[bytes]]) -> None:
        running_while_assembled.append(recorder.total(names.BUILDS_RUNNING_METRIC))

    requests_before = len(target.requests)
    async with target.runtime(**recorder.settings) as rt:
        seen = await run_build(rt, spec, during=during)
    # The builds' requests; the worker's Lease (its creation, renewals, reaping and
    # deletion) is the runtime's own, not any build's.
    sent = Counter(r for r in target.requests[requests_before:] if r.resource != "leases")

    assert seen.outcome() == {
        "greet": ([b"one", b"two", b"3"], 0),
        "fail": ([b"four"], 3),
    }
    # Spans: the build's, and one per step under it with what the step came to.
    (build_span,) = recorder.spans(names.BUILD_SPAN)
    assert build_span.context is not None
    assert recorder.attributes(build_span)[names.BUILD_ID] == build_id
    assert recorder.attributes(build_span)[names.POD] == seen.build.pod_name
    steps = {
        str(recorder.attributes(span)[names.STEP]): span for span in recorder.spans(names.STEP_SPAN)
    }
    assert sorted(steps) == ["fail", "greet"]
    for span in steps.values():
        assert span.parent is not None
        assert span.context is not None
        assert span.parent.span_id == build_span.context.span_id
        assert span.context.trace_id == build_span.context.trace_id
        assert recorder.attributes(span)[names.BUILD_ID] == build_id
        assert recorder.attributes(span)[names.IMAGE] == BUSYBOX
        times = [build_span.start_time, span.start_time, span.end_time, build_span.end_time]
        assert None not in times
        assert times == sorted(times)  # type: ignore[type-var]
    greet, fail = recorder.attributes(steps["greet"]), recorder.attributes(steps["fail"])
    assert greet[names.EXIT_CODE] == 0
    assert names.FAILURE not in greet
    assert steps["greet"].status.is_ok
    assert fail[names.EXIT_CODE] == 3
    assert fail[names.FAILURE] == "APP_ERROR"
    assert not steps["fail"].status.is_ok

    # Metrics: the lines the steps printed, the requests the target saw.
    assert recorder.total(names.LOG_LINES_METRIC) == 4
    assert recorder.total(names.LOG_BYTES_METRIC) == len(b"onetwo3four")
    assert recorder.total(names.LOG_MISSING_METRIC) == 0
    by_verb = recorder.by(names.REQUESTS_METRIC, names.VERB, names.RESOURCE)
    assert by_verb == {(r.verb, r.resource): n for r, n in sent.items()}
    assert by_verb[("patch", "pods")] == 2
    assert by_verb[("log", "pods")] >= 2
    relists = recorder.by(names.WATCH_RELISTS_METRIC, names.WATCH_RESOURCE, names.CAUSE)
    assert relists == {("pods", "initial"): 1}  # the Events are watched, never listed
    assert running_while_assembled == [1]
    assert recorder.total(names.BUILDS_RUNNING_METRIC) == 0
    durations = {
        dict(point.attributes or {}).get(names.FAILURE): point
        for point in recorder.histogram(names.STEP_DURATION_METRIC)
    }
    assert {key: point.count for key, point in durations.items()} == {None: 1, "APP_ERROR": 1}
    (overhead,) = recorder.histogram(names.STEP_OVERHEAD_METRIC)
    assert overhead.count == 2
    assert 0 < overhead.min <= overhead.max
    # A step's overhead is part of its duration (both count from its image patch).
    assert overhead.min <= min(point.min for point in durations.values())
    assert overhead.sum <= sum(point.sum for point in durations.values())
