"""The fault matrix against a real API server: connections cut, refused and stalled by a
TCP proxy between the client and the API server; a real 410 Gone from an etcd compaction;
kube-apiserver killed and restarted; sidecars injected by a mutating admission webhook
(on FakeCluster: its own faults and the same injection in its create).

Each test compares what the user of the API observed (every log line, every result,
the build's events) with what the steps printed and how they exited: the same lines,
once, in order."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import anyio
import pytest

from buildruntime import Build, BuildEvent, BuildSpec, Failure, StepSpec
from buildruntime.cluster.port import Request
from buildruntime.testing.chaos import ChaosCluster

from .admission import EARLY_EXIT_SIDECAR, PROXY_SIDECAR, SIDECARS
from .conftest import BUSYBOX, JSON, RECOVERY, Outage, Target, target_kind
from .observe import During, Observed, PortRecorder, run_build

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"] if target_kind() == "fake" else ["asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _now() -> datetime:
    return datetime.now(UTC)


def _ticker(name: str, count: int, pause: float) -> StepSpec:
    script = f"i=0; while [ $i -lt {count} ]; do i=$((i+1)); echo {name}-$i; sleep {pause}; done"
    return StepSpec(name=name, image=BUSYBOX, commands=[script])


@dataclasses.dataclass
class Seen(Observed):
    """What the user of the API saw of one build, and of the port."""

    requests: list[Request] = dataclasses.field(default_factory=list)
    open_after: tuple[int, int] = (0, 0)
    """Watches and log streams still open once the runtime was closed."""


async def _observe(
    target: Target,
    spec: BuildSpec,
    during: During | None = None,
    *,
    ongoing: bool = False,
    **settings: object,
) -> Seen:
    """Run the pipeline on a runtime of the target while ``during`` acts on the build
    (see :func:`run_build`)."""
    async with target.runtime(**settings) as rt:
        seen = await run_build(rt, spec, during=during, ongoing=ongoing)
    return Seen(
        **vars(seen),
        requests=target.requests,
        open_after=(target.cluster.open_watches, target.cluster.open_log_streams),
    )


async def _build_under(
    target: Target,
    fault: During,
    *,
    count: int,
    pause: float,
    **settings: object,
) -> Seen:
    """Two tickers of ``count`` lines while ``fault(build, lines)`` goes on (it is
    cancelled once they have ended): every line once, in order, both steps succeed."""
    spec = BuildSpec(
        build_id=f"fault-{uuid.uuid4().hex[:6]}",
        steps=[_ticker("a", count, pause), _ticker("b", count, pause)],
    )
    seen = await _observe(target, spec, fault, ongoing=True, **settings)
    assert seen.outcome() == {name: (_ticks(name, count), 0) for name in ("a", "b")}
    assert seen.open_after == (0, 0)
    return seen


@pytest.mark.slow
async def test_connections_cut_every_two_seconds_through_a_sixty_second_build(
    target: Target,
) -> None:
    cuts = 0

    async def cut_often(build: Build, lines: dict[str, list[bytes]]) -> None:
        nonlocal cuts
        while True:
            await anyio.sleep(2)
            target.cut_connections()
            cuts += 1

    recorder = PortRecorder(target.cluster)
    with _through(target, recorder):
        seen = await _build_under(target, cut_often, count=300, pause=0.1)
    assert cuts >= 25
    # Each cut broke the pods watch (always open), and the runtime opened it again.
    assert len(recorder.broken("watch")) >= 2 * (cuts - 2), recorder.unavailable
    assert seen.requests.count(Request("watch", "pods")) >= cuts - 1


async def test_log_streams_cut_mid_stream_repeatedly(target: Target) -> None:
    async def cut(build: Build, lines: dict[str, list[bytes]]) -> None:
        while True:
            await anyio.sleep(0.7)
            target.cut_connections()

    recorder = PortRecorder(target.cluster)
    with _through(target, recorder):
        seen = await _build_under(target, cut, count=80, pause=0.05)
    # Each step prints for 4 s: its log stream was cut and resumed several times.
    assert len(recorder.broken("log")) >= 4, recorder.unavailable
    assert seen.requests.count(Request("log", "pods")) >= 2 + 4


@pytest.mark.parametrize(
    ("down", "count", "pause"),
    [(3, 30, 0.05), pytest.param(30, 100, 0.2, marks=pytest.mark.slow)],
    ids=["3s", "30s"],
)
async def test_api_unreachable_while_steps_run_and_finish(
    target: Target, down: float, count: int, pause: float
) -> None:
    """Step a prints for ``count * pause`` seconds and ends during an outage of
    ``down`` seconds that begins once its first line arrived; step b runs after."""
    outages: list[Outage] = []

    async def outage(build: Build, lines: dict[str, list[bytes]]) -> None:
        await _delivered(lines, "a", b"a-1")
        started = _now()
        target.refuse_connections(down)
        await anyio.sleep(down)
        outages.append(Outage(started, _now()))

    recorder = PortRecorder(target.cluster)
    with _through(target, recorder):
        seen = await _build_under(target, outage, count=count, pause=pause, api_timeout=90)
    # The outage took effect: the open streams broke, requests were refused while it
    # lasted, and step a ended in it.
    assert recorder.broken(), recorder.unavailable
    assert recorder.refused(), recorder.unavailable
    (window,) = outages
    finished = seen.results["a"].finished_at
    assert isinstance(finished, datetime)
    assert window.started.replace(microsecond=0) <= finished <= window.ended


async def test_a_stalled_watch_is_detected_by_its_silence(target: Target) -> None:
    chaos = ChaosCluster(target.cluster, duplicate=False, reorder=False, stall_pods_watch_after=2)
    spec = BuildSpec(
        build_id=f"stall-{uuid.uuid4().hex[:6]}",
        steps=[
            _ticker("a", 20, 0.05),
            StepSpec(name="b", image=BUSYBOX, commands=["echo b", "sleep 0.5", "exit 4"]),
        ],
    )
    with _through(target, chaos):
        seen = await _observe(
            target, spec, reflector=dataclasses.replace(RECOVERY, watch_idle_timeout=2.0)
        )
    assert seen.outcome() == {"a": (_ticks("a", 20), 0), "b": ([b"b"], 4)}
    # The watch went silent once, was found out and replaced.
    assert chaos.stalls == 1
    assert seen.requests.count(Request("watch", "pods")) == 2
    assert seen.open_after == (0, 0)


async def test_duplicated_and_reordered_watch_events_and_a_sidecar(target: Target) -> None:
    """Every watch event twice, neighbours swapped, and a sidecar (with its own failing
    status and Warnings) in every pod: each transition is reported once, the sidecar is
    not a step."""
    chaos = ChaosCluster(target.cluster, duplicate=True, reorder=True, sidecar="istio-proxy")
    recorder = PortRecorder(chaos, deliveries=True)
    spec = BuildSpec(
        build_id=f"chaos-{uuid.uuid4().hex[:6]}",
        steps=[
            _ticker("a", 10, 0.01),
            StepSpec(name="b", image=BUSYBOX, commands=["echo b-1", "exit 2"]),
        ],
    )
    with _through(target, recorder):
        seen = await _observe(target, spec)
    assert seen.outcome() == {"a": (_ticks("a", 10), 0), "b": ([b"b-1"], 2)}
    # The runtime really got duplicates and reorders.
    assert recorder.duplicates("pods") >= 3, recorder.delivered
    assert recorder.reorders("pods") >= 1, recorder.delivered
    assert recorder.duplicates("events") >= 1, recorder.delivered
    kinds = [(e.step, e.kind) for e in seen.events]
    assert kinds.count(("a", "started")) == 1
    assert kinds.count(("a", "completed")) == 1
    assert kinds.count(("b", "started")) == 1
    assert kinds.count(("b", "failed")) == 1
    assert kinds.count((None, "scheduled")) == 1
    assert not [k for k in kinds if k[0] == "istio-proxy"]
    assert kinds[-1] == (None, "deleted")
    assert seen.open_after == (0, 0)


# ---------------------------------------------------------------- the control plane itself


async def _delivered(lines: dict[str, list[bytes]], step: str, line: bytes) -> None:
    """Wait until the runtime has delivered ``line`` of ``step`` to the user."""
    while line not in lines.get(step, ()):
        await anyio.sleep(0.02)


@contextlib.contextmanager
def _through(target: Target, wrapper: object) -> Iterator[None]:
    """Runtimes made in the block talk to the cluster through ``wrapper``."""
    original = target.cluster
    target.cluster = wrapper
    try:
        yield
    finally:
        target.cluster = original


RESTART_DOWN = 1.0
"""Seconds kube-apiserver stays stopped before it starts again (it then needs about
2.5 s to be ready). The outage must outlast the end of step a, but no longer than that:
while the API server is away the kubelet's watches back off (client-go's reflector:
0.8 s doubling to 30 s, times up to 2 for jitter, reset only after 2 minutes without a
failure), and the build waits for the kubelet to see the next step's patch and the
pod's deletion. Measured here: 3 to 15 s after a single restart, up to a minute when
restarts follow each other within two minutes."""


def _step_image_status(pod: JSON, step: str) -> JSON:
    """The step's container status once it runs the step image (busybox, not the
    placeholder), else {}."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == step and "busybox" in (status.get("image") or ""):
            return dict(status)
    return {}


