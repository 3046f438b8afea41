"""Telemetry where the fake alone can make it happen: broken and expired watches, lines
rotated away, steps that never ran, timed out or lost their pod, a refused build, and
the global providers of an application that configures OpenTelemetry once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from buildruntime import (
    AdmissionError,
    Build,
    BuildSpec,
    ImagePullError,
    PodGoneError,
    Runtime,
    RuntimeSettings,
    SpecError,
    StepTimeoutError,
)
from buildruntime.informer.reflector import ReflectorSettings
from buildruntime.telemetry import names
from buildruntime.testing import FakeCluster
from integration.observe import run_build
from integration.telemetry import Recorder

from .conftest import FAST_RECOVERY, step
from .test_log_rotation import Tail, handshake, printing, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def runtime(cluster: FakeCluster, recorder: Recorder) -> AsyncIterator[Runtime]:
    """The suite's runtime, its telemetry going to ``recorder``."""
    async with Runtime(cluster, "ci", reflector=FAST_RECOVERY, **recorder.settings) as rt:
        yield rt


def _step_span(recorder: Recorder, name: str) -> dict[str, object]:
    (span,) = [
        s for s in recorder.spans(names.STEP_SPAN) if recorder.attributes(s)[names.STEP] == name
    ]
    attributes = recorder.attributes(span)
    return {
        "exit_code": attributes.get(names.EXIT_CODE),
        "failure": attributes.get(names.FAILURE),
        "ok": span.status.is_ok,
    }


async def test_broken_and_expired_watches_are_counted_by_cause(
    runtime: Runtime, cluster: FakeCluster, recorder: Recorder
) -> None:
    async def faults(build: Build, lines: dict[str, list[bytes]]) -> None:
        await anyio.sleep(0.2)
        cluster.faults.drop_watches()
        await anyio.sleep(0.5)
        cluster.faults.expire()
        await anyio.sleep(0.5)

    watches_before = sum(1 for r in cluster.requests if r.verb == "watch")
    spec = BuildSpec(build_id="watch-causes", steps=[step("s", "sleep 1.5", "echo done")])
    seen = await run_build(runtime, spec, during=faults)
    assert seen.outcome() == {"s": ([b"done"], 0)}

    restarts = recorder.by(names.WATCH_RESTARTS_METRIC, names.WATCH_RESOURCE, names.CAUSE)
    relists = recorder.by(names.WATCH_RELISTS_METRIC, names.WATCH_RESOURCE, names.CAUSE)
    assert restarts[("pods", "error")] >= 1  # the dropped connection
    assert restarts[("events", "error")] >= 1
    # The pod's Events are watched from its creation, with no list before.
    assert relists[("pods", "initial")] == 1
    assert ("events", "initial") not in relists
    assert relists[("pods", "expired")] >= 1  # the re-watch got 410 Gone
    assert relists[("events", "expired")] >= 1
    # Every watch request followed a list or a restart, and each is counted once; the
    # one exception is the first events watch.
    watches = sum(1 for r in cluster.requests if r.verb == "watch") - watches_before
    assert watches == sum(restarts.values()) + sum(relists.values()) + 1


async def test_watches_the_server_ends_and_resyncs_are_counted_by_cause(
    cluster: FakeCluster, recorder: Recorder
) -> None:
    # The server ends every watch after a second; a relist is due every 1.5 s.
    timing = ReflectorSettings(watch_timeout=(1, 1), resync_period=1.5, min_watch_duration=0.1)
    async with Runtime(cluster, "ci", reflector=timing, **recorder.settings) as rt:
        spec = BuildSpec(build_id="watch-ends", steps=[step("s", "sleep 3.5", "echo done")])
        seen = await run_build(rt, spec)
    assert seen.outcome() == {"s": ([b"done"], 0)}
    restarts = recorder.by(names.WATCH_RESTARTS_METRIC, names.WATCH_RESOURCE, names.CAUSE)
    relists = recorder.by(names.WATCH_RELISTS_METRIC, names.WATCH_RESOURCE, names.CAUSE)
    assert restarts[("pods", "closed")] >= 1
    assert relists[("pods", "resync")] >= 1
    assert ("pods", "error") not in restarts


async def test_lines_rotated_away_are_counted_as_one_notice(
    runtime: Runtime, cluster: FakeCluster, recorder: Recorder, tmp_path: Path
) -> None:
    cluster.faults.slow_logs(100_000)
    spec = BuildSpec(
        build_id="rotate-otel",
        steps=[step("s", printing("a", 4_000), handshake(tmp_path, "a"), printing("b", 100))],
    )
    build = await runtime.setup_build(spec)
    await runtime.assemble_build(build)
    await runtime.run_container(build, "s")
    tail = Tail(runtime, build)
    async with anyio.create_task_group() as tg:
        tg.start_soon(tail.run)
        await wait_for(tmp_path / "a")
        await tail.reached(100)
        cluster.rotate_log("ci", build.pod_name, "s")
        cluster.faults.cut_logs()
        cluster.faults.clear()
        await anyio.Path(tmp_path / "go-a").touch()
    await runtime.remove_build(build)

    notices = [line for line in tail.lines if line.startswith(b"[buildruntime]")]
    assert len(notices) == 1
    assert recorder.by(names.LOG_MISSING_METRIC, names.CERTAIN) == {(True,): 1}
    printed = [line for line in tail.lines if not line.startswith(b"[buildruntime]")]
    assert recorder.total(names.LOG_LINES_METRIC) == len(printed) < 4_100
    assert recorder.total(names.LOG_BYTES_METRIC) == sum(map(len, printed))


