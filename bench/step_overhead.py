"""Step overhead on the local cluster, broken down: one ``echo`` step, from the patch
that swaps the placeholder for the step image to ``wait_container`` returning.

Each step of one build is driven as an executor does (``run_container``, then
``wait_container``), one after the other. Every milestone is placed on one clock (the
machine's wall clock; the client's own moments are taken with ``perf_counter`` and
shifted by the offset measured at the start):

- client: the patch sent and answered (the cluster port's ``patch_pod``, wrapped), the
  step's terminated status arriving on an independent raw pod watch (a thread of its
  own), the same status reaching the runtime's cache (its per-step view), and
  ``wait_container`` returning;
- kubelet (its log; the script raises its verbosity to 3 through the kubelet's
  ``/debug/flags/v`` for the run and puts the old value back, no restart): the pod
  update seen (``SyncLoop UPDATE``), the placeholder's kill, the PLEG events for the
  step container (``ContainerStarted``, ``ContainerDied``) and the status patch that
  follows the exit;
- containerd (its log, info level): the placeholder's exit, the step container's
  create and start (request and reply), and its exit (``exited_at`` from the shim).

The difference between the step's exit and the kubelet's ``ContainerDied`` is the
kubelet noticing the exit: with the generic PLEG that is its relist (every second);
with the EventedPLEG it is the CRI container event.

``--builds N`` runs N such builds at the same time (each its own pod, steps one after the
other within a build), and ``--tail`` reads each step's log as an executor does (between
``run_container`` and ``wait_container``), so that the stages of a step under
concurrency can be compared between the runtime's modes (``--pod-watch shared`` or
``per-build``).

    KUBECONFIG=/var/lib/buildruntime-cluster/admin.kubeconfig \\
        .venv/bin/python bench/step_overhead.py --steps 20
    KUBECONFIG=... .venv/bin/python bench/step_overhead.py --builds 10 --steps 5 --tail \\
        --pod-watch per-build
"""

from __future__ import annotations

import argparse
import json
import re
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _common
import anyio

from buildruntime import Build, BuildSpec, Runtime, StepSpec
from buildruntime.images import same_image
from buildruntime.informer.reflector import ReflectorSettings

STATE = Path("/var/lib/buildruntime-cluster")
LOGS = STATE / "logs"
PKI = STATE / "pki"
KUBELET = "https://127.0.0.1:10250"
KUBELET_VERBOSITY = 3
"""``SyncLoop UPDATE``, the kill and the PLEG events are logged at 2, the status patch
at 3."""


# -- the kubelet's verbosity --------------------------------------------------------------


def kubelet_verbosity() -> int:
    """The kubelet's current ``-v``, read from its command line (``up`` passes it)."""
    pid = (Path("/run/buildruntime-cluster/pids/kubelet.pid")).read_text().strip()
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    for arg in argv:
        if arg.startswith(b"--v="):
            return int(arg[4:])
    return 0


