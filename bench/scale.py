"""Scale: many concurrent builds on one worker process, on FakeCluster.

B builds run at once, each driven as a CI executor does (assemble, then each of its S
steps run → tail → wait, then remove); every step prints 100 lines (``seq 1 100``).
Each configuration runs in a fresh Python process. Figures, per build:

- CPU seconds (``resource.getrusage``): the process itself ("self") and its children
  (the step processes the fake kubelet runs);
- peak RSS (``ru_maxrss``) and its growth over the RSS before the builds started;
- what the runtime holds: the size of every object reachable from the runtime's build
  states (``gc.get_referents`` from ``Runtime._builds`` and its event topic, not
  entering the cluster, tasks, frames, modules or classes), half-way through (half of
  all steps done) and once every build has been removed;
- with ``--tracemalloc``, the peak of Python allocations (a second run of each
  configuration under tracemalloc, about 6x slower).

FakeCluster (the API server and the kubelet) runs inside the same process and on the
same event loop as the runtime, so "self" CPU and RSS are the runtime's and the fake's
together; ``--profile`` (pyinstrument, the largest configuration) splits the time
between buildruntime, the fake and the rest (event loop, anyio, stdlib) by attributing
every sample to the innermost buildruntime frame on its stack.

Target (DESIGN.md): 200 concurrent builds × 10 steps on one worker process; report CPU
seconds and peak memory per build.

    .venv/bin/python bench/scale.py                    # 50/100/200 builds × 1/10 steps
    .venv/bin/python bench/scale.py --builds 200 --steps 10 --profile --tracemalloc
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
import types
from collections.abc import Iterable
from typing import Any

import _common
import anyio

from buildruntime import BuildSpec, Runtime, StepSpec

LINES = 100

_OPAQUE = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
    types.FrameType,
    types.CoroutineType,
    types.GeneratorType,
    types.AsyncGeneratorType,
    asyncio.Future,  # tasks too
    asyncio.AbstractEventLoop,
)


def reachable_size(roots: Iterable[Any], stop: Iterable[Any]) -> tuple[int, int]:
    """(bytes, objects) of everything reachable from ``roots``, not entering ``stop``
    objects, module namespaces, or code, frames, tasks and the event loop."""
    seen = {id(obj) for obj in stop}
    seen.update(id(module.__dict__) for module in list(sys.modules.values()) if module)
    total = count = 0
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, _OPAQUE):
            continue
        total += sys.getsizeof(obj)
        count += 1
        stack.extend(gc.get_referents(obj))
    return total, count


def _rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


async def drive(builds: int, steps: int, measure: bool = True) -> dict[str, Any]:
    from buildruntime.testing import FakeCluster

    lines_read = 0
    failures = 0
    steps_done = 0
    half = max(1, builds * steps // 2)
    held: dict[str, float] = {"walk_cpu": 0.0, "walk_wall": 0.0}

    def measure_held(label: str, rt: Runtime, fake: Any) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        size, count = reachable_size([rt._builds, rt._events], [fake])
        held[label] = size
        held[label + "_objects"] = count
        held["walk_cpu"] += time.process_time() - cpu
        held["walk_wall"] += time.perf_counter() - wall

    async def one_build(rt: Runtime, fake: Any, index: int) -> None:
        nonlocal lines_read, failures, steps_done
        spec = BuildSpec(
            build_id=f"scale-{index}",
            steps=[
                StepSpec(name=f"s{i}", image="busybox", commands=[f"seq 1 {LINES}"])
                for i in range(steps)
            ],
        )
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        for step in spec.steps:
            await rt.run_container(build, step.name)
            async for _ in rt.tail_container(build, step.name):
                lines_read += 1
            result = await rt.wait_container(build, step.name)
            failures += result.exit_code != 0
            steps_done += 1
            if measure and steps_done == half:
                measure_held("halfway", rt, fake)
        await rt.remove_build(build)

    async with FakeCluster(images={"busybox"}, keep_history=False) as fake:
        async with Runtime(fake, "bench", schedule_timeout=600, delete_timeout=600) as rt:
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for index in range(builds):
                    tg.start_soon(one_build, rt, fake, index)
            elapsed = time.perf_counter() - started - held["walk_wall"]
            if measure:
                gc.collect()
                measure_held("after_removal", rt, fake)
        # The builds' requests: the worker's Lease (created, renewed, deleted) is the
        # worker's, whatever the number of builds.
        requests = sum(1 for r in fake.requests if r.resource != "leases")
    assert lines_read == builds * steps * LINES, lines_read
    assert failures == 0, failures
    return {"wall": elapsed, "requests": requests, **held}


def worker(builds: int, steps: int, trace: bool) -> dict[str, Any]:
    gc.collect()
    rss_before = _rss_kib()
    if trace:
        tracemalloc.start()
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = anyio.run(drive, builds, steps)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if trace:
        out["traced_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    cpu_self = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    out["cpu_self"] = cpu_self - out["walk_cpu"]
    out["cpu_children"] = (children1.ru_utime + children1.ru_stime) - (
        children0.ru_utime + children0.ru_stime
    )
    out["maxrss_kib"] = self1.ru_maxrss
    out["rss_before_kib"] = rss_before
    return out


def run_config(builds: int, steps: int, trace: bool) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--worker", "--builds", str(builds), "--steps", str(steps)]
    if trace:
        argv.append("--tracemalloc")
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# -- profiling ---------------------------------------------------------------------------

FAKE = "FakeCluster (buildruntime/testing)"
RUNTIME = "buildruntime (the runtime)"


def _category(path: str) -> str | None:
    if "/buildruntime/testing/" in path:
        return FAKE
    if "/buildruntime/" in path:
        return RUNTIME
    return None


def attribute(frame: Any, owner: str, totals: dict[str, float]) -> None:
    """Add each frame's own time to the innermost buildruntime frame above it."""
    mine = _category(frame.file_path or "") or owner
    own = frame.time - sum(child.time for child in frame.children)
    totals[mine] = totals.get(mine, 0.0) + max(own, 0.0)
    for child in frame.children:
        attribute(child, mine, totals)