def _container_state(pod: JSON, name: str) -> JSON:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == name:
            return dict(status.get("state") or {})
    return {}


def _runs(step: str) -> Callable[[JSON], bool]:
    return lambda pod: "running" in (_step_image_status(pod, step).get("state") or {})


def _ended(step: str) -> Callable[[JSON], bool]:
    return lambda pod: "terminated" in (_step_image_status(pod, step).get("state") or {})


def _ticks(name: str, count: int) -> list[bytes]:
    return [f"{name}-{i}".encode() for i in range(1, count + 1)]


def _kinds(events: list[BuildEvent], step: str | None) -> list[str]:
    return [e.kind for e in events if e.step == step]


def _step_transitions(events: list[BuildEvent], step: str) -> list[str]:
    """The step's started/completed/failed events, in order (pulls vary by target)."""
    return [k for k in _kinds(events, step) if k in ("started", "completed", "failed")]


async def test_a_real_410_gone_after_etcd_is_compacted_while_the_watches_are_held_off(
    target: Target,
) -> None:
    """Watches held off while the build moves on and an outside Warning is posted; etcd
    compacted past every version the runtime holds; when the watches resume, the
    events watch (served by etcd, not the watch cache) gets 410 Gone, the runtime
    relists and misses nothing."""
    target.require_control("compacting etcd")
    spec = BuildSpec(
        build_id=f"gone-{uuid.uuid4().hex[:6]}",
        steps=[_ticker("a", 40, 0.1), _ticker("b", 20, 0.05)],
    )
    marker = f"posted while the runtime's watches were held off ({spec.build_id})"

    async def compaction(build: Build, lines: dict[str, list[bytes]]) -> None:
        with anyio.fail_after(30):
            await target.pod_until(build.pod_name, _runs("a"))
        async with target.hold_connections():
            with anyio.fail_after(30):
                # A state change the watches miss: step a ends while they are held off.
                await target.pod_until(build.pod_name, _ended("a"))
            # An event they miss (pod-level, so it becomes a warning of the build).
            await target.create_event(
                build.pod_name, type="Warning", reason="HeldOff", message=marker
            )
            await target.compact_and_expire()

    recorder = PortRecorder(target.cluster)
    with _through(target, recorder):
        seen = await _observe(target, spec, compaction)

    assert seen.lines == {"a": _ticks("a", 40), "b": _ticks("b", 20)}
    assert {n: (r.exit_code, r.failure) for n, r in seen.results.items()} == {
        "a": (0, None),
        "b": (0, None),
    }
    # The proof that a real 410 happened: the events watch that resumed from a
    # compacted version was answered 410 Gone, and the runtime listed events (its events
    # watch starts unlisted at the pod's creation: any list is a relist).
    assert recorder.expired_on("events"), recorder.expired
    assert seen.requests.count(Request("list", "events")) >= 1
    # Nothing missed, nothing twice: the event posted during the hold, found by the
    # relist, is reported once; each step started and completed once.
    warnings = [(e.step, e.reason, e.message) for e in seen.events if e.kind == "warning"]
    assert warnings == [(None, "HeldOff", marker)]
    assert _step_transitions(seen.events, "a") == ["started", "completed"]
    assert _step_transitions(seen.events, "b") == ["started", "completed"]
    assert seen.events[-1].kind == "deleted"
    assert seen.open_after == (0, 0)


