"""API requests per build: buildruntime versus a per-step runtime, for N steps.

One build of N steps, driven as a CI executor does: setup → assemble → for each step
run, tail (to the last line), wait, inspect → remove. Both runtimes talk to the
cluster through the same counting wrapper (``_common.CountingCluster``), so every
request either of them sends is counted in the same place. The peer is
``bench/baseline_runtime.py`` (per-step watches and GETs, a log request retried until
bytes appear: the style of Vela's Kubernetes runtime).

Target (DESIGN.md): buildruntime sends at most 1 create + 2 lists + 2 watches + N
patches + N log streams + 1 delete = 6 + 2N, and its watch count does not grow with N.
It sends 5 + 2N: its events watch starts at the pod's creation with no list (no Event can
name the pod's uid before it exists).

    .venv/bin/python bench/requests_per_build.py --target fake
    KUBECONFIG=/var/lib/buildruntime-cluster/admin.kubeconfig \\
        .venv/bin/python bench/requests_per_build.py --target both --cluster-steps 1,10,50
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

import _common
import anyio
from baseline_runtime import BaselineRuntime

from buildruntime import BuildSpec, Runtime, StepSpec
from buildruntime.images import DEFAULT_PAUSE_IMAGE

VERBS = ("list", "watch", "get", "create", "patch", "log", "delete")


def build_spec(build_id: str, steps: int) -> BuildSpec:
    return BuildSpec(
        build_id=build_id,
        steps=[
            StepSpec(name=f"s{i}", image="busybox", commands=[f"echo step {i} of {build_id}"])
            for i in range(steps)
        ],
    )


async def drive(runtime: Any, spec: BuildSpec) -> tuple[list[int | None], int]:
    """What a CI executor does, the same for both runtimes; returns the exit codes and
    the number of steps whose tail did not give exactly the line the step printed."""
    build = await runtime.setup_build(spec)
    await runtime.assemble_build(build)
    codes: list[int | None] = []
    wrong_logs = 0
    for step in spec.steps:
        await runtime.run_container(build, step.name)
        lines = [line async for line in runtime.tail_container(build, step.name)]
        if lines != [f"step {step.name[1:]} of {spec.build_id}".encode()]:
            wrong_logs += 1
            print(f"  {type(runtime).__name__} {step.name}: the tail gave {lines[:2]!r}")
        await runtime.wait_container(build, step.name)
        result = await runtime.inspect_container(build, step.name)
        codes.append(result.exit_code)
    await runtime.remove_build(build)
    return codes, wrong_logs


async def measure(
    which: str, cluster: Any, namespace: str, steps: int, pause_image: str
) -> tuple[Counter[str], float]:
    counting = _common.CountingCluster(cluster)
    spec = build_spec(f"req-{which[:2]}-{steps}-{int(time.time() * 1000) % 100000}", steps)
    started = time.perf_counter()
    if which == "buildruntime":
        async with Runtime(counting, namespace, pause_image=pause_image) as runtime:
            codes, wrong_logs = await drive(runtime, spec)
    else:
        baseline = BaselineRuntime(counting, namespace, pause_image=pause_image)
        codes, wrong_logs = await drive(baseline, spec)
    elapsed = time.perf_counter() - started
    assert codes == [0] * steps, codes
    counts = counting.counts()
    counts["wrong logs"] = wrong_logs
    return counts, elapsed


async def measure_on(
    target: str, which: str, steps: int, kubeconfig: str | None
) -> tuple[Counter[str], float]:
    if target == "fake":
        async with _common.fake_cluster(keep_history=False) as fake:
            return await measure(which, fake, "bench", steps, DEFAULT_PAUSE_IMAGE)
    assert kubeconfig is not None
    with _common.fresh_namespace(kubeconfig, "bench-req") as ns:
        cluster = _common.kube_cluster(kubeconfig)
        try:
            return await measure(which, cluster, ns.name, steps, _common.LOCAL_PAUSE_IMAGE)
        finally:
            await cluster.aclose()


async def run_target(
    target: str, steps: list[int], kubeconfig: str | None, sequential: bool
) -> list[list[object]]:
    """Both runtimes for each N; side by side (each with its own cluster or namespace
    and its own counter) unless ``sequential``."""
    rows: list[list[object]] = []
    for n in steps:
        results: dict[str, tuple[Counter[str], float]] = {}

        async def one(which: str, n: int = n, results: dict[str, Any] = results) -> None:
            results[which] = await measure_on(target, which, n, kubeconfig)

        if sequential:
            for which in RUNTIMES:
                await one(which)
        else:
            async with anyio.create_task_group() as tg:
                for which in RUNTIMES:
                    tg.start_soon(one, which)
        for which in RUNTIMES:
            counts, elapsed = results[which]
            expected = 5 + 2 * n if which == "buildruntime" else ""
            rows.append(
                [
                    target,
                    which,
                    n,
                    counts["total"],
                    expected,
                    *(counts[verb] for verb in VERBS),
                    counts["wrong logs"],
                    elapsed,
                ]
            )
            print(_common.table(HEADERS, [rows[-1]]).splitlines()[-1], flush=True)
    return rows


RUNTIMES = ("buildruntime", "baseline")
HEADERS = [
    "target",
    "runtime",
    "steps",
    "requests",
    "5+2N",
    *VERBS,
    "steps with wrong logs",
    "seconds",
]


def verdicts(rows: list[list[object]]) -> str:
    out = []
    for target in sorted({str(r[0]) for r in rows}):
        ours = [r for r in rows if r[0] == target and r[1] == "buildruntime"]
        theirs = {r[2]: r for r in rows if r[0] == target and r[1] == "baseline"}
        exact = all(r[3] == r[4] for r in ours)
        watches = {str(r[5 + VERBS.index("watch")]) for r in ours}
        gets = sum(int(str(r[5 + VERBS.index("get")])) for r in ours)
        largest = max(ours, key=lambda r: int(str(r[2])))
        peer = theirs.get(largest[2])
        ratio = (
            f"; at N={largest[2]}: {largest[3]} vs the baseline's {peer[3]} "
            f"({int(str(peer[3])) / int(str(largest[3])):.1f}x fewer), watches "
            f"{largest[5 + VERBS.index('watch')]} vs {peer[5 + VERBS.index('watch')]}"
            if peer
            else ""
        )
        out.append(
            [
                target,
                "at most 6 + 2N requests (5 + 2N exactly), watches flat in N, 0 GETs",
                "met" if exact and len(watches) == 1 and gets == 0 else "NOT met",
                f"exact for every N: {exact}; watches per build: "
                f"{sorted(watches)}; GETs: {gets}{ratio}; steps with wrong logs: "
                f"{sum(int(str(r[-2])) for r in ours)} (baseline: "
                f"{sum(int(str(r[-2])) for r in theirs.values())})",
            ]
        )
    return _common.table(["target", "target (DESIGN.md)", "result", "detail"], out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("fake", "cluster", "both"), default="both")
    parser.add_argument("--steps", default="1,10,50,100", help="step counts on the fake")
    parser.add_argument(
        "--cluster-steps",
        default="1,10,50",
        help="step counts on the real cluster (N=100 adds about 4 minutes)",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="run the two runtimes one after the other (default: side by side)",
    )
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    kubeconfig = _common.require_kubeconfig(args.target)
    fake_steps = [int(s) for s in args.steps.split(",")]
    cluster_steps = [int(s) for s in args.cluster_steps.split(",")]

    rows: list[list[object]] = []
    print(_common.table(HEADERS, []).splitlines()[0])
    if args.target in ("fake", "both"):
        rows += anyio.run(run_target, "fake", fake_steps, None, args.sequential)
    if args.target in ("cluster", "both"):
        rows += anyio.run(run_target, "cluster", cluster_steps, kubeconfig, args.sequential)
    result = _common.table(HEADERS, rows)
    summary = verdicts(rows)
    print()
    print(result)
    print()
    print(summary)
    if not args.no_record:
        _common.append_results(
            "requests_per_build.py",
            "Requests per build (setup → assemble → run/tail/wait/inspect per step → remove), "
            "counted by the same wrapper around the cluster for both runtimes"
            f"{' (one after the other)' if args.sequential else ' (run side by side)'}.\n\n"
            f"{result}\n\n{summary}\n",
        )


if __name__ == "__main__":
    main()
