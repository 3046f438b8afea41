"""Server cost: what running builds costs the control plane, buildruntime versus a
per-step runtime, on the local cluster (integration/cluster/up).

For each concurrency B (builds at once, S ``echo`` steps each, driven as a CI executor
does: assemble, then per step run → tail → wait, then remove), one run of each runtime
(``--runtimes``) and a kubelet-only run, one after the other in fresh namespaces:

- ``buildruntime``: one Runtime, B builds at once, its one pods watch and its one
  events watch shared by them (the defaults);
- ``buildruntime, pod watch per build``: the same with ``shared_pod_watch=False``;
- ``buildruntime, events watch per build`` (only with ``--runtimes``): the same with
  ``shared_event_watch=False`` as well, the runtime as it was before either was shared;
- ``baseline``: ``bench/baseline_runtime.py`` (per-step watches, GETs, log retries);
- ``kubelet only``: the same pods created, their step images patched in one after the
  other at the pace the runtimes ran them, and deleted, with no watch and no log read:
  what the kubelet's own status writes and the writes every runtime must make cost.

Figures per run, each taken from the first call until the run's pods are gone (every
runtime's pods terminate inside its own window): wall time; CPU seconds of
kube-apiserver, etcd and the kubelet from ``/proc/<pid>/stat`` (utime + stime) minus
what the idle control plane burns in the same time (measured first, in the same run);
requests by verb (both runtimes go through the same counting wrapper); step latency
p50/p99 (``run_container`` → ``wait_container`` returning) and assemble latency
p50/p99. "runtime CPU" is apiserver + etcd CPU above idle minus the kubelet-only run's:
what the runtime's own reads, watches and log streams cost the control plane. That is a
difference of two runs on a shared machine, which moves by tens of ms per build from one
run to the next: ``--repeat N`` measures each concurrency N times (each round starting
with another runtime) and adds a table of the medians, each round's runs minus that
round's kubelet-only run.

The breakdown reads the apiserver's ``/metrics`` before and after each run: server time
by verb and resource (``apiserver_request_duration_seconds_sum``), watch events sent by
resource (``apiserver_watch_events_total``) and etcd time by operation
(``etcd_request_duration_seconds_sum``). Events are not in the apiserver's watch cache:
each per-build events watch is an etcd watch whose field selector the apiserver checks
against every event of the namespace, so its cost may grow with the builds sharing a
namespace; the per-build columns show whether it does.

    KUBECONFIG=/var/lib/buildruntime-cluster/admin.kubeconfig \\
        .venv/bin/python bench/server_cost.py --builds 1,10,30,50,100 --steps 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common
import anyio
from baseline_runtime import BaselineRuntime

from buildruntime import BuildSpec, Runtime, StepSpec
from buildruntime.spec import render_pod

COMPONENTS = ("kube-apiserver", "etcd", "kubelet")
RUNTIMES: dict[str, dict[str, bool]] = {
    "buildruntime": {},
    "buildruntime, pod watch per build": {"shared_pod_watch": False},
    "buildruntime, events watch per build": {
        "shared_pod_watch": False,
        "shared_event_watch": False,
    },
    "baseline": {},
}
"""The runtimes a run can compare, with the buildruntime settings each stands for."""
CHOICES = dict(
    zip(("shared", "pods-per-build", "events-per-build", "baseline"), RUNTIMES, strict=True)
)
"""``--runtimes`` names for them."""
PIDS = Path(os.environ.get("BUILDRUNTIME_CLUSTER_RUN", "/run/buildruntime-cluster")) / "pids"
TICKS = os.sysconf("SC_CLK_TCK")
METRIC_FAMILIES = (
    "apiserver_request_duration_seconds_sum",
    "apiserver_watch_events_total",
    "apiserver_watch_events_sizes_sum",
    "etcd_request_duration_seconds_sum",
)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def cpu_seconds() -> dict[str, float]:
    """utime + stime of each control-plane process, in seconds."""
    out: dict[str, float] = {}
    for name in COMPONENTS:
        pid = (PIDS / f"{name}.pid").read_text().strip()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out[name] = (int(fields[11]) + int(fields[12])) / TICKS
    return out


def scrape(api: Any) -> Counter[str]:
    """The apiserver's /metrics, the families of METRIC_FAMILIES only, keyed
    ``family verb resource`` (or ``family operation type`` for etcd)."""
    response = api.call_api("GET", api.configuration.host + "/metrics")
    response.read()
    text = response.data.decode()
    samples: Counter[str] = Counter()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group(1) not in METRIC_FAMILIES:
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        if match.group(1).startswith("etcd"):
            key = f"{labels.get('operation', '')} {labels.get('type', '')}"
        elif "watch_events" in match.group(1):
            key = labels.get("resource", labels.get("kind", ""))
        else:
            key = f"{labels.get('verb', '')} {labels.get('resource', '')}"
            if labels.get("subresource"):
                key += "/" + labels["subresource"]
        samples[f"{match.group(1)} {key}"] += float(match.group(3))
    return samples


def spec(build_id: str, steps: int) -> BuildSpec:
    return BuildSpec(
        build_id=build_id,
        steps=[
            StepSpec(name=f"s{i}", image="busybox", commands=[f"echo step {i} of {build_id}"])
            for i in range(steps)
        ],
    )


@dataclass
class Run:
    """One run's measurements."""

    runtime: str
    builds: int
    steps: int
    round: int = 0
    """Which repetition of this concurrency (``--repeat``)."""
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    step_latency: list[float] = field(default_factory=list)
    assemble_latency: list[float] = field(default_factory=list)
    wrong_logs: int = 0
    metrics: Counter[str] = field(default_factory=Counter)