async def test_kube_apiserver_killed_and_restarted_while_a_step_runs_and_finishes(
    target: Target,
) -> None:
    """A real outage: kube-apiserver killed while step a prints, kept down until after
    a has ended, then started again with the same command line. The restarted server's
    watch cache starts afresh, so the pods watch resuming from its old version gets
    410; the runtime relists, resumes the log from where it was cut, and runs b."""
    target.require_control("restarting kube-apiserver")
    spec = BuildSpec(
        build_id=f"restart-{uuid.uuid4().hex[:6]}",
        steps=[_ticker("a", 40, 0.1), _ticker("b", 20, 0.05)],
    )
    outages: list[Outage] = []

    async def restart(build: Build, lines: dict[str, list[bytes]]) -> None:
        with anyio.fail_after(30):
            # About 1.5 s before a ends: kill kube-apiserver and keep it down long
            # enough for a to end meanwhile.
            await _delivered(lines, "a", b"a-25")
        outages.append(await target.restart_apiserver(down=RESTART_DOWN))

    recorder = PortRecorder(target.cluster)
    with _through(target, recorder):
        seen = await _observe(target, spec, restart, api_timeout=90)

    assert seen.lines == {"a": _ticks("a", 40), "b": _ticks("b", 20)}
    assert {n: (r.exit_code, r.failure) for n, r in seen.results.items()} == {
        "a": (0, None),
        "b": (0, None),
    }
    # Step a really ended while the API server was down (the kubelet's finishedAt has
    # whole seconds).
    (outage,) = outages
    finished = seen.results["a"].finished_at
    assert isinstance(finished, datetime)
    assert outage.started.replace(microsecond=0) <= finished <= outage.ended
    assert seen.requests.count(Request("list", "pods")) >= 2
    # The restart took effect: it broke the open watches, and the pods watch resuming
    # from its old version was answered 410 Gone.
    assert recorder.broken("watch"), recorder.unavailable
    assert recorder.expired_on("pods"), recorder.expired
    assert _step_transitions(seen.events, "a") == ["started", "completed"]
    assert _step_transitions(seen.events, "b") == ["started", "completed"]
    assert seen.events[-1].kind == "deleted"
    assert seen.open_after == (0, 0)