async def test_a_step_whose_image_cannot_be_pulled(runtime: Runtime, recorder: Recorder) -> None:
    spec = BuildSpec(build_id="pull-otel", steps=[step("pull", "true", image="nosuch:1")])
    build = await runtime.setup_build(spec)
    await runtime.assemble_build(build)
    with pytest.raises(ImagePullError):
        await runtime.run_container(build, "pull")
    await runtime.remove_build(build)
    assert _step_span(recorder, "pull") == {"exit_code": None, "failure": "IMAGE_PULL", "ok": False}
    assert recorder.histogram(names.STEP_OVERHEAD_METRIC) == []  # it never ran
    (duration,) = recorder.histogram(names.STEP_DURATION_METRIC)
    assert dict(duration.attributes or {}) == {names.FAILURE: "IMAGE_PULL"}


async def test_a_step_stopped_at_its_timeout(runtime: Runtime, recorder: Recorder) -> None:
    spec = BuildSpec(build_id="slow-otel", steps=[step("slow", "sleep 30", timeout=0.5)])
    build = await runtime.setup_build(spec)
    await runtime.assemble_build(build)
    await runtime.run_container(build, "slow")
    with pytest.raises(StepTimeoutError):
        await runtime.wait_container(build, "slow")
    await runtime.remove_build(build)
    span = _step_span(recorder, "slow")
    assert span["failure"] == "TIMEOUT"
    assert span["ok"] is False


async def test_a_step_whose_pod_was_deleted(
    runtime: Runtime, cluster: FakeCluster, recorder: Recorder
) -> None:
    spec = BuildSpec(build_id="gone-otel", steps=[step("s", "sleep 30")])
    build = await runtime.setup_build(spec)
    await runtime.assemble_build(build)
    await runtime.run_container(build, "s")
    await cluster.delete_pod("ci", build.pod_name)
    with pytest.raises(PodGoneError):
        await runtime.wait_container(build, "s")
    await runtime.remove_build(build)
    span = _step_span(recorder, "s")
    assert span["failure"] == "POD_DELETED"
    assert span["ok"] is False
    assert recorder.total(names.BUILDS_RUNNING_METRIC) == 0


async def test_a_refused_build_s_span_says_why(
    runtime: Runtime, cluster: FakeCluster, recorder: Recorder
) -> None:
    cluster.faults.deny_create("images from docker.io are not allowed")
    build = await runtime.setup_build(BuildSpec(build_id="deny-otel", steps=[step("s", "true")]))
    with pytest.raises(AdmissionError):
        await runtime.assemble_build(build)
    (span,) = recorder.spans(names.BUILD_SPAN)
    assert not span.status.is_ok
    assert "images from docker.io are not allowed" in (span.status.description or "")
    assert [event.name for event in span.events] == ["exception"]
    assert recorder.spans(names.STEP_SPAN) == []
    assert recorder.total(names.BUILDS_RUNNING_METRIC) == 0


@pytest.mark.parametrize("field", ["tracer_provider", "meter_provider"])
def test_a_provider_of_the_wrong_kind_names_the_setting(field: str) -> None:
    with pytest.raises(SpecError) as caught:
        RuntimeSettings(**{field: "otlp"})  # type: ignore[arg-type]
    assert caught.value.field == field
    assert "must be an OpenTelemetry" in str(caught.value)


GLOBAL_PROVIDERS = """
import anyio
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from buildruntime import BuildSpec, Runtime, StepSpec
from buildruntime.testing import FakeCluster

async def main() -> None:
    async with FakeCluster(images={"busybox"}) as cluster, Runtime(cluster) as rt:
        # Configured after the runtime was made, as an application may do.
        exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        spec = BuildSpec(build_id="global", steps=[StepSpec("s", "busybox", ["echo hi"])])
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        await rt.run_container(build, "s")
        await rt.wait_container(build, "s")
        await rt.remove_build(build)
    print(sorted(span.name for span in exporter.get_finished_spans()))
    data = reader.get_metrics_data()
    scopes = [scope for resource in data.resource_metrics for scope in resource.scope_metrics]
    print(sorted({metric.name for scope in scopes for metric in scope.metrics}))

anyio.run(main)
"""


def test_the_global_providers_are_used_when_the_settings_name_none() -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(GLOBAL_PROVIDERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    spans, metrics = done.stdout.splitlines()
    assert spans == str([names.BUILD_SPAN, names.STEP_SPAN])
    assert names.LOG_LINES_METRIC in metrics
    assert names.REQUESTS_METRIC in metrics
