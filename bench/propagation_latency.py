"""Propagation latency: a container's terminated status at the API server → the
``wait_container`` call waiting for it returns.

Short steps (``sleep 0.05; echo done``), one after the other in each build, each driven
as an executor does: ``run_container``, then ``wait_container``. The short sleep makes
``wait_container`` already wait when the terminated status is written (the script
reports the steps for which that was not so), so the latency is the runtime's, not the
caller's.

Where the clock starts:

- FakeCluster: at the API server's write of the status that shows the step's container
  terminated, taken by an observer hooked first into the fake API server's write path
  (``FakeCluster._server.observers``, a private hook of the fake). That is exactly "the
  change at the API server".
- Local cluster, two proxies (the API server's own write time is not observable from a
  client with sub-second precision: ``finishedAt`` and managedFields times have
  whole seconds):
  1. *watcher*: the arrival of that status on an independent raw pod watch read by a
     separate thread (the official client, no model objects) — the moment the change
     is available to any client; from there to ``wait_container`` returning is the
     runtime's share, comparable to the fake's figure;
  2. *end to end*: the CRI timestamp of the step's last log line (written by the
     container just before it exits, nanoseconds, same machine clock) — includes the
     kubelet noticing the exit (PLEG), its status write, and the API server.

Target (DESIGN.md): p99 < 50 ms on the fake cluster.

    .venv/bin/python bench/propagation_latency.py --target fake
    KUBECONFIG=/var/lib/buildruntime-cluster/admin.kubeconfig \\
        .venv/bin/python bench/propagation_latency.py --target both
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import _common
import anyio

from buildruntime import Build, BuildSpec, Runtime, StepSpec
from buildruntime.images import DEFAULT_PAUSE_IMAGE, same_image
from buildruntime.informer.reflector import ReflectorSettings

STEP_SLEEP = 0.05
"""Each step sleeps this long before it prints and exits, so that ``wait_container``
(called once ``run_container`` returned, as an executor does) is already waiting when the
terminated status is written."""

Key = tuple[str, str]
"""(pod name, container name)"""


def step_terminated(obj: dict[str, Any], placeholder: str) -> list[str]:
    """Names of the containers of ``obj`` whose step image (not the placeholder) has
    terminated."""
    done = []
    for status in (obj.get("status") or {}).get("containerStatuses") or ():
        if not (status.get("state") or {}).get("terminated"):
            continue
        if int(status.get("restartCount") or 0) >= 1 or not same_image(
            status.get("image", ""), placeholder
        ):
            done.append(status["name"])
    return done


def spec_for(build_id: str, steps: int) -> BuildSpec:
    return BuildSpec(
        build_id=build_id,
        steps=[
            StepSpec(name=f"s{i}", image="busybox", commands=[f"sleep {STEP_SLEEP}", "echo done"])
            for i in range(steps)
        ],
    )


async def run_builds(
    rt: Runtime,
    builds: int,
    steps: int,
    at_once: int,
    prefix: str,
    after_step: Callable[[Build, str], Any] | None = None,
) -> tuple[dict[Key, float], dict[Key, float]]:
    """Run ``builds`` builds (``at_once`` concurrently), steps in order; returns the
    perf_counter times at which each step's ``run_container`` and ``wait_container``
    returned."""
    returned: dict[Key, float] = {}
    run_returned: dict[Key, float] = {}
    limiter = anyio.CapacityLimiter(at_once)

    async def one_build(index: int) -> None:
        async with limiter:
            spec = spec_for(f"{prefix}-{index}", steps)
            build = await rt.setup_build(spec)
            await rt.assemble_build(build)
            for step in spec.steps:
                await rt.run_container(build, step.name)
                run_returned[(build.pod_name, step.name)] = time.perf_counter()
                result = await rt.wait_container(build, step.name)
                returned[(build.pod_name, step.name)] = time.perf_counter()
                assert result.exit_code == 0, result
                if after_step is not None:
                    await after_step(build, step.name)
            await rt.remove_build(build)

    async with anyio.create_task_group() as tg:
        for index in range(builds):
            tg.start_soon(one_build, index)
    return run_returned, returned


def summarize(label: str, values_ms: list[float]) -> list[object]:
    return [
        label,
        len(values_ms),
        _common.percentile(values_ms, 50),
        _common.percentile(values_ms, 90),
        _common.percentile(values_ms, 99),
        max(values_ms),
        statistics.fmean(values_ms),
    ]


HEADERS = ["measured from → to wait_container returning", "n", "p50 ms", "p90 ms", "p99 ms"]
HEADERS += ["max ms", "mean ms"]


# -- fake cluster ------------------------------------------------------------------------


async def fake_wave(builds: int, steps: int, at_once: int, wave: int) -> list[float]:
    """One wave: ``builds`` builds on a fresh FakeCluster, ``at_once`` at a time."""
    async with _common.fake_cluster(keep_history=False) as fake:
        written: dict[Key, float] = {}

        def observe(resource: str, kind: str, obj: dict[str, Any], previous: Any) -> None:
            if resource != "pods":
                return
            now = time.perf_counter()
            name = obj["metadata"]["name"]
            for container in step_terminated(obj, DEFAULT_PAUSE_IMAGE):
                written.setdefault((name, container), now)

        server: Any = getattr(fake, "_server", None)
        if server is None or not hasattr(server, "observers"):
            raise SystemExit("this FakeCluster has no write hook (_server.observers)")
        server.observers.insert(0, observe)
        async with Runtime(fake, "bench") as rt:
            run_returned, returned = await run_builds(
                rt, builds, steps, at_once, f"lat{at_once}-{wave}"
            )
    missing = set(returned) - set(written)
    assert not missing, f"no terminated write seen for {sorted(missing)[:3]}"
    early = sum(written[key] < run_returned[key] for key in returned)
    if early:
        print(f"  {early} of {len(returned)} steps ended before run_container returned")
    return [(returned[key] - written[key]) * 1000 for key in returned]


async def fake_latencies(builds: int, steps: int, at_once: int) -> list[float]:
    """``builds`` builds in waves of ``at_once`` concurrent builds, each wave on a fresh
    FakeCluster: the fake keeps every Event (as an API server does for an hour) and
    lists them by scanning on the shared event loop, so one fake running wave after
    wave would slow the loop down for reasons that are not the runtime's."""
    values: list[float] = []
    for wave in range(-(-builds // at_once)):
        values += await fake_wave(min(at_once, builds - wave * at_once), steps, at_once, wave)
    return values


# -- local cluster -----------------------------------------------------------------------


class WatchObserver(threading.Thread):
    """An independent raw pod watch on the namespace, in its own thread: records when
    each step's terminated status arrives (perf_counter, at the line's arrival)."""

    def __init__(self, kubeconfig: str, namespace: str, placeholder: str) -> None:
        super().__init__(daemon=True)
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.placeholder = placeholder
        self.seen: dict[Key, float] = {}
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._response: Any = None

    def run(self) -> None:
        import kubernetes.watch.watch
        from kubernetes import client, config

        iter_resp_lines: Any = kubernetes.watch.watch.iter_resp_lines

        try:
            new_client: Any = config.new_client_from_config
            api: Any = new_client(config_file=self.kubeconfig)
            core: Any = client.CoreV1Api(api)
            self._response = core.list_namespaced_pod(
                self.namespace, watch=True, timeout_seconds=3600, _preload_content=False
            )
            self.ready.set()
            for line in iter_resp_lines(self._response):
                now = time.perf_counter()
                if not line:
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                name = (obj.get("metadata") or {}).get("name", "")
                for container in step_terminated(obj, self.placeholder):
                    self.seen.setdefault((name, container), now)
        except BaseException as error:  # reported by the main thread
            self.error = error
            self.ready.set()

    def stop(self) -> None:
        response = self._response
        if response is not None:
            try:
                response.shutdown()
            except Exception:
                response.close()


def _log_time(raw: bytes) -> float:
    """Epoch seconds of a kubelet log line's RFC 3339 (nanosecond) timestamp."""
    stamp = raw.split(b" ", 1)[0].decode()
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(whole + "+00:00").timestamp()
    return seconds + (float("0." + fraction) if fraction else 0.0)


async def cluster_latencies(
    kubeconfig: str, builds: int, steps: int
) -> tuple[list[float], list[float]]:
    with _common.fresh_namespace(kubeconfig, "bench-lat") as ns:
        observer = WatchObserver(kubeconfig, ns.name, _common.LOCAL_PAUSE_IMAGE)
        observer.start()
        await anyio.to_thread.run_sync(observer.ready.wait)
        if observer.error is not None:
            raise observer.error
        cluster = _common.kube_cluster(kubeconfig)
        last_line: dict[Key, float] = {}
        # perf_counter and the wall clock, side by side, to place log timestamps.
        offset = time.time() - time.perf_counter()

        async def read_last_line(build: Build, step: str) -> None:
            data = b""
            async with cluster.stream_logs(
                ns.name, build.pod_name, step, follow=False, timestamps=True
            ) as chunks:
                async for chunk in chunks:
                    data += chunk
            lines = [line for line in data.split(b"\n") if line]
            last_line[(build.pod_name, step)] = _log_time(lines[-1]) - offset

        try:
            async with Runtime(
                cluster,
                ns.name,
                pause_image=_common.LOCAL_PAUSE_IMAGE,
                reflector=ReflectorSettings(),
            ) as rt:
                _, returned = await run_builds(rt, builds, steps, 1, "lat", read_last_line)
        finally:
            observer.stop()
            await cluster.aclose()
    from_watcher = [
        (returned[key] - observer.seen[key]) * 1000 for key in returned if key in observer.seen
    ]
    from_log = [(returned[key] - last_line[key]) * 1000 for key in returned if key in last_line]
    missing = len(returned) - len(from_watcher)
    if missing:
        print(f"warning: the observer watch missed {missing} changes", file=sys.stderr)
    return from_watcher, from_log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("fake", "cluster", "both"), default="both")
    parser.add_argument("--changes", type=int, default=1_000, help="steps measured on the fake")
    parser.add_argument("--steps", type=int, default=10, help="steps per build")
    parser.add_argument(
        "--at-once", default="1,10,50", help="builds running concurrently on the fake (list)"
    )
    parser.add_argument("--cluster-changes", type=int, default=50)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    kubeconfig = _common.require_kubeconfig(args.target)

    rows: list[list[object]] = []
    fake_p99: dict[int, float] = {}
    if args.target in ("fake", "both"):
        builds = max(1, args.changes // args.steps)
        for at_once in (int(n) for n in args.at_once.split(",")):
            values = anyio.run(fake_latencies, builds, args.steps, at_once)
            rows.append(
                summarize(f"fake: status write (API server), {at_once} build(s) at once", values)
            )
            fake_p99[at_once] = _common.percentile(values, 99)
            print(_common.table(HEADERS, [rows[-1]]), flush=True)
    if args.target in ("cluster", "both"):
        assert kubeconfig is not None
        builds = max(1, args.cluster_changes // args.steps)
        from_watcher, from_log = anyio.run(cluster_latencies, kubeconfig, builds, args.steps)
        rows.append(summarize("cluster: arrival on an independent watch", from_watcher))
        rows.append(summarize("cluster: step's last log line (container exit)", from_log))
    result = _common.table(HEADERS, rows)
    print()
    print(result)
    verdict = ""
    if fake_p99:
        verdict = _common.table(
            ["target", "builds at once", "p99", "met"],
            [
                [
                    "p99 < 50 ms on the fake",
                    n,
                    f"{p:.1f} ms",
                    "yes" if p < 50 else f"no ({p / 50:.2f}x the target)",
                ]
                for n, p in fake_p99.items()
            ],
        )
        print()
        print(verdict)
    if not args.no_record:
        _common.append_results(
            "propagation_latency.py",
            f"Steps of {STEP_SLEEP} s, {args.steps} per build, steps in order; "
            "run_container then wait_container.\n\n"
            f"{result}\n\n{verdict}\n",
        )


if __name__ == "__main__":
    main()