async def drive(runtime: Any, build_spec: BuildSpec, run: Run) -> None:
    """A CI executor's calls for one build, timed."""
    build = await runtime.setup_build(build_spec)
    started = time.perf_counter()
    await runtime.assemble_build(build)
    run.assemble_latency.append(time.perf_counter() - started)
    try:
        for step in build_spec.steps:
            started = time.perf_counter()
            await runtime.run_container(build, step.name)
            lines = [line async for line in runtime.tail_container(build, step.name)]
            await runtime.wait_container(build, step.name)
            run.step_latency.append(time.perf_counter() - started)
            if lines != [f"step {step.name[1:]} of {build_spec.build_id}".encode()]:
                run.wrong_logs += 1
    finally:
        await runtime.remove_build(build)


async def kubelet_only(
    cluster: _common.CountingCluster,
    namespace: str,
    build_spec: BuildSpec,
    run: Run,
    assemble: float,
    step: float,
) -> None:
    """The writes alone, paced like a runtime's build: create, patch each step in after
    ``step`` seconds, delete. No watch, no log read."""
    manifest = render_pod(build_spec, namespace=namespace, pause_image=_common.LOCAL_PAUSE_IMAGE)
    await cluster.create_pod(namespace, manifest)
    await anyio.sleep(assemble)
    for each in build_spec.steps:
        patch = {"spec": {"containers": [{"name": each.name, "image": each.image}]}}
        await cluster.patch_pod(namespace, build_spec.pod_name, patch)
        await anyio.sleep(step)
    await cluster.delete_pod(namespace, build_spec.pod_name)


async def measure(
    kubeconfig: str, api: Any, which: str, builds: int, steps: int, pace: tuple[float, float]
) -> Run:
    run = Run(which, builds, steps)
    with _common.fresh_namespace(kubeconfig, f"cost-{which[:4]}") as ns:
        cluster = _common.kube_cluster(kubeconfig)
        counting = _common.CountingCluster(cluster)
        specs = [spec(f"{which[:4]}-{builds}-{i}", steps) for i in range(builds)]
        metrics_before = scrape(api)
        cpu_before = cpu_seconds()
        started = time.perf_counter()
        try:
            if which.startswith("buildruntime"):
                async with Runtime(
                    counting, ns.name, pause_image=_common.LOCAL_PAUSE_IMAGE, **RUNTIMES[which]
                ) as runtime:
                    await _all(specs, lambda s: drive(runtime, s, run))
            elif which == "baseline":
                baseline = BaselineRuntime(counting, ns.name, pause_image=_common.LOCAL_PAUSE_IMAGE)
                await _all(specs, lambda s: drive(baseline, s, run))
            else:
                await _all(
                    specs, lambda s: kubelet_only(counting, ns.name, s, run, pace[0], pace[1])
                )
        finally:
            await cluster.aclose()
        # The run ends when its pods are gone, for every runtime: a pod's termination
        # (the kubelet's last status writes, its final delete, the garbage collector)
        # is work every runtime causes, and buildruntime's remove_build waits for it
        # where the baseline's and the kubelet-only run's deletes return at once.
        await _pods_gone(api, ns.name)
        run.wall = time.perf_counter() - started
        after = cpu_seconds()
        run.cpu = {name: after[name] - cpu_before[name] for name in COMPONENTS}
        run.metrics = scrape(api)
        run.metrics.subtract(metrics_before)
        run.requests = counting.counts()
    return run


def slowest_pace(runs: list[Run]) -> tuple[float, float]:
    """The kubelet-only run's pace: the assemble and step p50 of the slowest runtime."""
    slow = max(runs, key=lambda r: _common.percentile(r.step_latency, 50))
    return (
        _common.percentile(slow.assemble_latency, 50),
        _common.percentile(slow.step_latency, 50),
    )