async def test_sidecars_injected_at_admission_are_not_steps(target: Target) -> None:
    """A mutating admission webhook adds two containers that are not steps: a chatty
    proxy that runs throughout and a check that fails at once. They run with their own
    statuses and events, and Warnings about them are posted; the steps' results, logs
    and the build's events are exactly those of the steps."""
    target.require_control("injecting sidecars at admission")
    spec = BuildSpec(
        build_id=f"sidecar-{uuid.uuid4().hex[:6]}",
        steps=[
            _ticker("a", 20, 0.05),
            StepSpec(name="b", image=BUSYBOX, commands=["echo b-1", "exit 2"]),
        ],
    )
    truth: list[JSON] = []

    async def sidecar_warnings(build: Build, lines: dict[str, list[bytes]]) -> None:
        with anyio.fail_after(60):
            # Both sidecars ran as the kubelet runs any container: the proxy still
            # runs, the check has failed.
            truth.append(
                await target.pod_until(
                    build.pod_name,
                    lambda pod: (
                        "running" in _container_state(pod, PROXY_SIDECAR)
                        and _container_state(pod, EARLY_EXIT_SIDECAR)
                        .get("terminated", {})
                        .get("exitCode")
                        == 1
                    ),
                )
            )
        await target.create_event(
            build.pod_name,
            type="Warning",
            reason="BackOff",
            message=f"Back-off restarting failed container {PROXY_SIDECAR}",
            container=PROXY_SIDECAR,
        )
        await target.create_event(
            build.pod_name,
            type="Warning",
            reason="Failed",
            message=f'Failed to pull image "docker.io/istio/proxyv2:1.0" for {EARLY_EXIT_SIDECAR}',
            container=EARLY_EXIT_SIDECAR,
        )
        # Posted last: once the runtime reports it, the events watch has delivered the
        # sidecar Warnings before it.
        await target.create_event(
            build.pod_name, type="Warning", reason="AfterSidecars", message="marker"
        )
        with anyio.fail_after(30):
            async for event in build.events():
                if event.reason == "AfterSidecars":
                    break

    async with target.inject_sidecars(SIDECARS) as injected:
        seen = await _observe(target, spec, sidecar_warnings)
        assert spec.pod_name in injected

    assert seen.lines == {"a": _ticks("a", 20), "b": [b"b-1"]}
    assert {n: (r.exit_code, r.reason, r.failure) for n, r in seen.results.items()} == {
        "a": (0, "Completed", None),
        "b": (2, "Error", Failure.APP_ERROR),
    }
    (pod,) = truth
    assert {c["name"] for c in pod["spec"]["containers"]} == {
        "a",
        "b",
        PROXY_SIDECAR,
        EARLY_EXIT_SIDECAR,
    }
    # The build's events are the steps' and the pod's only: no sidecar step, no
    # sidecar Warning turned into a step failure or a build warning.
    assert {e.step for e in seen.events} <= {None, "a", "b"}
    assert [(e.step, e.reason) for e in seen.events if e.kind == "warning"] == [
        (None, "AfterSidecars")
    ]
    assert _step_transitions(seen.events, "a") == ["started", "completed"]
    assert _step_transitions(seen.events, "b") == ["started", "failed"]
    assert not [e for e in seen.events if PROXY_SIDECAR in f"{e.message}{e.reason}"]
    assert not [e for e in seen.events if EARLY_EXIT_SIDECAR in f"{e.message}{e.reason}"]
    assert seen.events[-1].kind == "deleted"
    assert seen.open_after == (0, 0)