def profile(builds: int, steps: int) -> str:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001)
    profiler.start()
    out = anyio.run(drive, builds, steps, False)
    profiler.stop()
    _common.PROFILES_DIR.mkdir(exist_ok=True)
    path = _common.PROFILES_DIR / f"scale-{builds}x{steps}.txt"
    path.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    session = profiler.last_session
    assert session is not None
    root = session.root_frame()
    totals: dict[str, float] = {}
    if root is not None:
        attribute(root, "other (event loop, anyio, stdlib)", totals)
    whole = sum(totals.values()) or 1.0
    rows = [
        [name, seconds, 100 * seconds / whole]
        for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1])
    ]
    text = _common.table(["where the main thread's time went", "seconds", "%"], rows)
    print(f"profile: {path} (wall {out['wall']:.1f} s under the profiler)")
    return text


# -- main ----------------------------------------------------------------------------------

HEADERS = [
    "builds",
    "steps",
    "wall s",
    "CPU self s",
    "CPU children s",
    "self CPU ms/build",
    "children CPU ms/build",
    "peak RSS MiB",
    "RSS growth KiB/build",
    "runtime holds KiB/build half-way",
    "after removal",
    "tracemalloc peak KiB/build",
    "requests/build",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", default="50,100,200", help="concurrent builds (list)")
    parser.add_argument("--steps", default="1,10", help="steps per build (list)")
    parser.add_argument(
        "--tracemalloc", action="store_true", help="also a traced run of each config (slow)"
    )
    parser.add_argument("--profile", action="store_true", help="profile the largest config")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(int(args.builds), int(args.steps), args.tracemalloc)))
        return

    rows: list[list[object]] = []
    print(_common.table(HEADERS, []).splitlines()[0], flush=True)
    for steps in (int(s) for s in args.steps.split(",")):
        for builds in (int(b) for b in args.builds.split(",")):
            plain = run_config(builds, steps, False)
            traced = run_config(builds, steps, True) if args.tracemalloc else None
            rows.append(
                [
                    builds,
                    steps,
                    plain["wall"],
                    plain["cpu_self"],
                    plain["cpu_children"],
                    1000 * plain["cpu_self"] / builds,
                    1000 * plain["cpu_children"] / builds,
                    plain["maxrss_kib"] / 1024,
                    (plain["maxrss_kib"] - plain["rss_before_kib"]) / builds,
                    plain["halfway"] / 1024 / builds,
                    plain["after_removal"] / 1024 / builds,
                    "-" if traced is None else traced["traced_peak"] / 1024 / builds,
                    plain["requests"] / builds,
                ]
            )
            print(_common.table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
    result = _common.table(HEADERS, rows)
    print()
    print(result)
    split = ""
    if args.profile:
        biggest_builds = max(int(b) for b in args.builds.split(","))
        biggest_steps = max(int(s) for s in args.steps.split(","))
        split = profile(biggest_builds, biggest_steps)
        print()
        print(split)
    if not args.no_record:
        body = (
            "Concurrent builds on FakeCluster in one process (the fake's API server and "
            f"kubelet included), each step printing {LINES} lines; per-build figures. "
            "'runtime holds' is the size of what is reachable from the runtime's build "
            "states (not the fake), half-way through the run and after every build "
            "was removed.\n\n"
            f"{result}\n"
        )
        if split:
            body += f"\nProfile of the largest configuration (pyinstrument):\n\n{split}\n"
        _common.append_results("scale.py", body)


if __name__ == "__main__":
    main()