async def _all(specs: list[BuildSpec], one: Callable[[BuildSpec], Awaitable[None]]) -> None:
    async with anyio.create_task_group() as tg:
        for each in specs:
            tg.start_soon(one, each)


async def _pods_gone(api: Any, namespace: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api)
    with anyio.fail_after(120):
        while (await anyio.to_thread.run_sync(core.list_namespaced_pod, namespace)).items:
            await anyio.sleep(0.5)


async def idle_rate(seconds: float) -> dict[str, float]:
    """CPU seconds per second of each component with nothing running."""
    before = cpu_seconds()
    await anyio.sleep(seconds)
    after = cpu_seconds()
    return {name: (after[name] - before[name]) / seconds for name in COMPONENTS}


HEADERS = [
    "builds × steps",
    "round",
    "runtime",
    "wall s",
    "apiserver CPU s",
    "etcd CPU s",
    "kubelet CPU s",
    "runtime CPU s",
    "runtime CPU ms/build",
    "requests",
    "by verb",
    "step p50 s",
    "step p99 s",
    "assemble p50 s",
    "assemble p99 s",
    "wrong logs",
]


def above_idle(run: Run, idle: dict[str, float]) -> dict[str, float]:
    """Each component's CPU seconds during the run above its idle rate."""
    return {name: run.cpu[name] - idle[name] * run.wall for name in COMPONENTS}


def _plane(run: Run, idle: dict[str, float]) -> float:
    """apiserver + etcd CPU seconds above the idle rate."""
    above = above_idle(run, idle)
    return above["kube-apiserver"] + above["etcd"]


def runtime_cpu(run: Run, runs: list[Run], idle: dict[str, float]) -> float | None:
    """The run's control-plane CPU above idle minus that of the kubelet-only run of the
    same concurrency and round: what the runtime's own requests cost."""
    if run.runtime == "kubelet only":
        return None
    for base in runs:
        if (base.runtime, base.builds, base.round) == ("kubelet only", run.builds, run.round):
            return _plane(run, idle) - _plane(base, idle)
    return None


def rows_of(runs: list[Run], idle: dict[str, float]) -> list[list[object]]:
    rows: list[list[object]] = []
    for run in runs:
        above = above_idle(run, idle)
        mine = runtime_cpu(run, runs, idle)
        own: float | str = "" if mine is None else mine
        verbs = ", ".join(
            f"{verb} {run.requests[verb]}"
            for verb in ("create", "list", "watch", "get", "patch", "log", "delete")
            if run.requests[verb]
        )
        rows.append(
            [
                f"{run.builds} × {run.steps}",
                run.round + 1,
                run.runtime,
                run.wall,
                above["kube-apiserver"],
                above["etcd"],
                above["kubelet"],
                own,
                own * 1000 / run.builds if isinstance(own, float) else "",
                run.requests["total"],
                verbs,
                _common.percentile(run.step_latency, 50) if run.step_latency else "",
                _common.percentile(run.step_latency, 99) if run.step_latency else "",
                _common.percentile(run.assemble_latency, 50) if run.assemble_latency else "",
                _common.percentile(run.assemble_latency, 99) if run.assemble_latency else "",
                run.wrong_logs if run.runtime != "kubelet only" else "",
            ]
        )
    return rows


def summary(runs: list[Run], idle: dict[str, float]) -> str:
    """Per concurrency, the medians over the rounds: one round's difference of two runs
    moves by tens of ms per build on a shared machine, the median of several less."""

    def rounds_of(which: str, builds: int) -> list[Run]:
        return [run for run in runs if (run.runtime, run.builds) == (which, builds)]

    def per_build(which: str, builds: int) -> list[float]:
        values = [runtime_cpu(run, runs, idle) for run in rounds_of(which, builds)]
        return sorted(v * 1000 / builds for v in values if v is not None)

    def p50s(which: str, builds: int) -> list[float]:
        return [_common.percentile(run.step_latency, 50) for run in rounds_of(which, builds)]

    def shown(values: list[float]) -> str:
        if not values:
            return ""
        middle = statistics.median(values)
        return (
            f"{middle:.0f}"
            if len(values) == 1
            else f"{middle:.0f} ({values[0]:.0f}–{values[-1]:.0f})"
        )

    compared = [which for which in RUNTIMES if any(run.runtime == which for run in runs)]
    rows: list[list[object]] = []
    for builds in sorted({run.builds for run in runs}):
        ours, base = per_build("buildruntime", builds), per_build("baseline", builds)
        ratio = ""
        if ours and base and statistics.median(base) > 0:
            ratio = f"{statistics.median(ours) / statistics.median(base):.2f}"
        rows.append(
            [
                f"{builds} × {runs[0].steps}",
                len(ours),
                *(shown(per_build(which, builds)) for which in compared),
                ratio,
                f"{statistics.median(p50s('buildruntime', builds)):.2f} / "
                f"{statistics.median(p50s('baseline', builds)):.2f}",
            ]
        )
    headers = [
        "builds × steps",
        "rounds",
        *(f"runtime CPU ms/build, median (min–max): {which}" for which in compared),
        "buildruntime / baseline",
        "step p50 s, median: buildruntime / baseline",
    ]
    return _common.table(headers, rows)