def set_kubelet_verbosity(level: int) -> None:
    context = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    context.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
    request = urllib.request.Request(
        f"{KUBELET}/debug/flags/v", data=str(level).encode(), method="PUT"
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        response.read()


# -- the client side ------------------------------------------------------------------------


@dataclass
class Step:
    """The moments of one step, epoch seconds."""

    name: str
    pod: str = ""
    called: float = 0.0
    """``run_container`` called."""
    patch_sent: float = 0.0
    patch_answered: float = 0.0
    cache_running: float | None = None
    cache_terminated: float | None = None
    tail_ended: float | None = None
    waited: float = 0.0
    watch_terminated: float | None = None
    container_ids: list[str] = field(default_factory=list)


class WatchObserver(threading.Thread):
    """A raw pod watch on the namespace in a thread of its own: when each step's
    terminated status (step image, not the placeholder) arrives, and every container id
    a step has had (the placeholder's first, then the step's); keyed by pod and step."""

    def __init__(self, kubeconfig: str, namespace: str, placeholder: str, clock: Clock) -> None:
        super().__init__(daemon=True)
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.placeholder = placeholder
        self.clock = clock
        self.terminated: dict[tuple[str, str], float] = {}
        self.ids: dict[tuple[str, str], list[str]] = {}
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._response: Any = None

    def run(self) -> None:
        import kubernetes.watch.watch
        from kubernetes import client, config

        iter_resp_lines: Any = kubernetes.watch.watch.iter_resp_lines
        try:
            new_client: Any = config.new_client_from_config
            core: Any = client.CoreV1Api(new_client(config_file=self.kubeconfig))
            self._response = core.list_namespaced_pod(
                self.namespace, watch=True, timeout_seconds=3600, _preload_content=False
            )
            self.ready.set()
            for line in iter_resp_lines(self._response):
                now = self.clock.now()
                if line:
                    self._observe(json.loads(line).get("object") or {}, now)
        except BaseException as error:  # reported by the main thread
            self.error = error
            self.ready.set()

    def _observe(self, pod: dict[str, Any], now: float) -> None:
        pod_name = (pod.get("metadata") or {}).get("name", "")
        for status in (pod.get("status") or {}).get("containerStatuses") or ():
            name = (pod_name, status["name"])
            ids = self.ids.setdefault(name, [])
            for state in (status.get("lastState") or {}, status.get("state") or {}):
                cid = (state.get("terminated") or {}).get("containerID", "")
                if cid and cid not in ids:
                    ids.append(cid)
            cid = status.get("containerID", "")
            if cid and cid not in ids:
                ids.append(cid)
            step_image = int(status.get("restartCount") or 0) >= 1 or not same_image(
                status.get("image", ""), self.placeholder
            )
            if step_image and (status.get("state") or {}).get("terminated"):
                self.terminated.setdefault(name, now)

    def stop(self) -> None:
        if self._response is not None:
            try:
                self._response.shutdown()
            except Exception:
                self._response.close()


class Clock:
    """Wall-clock seconds read through ``perf_counter`` (no jumps), offset once."""

    def __init__(self) -> None:
        self.offset = time.time() - time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() + self.offset


@dataclass
class Options:
    """What to run."""

    steps: int
    builds: int = 1
    warm_up: int = 1
    """Each build's first steps, run but not reported."""
    tail: bool = False
    pod_watch: str = "shared"
    pause: float = 0.3
    """Seconds between a step's end and the next step's patch (0 under concurrency, as an
    executor does)."""


async def run_steps(
    kubeconfig: str, namespace: str, options: Options, clock: Clock
) -> tuple[list[Step], WatchObserver]:
    """``options.builds`` builds at once, each running its steps one after the other;
    returns the measured steps of all builds (each build's first ``options.warm_up``
    steps are run but not reported)."""
    observer = WatchObserver(kubeconfig, namespace, _common.LOCAL_PAUSE_IMAGE, clock)
    observer.start()
    await anyio.to_thread.run_sync(observer.ready.wait)
    if observer.error is not None:
        raise observer.error
    cluster = _common.kube_cluster(kubeconfig)
    current: dict[str, Step] = {}
    """The step each pod's next patch is for."""
    inner_patch: Callable[..., Any] = cluster.patch_pod

    async def timed_patch(namespace: str, name: str, patch: Any) -> Any:
        step = current[name]
        step.patch_sent = clock.now()
        answer = await inner_patch(namespace, name, patch)
        step.patch_answered = clock.now()
        return answer

    cluster.patch_pod = timed_patch
    measured: list[Step] = []
    try:
        async with Runtime(
            cluster,
            namespace,
            pause_image=_common.LOCAL_PAUSE_IMAGE,
            reflector=ReflectorSettings(),
            shared_pod_watch=options.pod_watch == "shared",
        ) as rt:

            async def one_build(index: int) -> None:
                spec = BuildSpec(
                    build_id=f"overhead-{index}",
                    steps=[
                        StepSpec(name=f"s{i}", image="busybox", commands=["echo done"])
                        for i in range(options.warm_up + options.steps)
                    ],
                )
                steps = [Step(each.name, pod=spec.pod_name) for each in spec.steps]
                build: Build = await rt.setup_build(spec)
                await rt.assemble_build(build)
                view: Any = rt._controller(build).view  # the runtime's cache, per step

                async def follow(step: Step) -> None:
                    async for state in view.states[step.name].follow(from_latest=True):
                        container = state.step_container
                        if container is None:
                            continue
                        if container.phase in ("running", "terminated") and not step.cache_running:
                            step.cache_running = clock.now()
                        if container.phase == "terminated":
                            step.cache_terminated = clock.now()
                            return

                for step in steps:
                    current[spec.pod_name] = step
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(follow, step)
                        step.called = clock.now()
                        await rt.run_container(build, step.name)
                        if options.tail:
                            lines = [line async for line in rt.tail_container(build, step.name)]
                            step.tail_ended = clock.now()
                            assert lines == [b"done"], lines
                        result = await rt.wait_container(build, step.name)
                        step.waited = clock.now()
                        assert result.exit_code == 0, result
                    if options.pause:
                        await anyio.sleep(options.pause)  # the next patch apart from the tail
                await rt.remove_build(build)
                measured.extend(steps[options.warm_up :])

            async with anyio.create_task_group() as tg:
                for index in range(options.builds):
                    tg.start_soon(one_build, index)
    finally:
        observer.stop()
        await cluster.aclose()
    for step in measured:
        key = (step.pod, step.name)
        step.watch_terminated = observer.terminated.get(key)
        step.container_ids = [cid.partition("://")[2] for cid in observer.ids.get(key, [])]
    return measured, observer


# -- the node side ---------------------------------------------------------------------------


def read_from(path: Path, offset: int) -> list[str]:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").splitlines()


_KLOG = re.compile(r"^[IWE](\d\d)(\d\d) (\d\d:\d\d:\d\d\.\d+)\s")
_CTRD = re.compile(r'^time="([^"]+)"')


def klog_time(line: str, year: int) -> float | None:
    m = _KLOG.match(line)
    if not m:
        return None
    stamp = f"{year}-{m.group(1)}-{m.group(2)}T{m.group(3)}+00:00"
    return datetime.fromisoformat(stamp).timestamp()


def containerd_time(line: str) -> float | None:
    m = _CTRD.match(line)
    if not m:
        return None
    whole, _, fraction = m.group(1).rstrip("Z").partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float("0." + (fraction or "0"))


_SANDBOX = re.compile(r'CreateContainer within sandbox \\"([0-9a-f]+)\\"')


def first(lines: list[tuple[float, str]], after: float, *needles: str) -> float | None:
    for at, line in lines:
        if at >= after and all(n in line for n in needles):
            return at
    return None


def node_side(
    steps: list[Step], namespace: str, kubelet_from: int, containerd_from: int
) -> dict[tuple[str, str], dict[str, float | None]]:
    year = datetime.now(UTC).year
    kubelet_lines = [
        (t, line)
        for line in read_from(LOGS / "kubelet.log", kubelet_from)
        if (t := klog_time(line, year)) is not None
    ]
    kubelet_of: dict[str, list[tuple[float, str]]] = {}
    for step in steps:
        if step.pod not in kubelet_of:
            needle = f"{namespace}/{step.pod}"
            kubelet_of[step.pod] = [(t, line) for t, line in kubelet_lines if needle in line]
    ctrd = [
        (t, line)
        for line in read_from(LOGS / "containerd.log", containerd_from)
        if (t := containerd_time(line)) is not None
    ]
    out: dict[tuple[str, str], dict[str, float | None]] = {}
    for step in steps:
        kubelet = kubelet_of[step.pod]
        t0 = step.patch_sent
        row: dict[str, float | None] = {}
        placeholder_id, step_id = [*step.container_ids, "", ""][:2]
        row["kubelet: pod update seen (SyncLoop UPDATE)"] = first(kubelet, t0, "SyncLoop UPDATE")
        row["kubelet: placeholder kill starts"] = first(
            kubelet, t0, "Killing container", f'containerName="{step.name}"'
        )
        row["containerd: placeholder exited"] = first(
            ctrd, t0, "received container exit event", f'container_id:\\"{placeholder_id}\\"'
        )
        # The request line names the sandbox and the container's name, not the pod: the
        # sandbox is read from the reply line, which names the new container's id.
        reply = next(
            (line for _, line in ctrd if "returns container id" in line and step_id in line), ""
        )
        sandbox = m.group(1) if (m := _SANDBOX.search(reply)) else "?"
        row["containerd: step CreateContainer request"] = first(
            ctrd, t0, f'sandbox \\"{sandbox}\\" for container name:\\"{step.name}\\" attempt:1"'
        )
        row["containerd: step created"] = first(ctrd, t0, "returns container id", step_id)
        row["containerd: step StartContainer request"] = first(
            ctrd, t0, f'StartContainer for \\"{step_id}\\""'
        )
        row["containerd: step started"] = first(
            ctrd, t0, f'StartContainer for \\"{step_id}\\" returns successfully'
        )
        row["kubelet: PLEG ContainerStarted"] = first(kubelet, t0, "ContainerStarted", step_id)
        exited = first(ctrd, t0, "received container exit event", f'container_id:\\"{step_id}\\"')
        row["containerd: step exited"] = exited
        died = first(kubelet, t0, "ContainerDied", step_id)
        row["kubelet: PLEG ContainerDied"] = died
        row["kubelet: status patch after the exit"] = (
            first(kubelet, died, "Patch status for pod") if died is not None else None
        )
        out[(step.pod, step.name)] = row
    return out


# -- report ----------------------------------------------------------------------------------


Node = dict[tuple[str, str], dict[str, float | None]]
"""The node side's moments, by pod and step."""


def breakdown(steps: list[Step], node: Node) -> list[list[object]]:
    names = list(next(iter(node.values())).keys())
    rows: list[list[object]] = []
    series: dict[str, list[float]] = {}
    for step in steps:
        moments: dict[str, float | None] = {
            "client: patch answered": step.patch_answered,
            **node[(step.pod, step.name)],
            "client: status on an independent watch": step.watch_terminated,
            "client: status in the runtime's cache": step.cache_terminated,
            "client: log stream ended (--tail)": step.tail_ended,
            "client: wait_container returned": step.waited,
        }
        for name, at in moments.items():
            if at is not None:
                series.setdefault(name, []).append((at - step.patch_sent) * 1000)
    order = ["client: patch answered", *names]
    order += ["client: status on an independent watch", "client: status in the runtime's cache"]
    order += ["client: log stream ended (--tail)"]
    order += ["client: wait_container returned"]
    for name in order:
        values = series.get(name, [])
        rows.append(
            [
                name,
                len(values),
                _common.percentile(values, 50) if values else "—",
                _common.percentile(values, 90) if values else "—",
            ]
        )
    return rows


def spans(steps: list[Step], node: Node) -> list[list[object]]:
    """The intervals that say who spends the time, per step then summarized."""

    def span(
        label: str, start: Callable[[Step], float | None], end: Callable[[Step], float | None]
    ) -> list[object]:
        values = [
            (e - s) * 1000
            for step in steps
            if (s := start(step)) is not None and (e := end(step)) is not None
        ]
        return [
            label,
            len(values),
            _common.percentile(values, 50) if values else "—",
            _common.percentile(values, 90) if values else "—",
        ]

    def n(key: str) -> Callable[[Step], float | None]:
        return lambda step: node[(step.pod, step.name)][key]

    return [
        span(
            "buildruntime: run_container called → patch sent",
            lambda s: s.called,
            lambda s: s.patch_sent,
        ),
        span(
            "patch → kubelet sees the update (API server + watch)",
            lambda s: s.patch_sent,
            n("kubelet: pod update seen (SyncLoop UPDATE)"),
        ),
        span(
            "kubelet waits for a PLEG relist newer than the update (update → kill)",
            n("kubelet: pod update seen (SyncLoop UPDATE)"),
            n("kubelet: placeholder kill starts"),
        ),
        span(
            "placeholder kill (kill starts → step created)",
            n("kubelet: placeholder kill starts"),
            n("containerd: step created"),
        ),
        span(
            "step start (StartContainer request → reply)",
            n("containerd: step StartContainer request"),
            n("containerd: step started"),
        ),
        span(
            "step runs (started → exited)",
            n("containerd: step started"),
            n("containerd: step exited"),
        ),
        span(
            "kubelet notices the exit (PLEG: exit → ContainerDied)",
            n("containerd: step exited"),
            n("kubelet: PLEG ContainerDied"),
        ),
        span(
            "status write (ContainerDied → status patch)",
            n("kubelet: PLEG ContainerDied"),
            n("kubelet: status patch after the exit"),
        ),
        span(
            "status patch logged → independent watch",
            n("kubelet: status patch after the exit"),
            lambda s: s.watch_terminated,
        ),
        span(
            "buildruntime: independent watch → runtime's cache",
            lambda s: s.watch_terminated,
            lambda s: s.cache_terminated,
        ),
        span(
            "buildruntime: runtime's cache → log stream ended (--tail)",
            lambda s: s.cache_terminated,
            lambda s: s.tail_ended,
        ),
        span(
            "buildruntime: runtime's cache (or log stream's end) → wait_container returns",
            lambda s: max(s.cache_terminated or 0.0, s.tail_ended or 0.0) or None,
            lambda s: s.waited,
        ),
        span("total: patch → wait_container returns", lambda s: s.patch_sent, lambda s: s.waited),
        span(
            "total: run_container called → wait_container returns",
            lambda s: s.called,
            lambda s: s.waited,
        ),
    ]


def pleg_mode() -> str:
    config = (STATE / "kubelet.yaml").read_text()
    return "EventedPLEG" if re.search(r"EventedPLEG:\s*true", config) else "generic PLEG"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="steps measured per build")
    parser.add_argument("--builds", type=int, default=1, help="builds at the same time")
    parser.add_argument("--tail", action="store_true", help="read each step's log")
    parser.add_argument(
        "--warm-up", type=int, default=1, help="each build's first steps, not reported"
    )
    parser.add_argument("--pod-watch", choices=("shared", "per-build"), default="shared")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    options = Options(
        steps=args.steps,
        builds=args.builds,
        tail=args.tail,
        warm_up=args.warm_up,
        pod_watch=args.pod_watch,
        pause=0.3 if args.builds == 1 else 0.0,
    )
    kubeconfig = _common.require_kubeconfig("cluster")
    assert kubeconfig is not None
    clock = Clock()
    before = kubelet_verbosity()
    kubelet_from = (LOGS / "kubelet.log").stat().st_size
    containerd_from = (LOGS / "containerd.log").stat().st_size
    set_kubelet_verbosity(max(before, KUBELET_VERBOSITY))
    try:
        with _common.fresh_namespace(kubeconfig, "bench-ovh") as ns:
            steps, _ = anyio.run(run_steps, kubeconfig, ns.name, options, clock)
    finally:
        set_kubelet_verbosity(before)
    time.sleep(0.5)  # the last log lines flushed
    node = node_side(steps, ns.name, kubelet_from, containerd_from)
    mode = pleg_mode()
    headers = ["milestone (ms after the patch was sent)", "n", "p50", "p90"]
    first_table = _common.table(headers, breakdown(steps, node))
    second_table = _common.table(["interval", "n", "p50 ms", "p90 ms"], spans(steps, node))
    what = (
        f"{args.steps} `echo` steps of one build, one after the other"
        if args.builds == 1
        else f"{args.builds} builds at once, {args.steps} `echo` steps each"
    )
    what += f" (after {args.warm_up} not reported)"
    what += f"; logs read: {'yes' if args.tail else 'no'}; pods watch: {args.pod_watch}"
    print(f"kubelet: {mode}; {what}\n\n{first_table}\n\n{second_table}")
    if not args.no_record:
        _common.append_results(
            f"step_overhead.py ({mode})",
            f"{what}; kubelet {mode}.\n\n{first_table}\n\n{second_table}\n",
        )


if __name__ == "__main__":
    main()