def breakdown(runs: list[Run], top: int) -> str:
    """Per run of the first round, the largest server-side costs from /metrics (seconds,
    or events)."""
    out: list[list[object]] = []
    for run in (run for run in runs if run.round == 0):
        for family, label in (
            ("apiserver_request_duration_seconds_sum", "server s"),
            ("apiserver_watch_events_total", "watch events"),
            ("etcd_request_duration_seconds_sum", "etcd s"),
        ):
            items = [
                (key.split(" ", 1)[1], value)
                for key, value in run.metrics.items()
                if key.startswith(family + " ")
                and value > 0
                # A watch's or log stream's "duration" is how long it stayed open.
                and not key.split(" ", 2)[1].startswith(("WATCH", "CONNECT"))
            ]
            items.sort(key=lambda kv: -kv[1])
            shown = ", ".join(
                f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}"
                for name, value in items[:top]
            )
            out.append([f"{run.builds} × {run.steps}", run.runtime, label, shown])
    return _common.table(["builds × steps", "runtime", "what", "largest"], out)


async def main_async(args: argparse.Namespace, kubeconfig: str) -> tuple[str, str, str, str]:
    from kubernetes import config

    api: Any = config.new_client_from_config(config_file=kubeconfig)
    idle = await idle_rate(args.idle)
    idle_line = (
        f"Idle control plane, {args.idle:g} s at the start: "
        + ", ".join(f"{n} {idle[n] * 20:.2f} s CPU per 20 s" for n in COMPONENTS)
        + "."
    )
    print(idle_line, flush=True)
    runs: list[Run] = []
    runtimes = [CHOICES[name] for name in args.runtimes.split(",")]
    for builds in [int(b) for b in args.builds.split(",")]:
        for round_ in range(args.repeat):
            measured: list[Run] = []
            # Each round starts with another runtime: whatever drifts during a round
            # (etcd's size, the node's caches) favours none of them.
            first = round_ % len(runtimes)
            for which in runtimes[first:] + runtimes[:first]:
                run = await measure(kubeconfig, api, which, builds, args.steps, (0.0, 0.0))
                run.round = round_
                measured.append(run)
                print(_common.table(HEADERS, rows_of([run], idle)).splitlines()[-1], flush=True)
            alone = await measure(
                kubeconfig, api, "kubelet only", builds, args.steps, slowest_pace(measured)
            )
            alone.round = round_
            measured.append(alone)
            print(_common.table(HEADERS, rows_of([alone], idle)).splitlines()[-1], flush=True)
            runs += measured
    api.close()
    return (
        idle_line,
        _common.table(HEADERS, rows_of(runs, idle)),
        summary(runs, idle),
        breakdown(runs, args.top),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", default="1,10,30,50,100", help="concurrent builds")
    parser.add_argument("--steps", type=int, default=3, help="echo steps per build")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle measured")
    parser.add_argument("--top", type=int, default=4, help="breakdown entries per family")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds per concurrency (medians are shown)"
    )
    parser.add_argument(
        "--runtimes",
        default="shared,pods-per-build,baseline",
        help=f"comma-separated, of: {', '.join(CHOICES)}",
    )
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    unknown = set(args.runtimes.split(",")) - set(CHOICES)
    if unknown:
        parser.error(f"--runtimes: {', '.join(sorted(unknown))} not among {', '.join(CHOICES)}")
    kubeconfig = _common.require_kubeconfig("cluster")
    assert kubeconfig is not None
    idle_line, result, medians, detail = anyio.run(main_async, args, kubeconfig)
    print()
    print(result)
    print()
    print(medians)
    print()
    print(detail)
    if not args.no_record:
        _common.append_results(
            "server_cost.py",
            "Control-plane cost of concurrent builds on the local cluster (CPU above the "
            "idle rate; 'runtime CPU' = apiserver + etcd above idle minus the kubelet-only "
            f"run's of the same round).\n\n{idle_line}\n\n{result}\n\nMedians over the rounds:\n\n"
            f"{medians}\n\nFrom the apiserver's /metrics:\n\n"
            f"{detail}\n",
        )


if __name__ == "__main__":
    main()
