"""Logs: throughput of one large step, and completeness under concurrency.

1. Throughput (local cluster only): one step prints 200 MB of 100-byte lines
   (``yes LINE | head -c 200000000``). Read live through ``tail_container`` while
   ``kubectl logs -f`` reads the same container at the same time; then, once it has
   exited, the finished log again with ``kubectl logs -f``, with buildruntime's log
   capture (``LogCapture`` → ``LogBuffer`` → ``follow()``, what ``tail_container``
   reads), and with the adapter's raw byte stream (no line handling: the transport's
   ceiling). Live figures run from the container's first log line (its CRI timestamp)
   to the reader's last byte. The node's own log files of the step (the kubelet
   rotates at ``containerLogMaxSize``; rotated files are gzipped) are read back before
   the pod is removed, and ``tail_container`` is judged against the lines they hold.
2. Completeness: 100 steps at once (10 builds × 10 steps, all steps of a build started
   together), each printing the numbers 1 to 10,000, read through ``tail_container``;
   every line is checked: lost, duplicated, out of order. Plus the DESIGN.md cases: a
   container that lives 0 s, a 1 MB burst, a last line without a newline, byte for byte.
   On FakeCluster and on the local cluster.

Targets (DESIGN.md): 100% of lines, byte for byte; 100 concurrent steps.

    .venv/bin/python bench/logs.py --target fake
    KUBECONFIG=/var/lib/buildruntime-cluster/admin.kubeconfig .venv/bin/python bench/logs.py
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import os
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import _common
import anyio

from buildruntime import Build, BuildSpec, Runtime, StepSpec
from buildruntime.images import DEFAULT_PAUSE_IMAGE
from buildruntime.logs import MISSING_PREFIX, LogBuffer, LogCapture

LINE = ("0123456789abcdef" * 7)[:99]  # 99 bytes + newline = 100 bytes a line
BURST_LINE = "x" * 999


# -- completeness -----------------------------------------------------------------------


def check_numbers(lines: list[bytes], count: int) -> tuple[int, int, int]:
    """(lost, duplicated, out of order) for lines that should be b"1" .. b"count"."""
    seen = Counter(lines)
    expected = {str(i).encode() for i in range(1, count + 1)}
    lost = len(expected - set(seen))
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    duplicated += sum(n for line, n in seen.items() if line not in expected)
    disorder = sum(1 for a, b in itertools.pairwise(lines) if int(b) != int(a) + 1)
    return lost, duplicated, disorder


def _breaks(lines: list[bytes], limit: int = 4) -> str:
    """Where a numbered sequence jumps: "after N came M", the first few."""
    out = []
    for a, b in itertools.pairwise(lines):
        if int(b) != int(a) + 1:
            out.append(f"{int(a)}→{int(b)}")
            if len(out) >= limit:
                break
    return ", ".join(out) or "none"


CASES: dict[str, tuple[list[str], list[bytes]]] = {
    "lives 0 s, one line": (["echo only-line"], [b"only-line"]),
    "1 MB in a burst": (
        [f"yes {BURST_LINE} | head -n 1000"],
        [BURST_LINE.encode()] * 1000,
    ),
    "last line without a newline": (
        ["printf 'first\\nlast-without-newline'"],
        [b"first", b"last-without-newline"],
    ),
    "prints nothing": (["true"], []),
}


async def read_back(cluster: Any, namespace: str, pod: str, container: str) -> list[bytes]:
    """The container's log as the node holds it now (one non-follow read, no
    timestamps), split into lines like ``tail_container`` does."""
    data = b""
    async with cluster.stream_logs(
        namespace, pod, container, follow=False, timestamps=False
    ) as chunks:
        async for chunk in chunks:
            data += chunk
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def missing_from(got: list[bytes], reference: list[bytes]) -> int:
    """Lines of ``reference`` that ``got`` lacks (as multisets)."""
    have = Counter(got)
    return sum(max(0, n - have[line]) for line, n in Counter(reference).items())


async def completeness(
    cluster: Any, namespace: str, pause_image: str, builds: int, steps: int, lines: int
) -> tuple[list[object], list[list[object]]]:
    """Returns (the concurrency row, the per-case rows).

    After each step ends, its log is read back once more from the node (outside the
    measured path) to tell lines the node never recorded from lines the runtime lost.
    """
    results: dict[tuple[str, str], list[bytes]] = {}
    node: dict[tuple[str, str], list[bytes]] = {}

    async def run_step(rt: Runtime, build: Build, step: str) -> None:
        await rt.run_container(build, step)
        results[(build.build_id, step)] = [line async for line in rt.tail_container(build, step)]
        await rt.wait_container(build, step)
        node[(build.build_id, step)] = await read_back(cluster, namespace, build.pod_name, step)

    async def run_build(rt: Runtime, spec: BuildSpec) -> None:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        async with anyio.create_task_group() as tg:
            for step in spec.steps:
                tg.start_soon(run_step, rt, build, step.name)
        await rt.remove_build(build)

    stamp = int(time.time()) % 100000
    specs = [
        BuildSpec(
            build_id=f"logs-{stamp}-{b}",
            steps=[
                StepSpec(name=f"s{s}", image="busybox", commands=[f"seq 1 {lines}"])
                for s in range(steps)
            ],
        )
        for b in range(builds)
    ]
    cases = BuildSpec(
        build_id=f"cases-{stamp}",
        steps=[
            StepSpec(name=f"c{i}", image="busybox", commands=commands)
            for i, (commands, _) in enumerate(CASES.values())
        ],
    )
    started = time.perf_counter()
    async with Runtime(cluster, namespace, pause_image=pause_image, schedule_timeout=300) as rt:
        async with anyio.create_task_group() as tg:
            for spec in specs:
                tg.start_soon(run_build, rt, spec)
        elapsed = time.perf_counter() - started
        await run_build(rt, cases)
    lost = duplicated = disorder = node_lost = runtime_lost = runtime_extra = 0
    short_steps = exact = 0
    for spec in specs:
        for step in spec.steps:
            key = (spec.build_id, step.name)
            got, kept = results[key], node[key]
            a, b, c = check_numbers(got, lines)
            lost, duplicated, disorder = lost + a, duplicated + b, disorder + c
            node_lost += lines - len(kept)
            runtime_lost += missing_from(got, kept)
            runtime_extra += missing_from(kept, got)
            short_steps += len(kept) < lines
            exact += got == kept
            if a or b or c:
                print(
                    f"  {spec.build_id}/{step.name}: {len(got):,} lines read, the node holds "
                    f"{len(kept):,}; lost {a:,}, duplicated {b:,}, out of order {c:,}; "
                    f"last {got[-1:]!r}, breaks: {_breaks(got)}",
                    file=sys.stderr,
                )
    total = builds * steps * lines
    received = sum(len(results[(s.build_id, st.name)]) for s in specs for st in s.steps)
    concurrency = [
        f"{builds} builds × {steps} steps at once",
        builds * steps,
        total,
        total - node_lost,
        short_steps,
        received,
        f"{exact} of {builds * steps}",
        runtime_lost,
        runtime_extra,
        lost,
        duplicated,
        disorder,
        elapsed,
    ]
    case_rows: list[list[object]] = []
    for i, (name, (_, expected)) in enumerate(CASES.items()):
        got = results[(cases.build_id, f"c{i}")]
        kept = node[(cases.build_id, f"c{i}")]
        case_rows.append(
            [
                name,
                len(expected),
                len(got),
                sum(map(len, expected)),
                sum(map(len, got)),
                "yes" if got == expected else "NO",
                "yes" if kept == expected else "NO",
            ]
        )
    return concurrency, case_rows


CONCURRENCY_HEADERS = [
    "target",
    "shape",
    "steps",
    "lines printed",
    "lines the node kept",
    "steps cut short by the node",
    "lines tail delivered",
    "steps where tail = the node's log, byte for byte",
    "lost by buildruntime",
    "added by buildruntime",
    "lost in all (vs printed)",
    "duplicated (vs printed)",
    "out of order (vs printed)",
    "seconds",
]
CASE_HEADERS = ["target", "case", "lines expected", "lines read", "bytes expected"]
CASE_HEADERS += ["bytes read", "byte for byte", "the node's log byte for byte"]


# -- throughput (local cluster) --------------------------------------------------------


def _stamp(raw: bytes) -> float:
    """Epoch seconds of a kubelet log timestamp (RFC 3339, nanoseconds)."""
    whole, _, fraction = raw.decode().rstrip("Z").partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float("0." + (fraction or "0"))


async def _read_process(argv: list[str]) -> tuple[int, int, float]:
    """Run ``argv``; (bytes, newlines, wall-clock end) of its stdout."""
    nbytes = newlines = 0
    async with await anyio.open_process(argv, stderr=None) as process:
        assert process.stdout is not None
        async for chunk in process.stdout:
            nbytes += len(chunk)
            newlines += chunk.count(b"\n")
        await process.wait()
    return nbytes, newlines, time.time()


async def throughput(
    kubeconfig: str, megabytes: int
) -> tuple[list[list[object]], list[list[object]]]:
    """(the reader rows, the rows of the node's log files and the tail judged by them)."""
    total = megabytes * 1_000_000
    expected_lines = total // 100
    kubectl = [_common.kubectl_path(), "--kubeconfig", kubeconfig]
    rows: list[list[object]] = []
    node_rows: list[list[object]] = []
    with _common.fresh_namespace(kubeconfig, "bench-logs") as ns:
        cluster = _common.kube_cluster(kubeconfig)
        spec = BuildSpec(
            build_id="big-log",
            steps=[
                StepSpec(name="big", image="busybox", commands=[f"yes {LINE} | head -c {total}"])
            ],
        )
        try:
            async with Runtime(cluster, ns.name, pause_image=_common.LOCAL_PAUSE_IMAGE) as rt:
                build = await rt.setup_build(spec)
                await rt.assemble_build(build)
                await rt.run_container(build, "big")
                argv = [*kubectl, "-n", ns.name, "logs", "-f", build.pod_name, "-c", "big"]
                live: dict[str, tuple[int, int, float]] = {}

                async def kubectl_live() -> None:
                    live["kubectl"] = await _read_process(argv)

                notices: list[bytes] = []

                async def tail_live() -> None:
                    count = nbytes = wrong = 0
                    odd: list[bytes] = []
                    async for line in rt.tail_container(build, "big"):
                        if line.startswith(MISSING_PREFIX):
                            notices.append(line)  # the runtime's, not the step's
                            continue
                        count += 1
                        nbytes += len(line) + 1
                        if line != LINE.encode():
                            wrong += 1
                            if len(odd) < 3:
                                odd.append(line[:200])
                    live["tail"] = (nbytes, count, time.time())
                    if wrong:
                        print(f"warning: {wrong} lines differ from the printed line: {odd}")

                async with anyio.create_task_group() as tg:
                    tg.start_soon(tail_live)
                    tg.start_soon(kubectl_live)
                result = await rt.wait_container(build, "big")
                first = b""
                async with cluster.stream_logs(
                    ns.name, build.pod_name, "big", follow=False, timestamps=True
                ) as chunks:
                    async for chunk in chunks:
                        first += chunk
                        if b" " in first:
                            break
                start = _stamp(first.split(b" ", 1)[0])
                for label, (nbytes, count, end) in (
                    ("live: tail_container (buildruntime)", live["tail"]),
                    ("live: kubectl logs -f, same container", live["kubectl"]),
                ):
                    rows.append(_row(label, nbytes, count, expected_lines, end - start))
                print(f"the step ran from {result.started_at} to {result.finished_at}")
                files = _node_log_files(ns.name, build.pod_name, "big")
                if files:
                    node_rows.extend([name, size / 1e6, lines] for name, size, lines in files)
                    held = sum(lines for _, _, lines in files)
                    tail_lines = live["tail"][1]
                    node_rows.append(
                        [
                            "tail_container, live, judged by the node's files",
                            live["tail"][0] / 1e6,
                            f"{tail_lines:,} of {held:,} (lost {max(held - tail_lines, 0):,}, "
                            f"added {max(tail_lines - held, 0):,}; {len(notices)} notices)",
                        ]
                    )
                for notice in notices:
                    print(notice.decode())

                # The finished log, read again by each reader in turn.
                begin = time.time()
                nbytes, count, end = await _read_process(argv)
                rows.append(
                    _row("after exit: kubectl logs -f", nbytes, count, expected_lines, end - begin)
                )

                buffer = LogBuffer()

                async def ended(_: float) -> bool:
                    return True

                capture = LogCapture(
                    cluster, ns.name, build.pod_name, "big", buffer,
                    step_ended=ended, pod_gone=lambda: False,
                )  # fmt: skip
                begin = time.perf_counter()
                count = nbytes = 0
                async with anyio.create_task_group() as tg:
                    tg.start_soon(capture.run)
                    async for line in buffer.follow():
                        count += 1
                        nbytes += len(line) + 1
                elapsed = time.perf_counter() - begin
                buffer.close()
                rows.append(
                    _row(
                        "after exit: LogCapture → LogBuffer → follow (the tail path)",
                        nbytes,
                        count,
                        expected_lines,
                        elapsed,
                    )
                )

                begin = time.perf_counter()
                nbytes = newlines = 0
                async with cluster.stream_logs(
                    ns.name, build.pod_name, "big", follow=True, timestamps=True
                ) as chunks:
                    async for chunk in chunks:
                        nbytes += len(chunk)
                        newlines += chunk.count(b"\n")
                elapsed = time.perf_counter() - begin
                rows.append(
                    _row(
                        "after exit: KubeCluster.stream_logs raw bytes (with timestamps)",
                        nbytes,
                        newlines,
                        expected_lines,
                        elapsed,
                    )
                )
                await rt.remove_build(build)
        finally:
            await cluster.aclose()
    return rows, node_rows


def _node_log_files(namespace: str, pod: str, container: str) -> list[tuple[str, int, int]]:
    """(name, bytes, lines) of the kubelet's files for a container's log, rotated ones
    first (oldest first, gzipped but the latest), when this machine is the node (the
    local cluster keeps them under its state directory)."""
    root = Path(os.environ.get("BUILDRUNTIME_POD_LOGS", "/var/lib/buildruntime-cluster/pod-logs"))
    paths = sorted(root.glob(f"{namespace}_{pod}_*/{container}/*"))
    # N.log.<timestamp>[.gz] sort by their timestamps; N.log, the current file, is last.
    paths.sort(key=lambda path: (path.name.endswith(".log"), path.name))
    out = []
    for path in paths:
        opener = gzip.open if path.suffix == ".gz" else open
        lines = 0
        with opener(path, "rb") as data:
            for record in data:
                # <stamp> stdout|stderr F|P <text>: a P record is part of a line.
                if record.split(b" ", 3)[2:3] == [b"F"]:
                    lines += 1
                else:
                    print(f"{path.name}: a record that is not a full line: {record[:200]!r}")
        out.append((path.name, path.stat().st_size, lines))
    return out


def _row(label: str, nbytes: int, lines: int, expected: int, seconds: float) -> list[object]:
    return [label, nbytes / 1e6, lines, expected - lines, seconds, nbytes / 1e6 / seconds]


THROUGHPUT_HEADERS = ["reader", "MB read", "lines", "lines missing", "seconds", "MB/s"]
NODE_HEADERS = ["the node's log files of the step (oldest first)", "MB", "lines"]


# -- main -------------------------------------------------------------------------------


async def run(args: argparse.Namespace, kubeconfig: str | None) -> dict[str, list[list[object]]]:
    out: dict[str, list[list[object]]] = {
        "throughput": [],
        "node": [],
        "concurrency": [],
        "cases": [],
    }
    builds, steps = (int(n) for n in args.shape.split("x"))
    if args.target in ("fake", "both"):
        async with _common.fake_cluster(keep_history=False) as fake:
            row, cases = await completeness(
                fake, "bench", DEFAULT_PAUSE_IMAGE, builds, steps, args.lines
            )
        out["concurrency"].append(["fake", *row])
        out["cases"] += [["fake", *case] for case in cases]
        print(_common.table(CONCURRENCY_HEADERS, out["concurrency"][-1:]), flush=True)
    if args.target in ("cluster", "both"):
        assert kubeconfig is not None
        with _common.fresh_namespace(kubeconfig, "bench-logs") as ns:
            cluster = _common.kube_cluster(kubeconfig)
            try:
                row, cases = await completeness(
                    cluster, ns.name, _common.LOCAL_PAUSE_IMAGE, builds, steps, args.lines
                )
            finally:
                await cluster.aclose()
        out["concurrency"].append(["cluster", *row])
        out["cases"] += [["cluster", *case] for case in cases]
        print(_common.table(CONCURRENCY_HEADERS, out["concurrency"][-1:]), flush=True)
        if args.mb > 0:
            out["throughput"], out["node"] = await throughput(kubeconfig, args.mb)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("fake", "cluster", "both"), default="both")
    parser.add_argument("--mb", type=int, default=200, help="MB the big step prints (cluster)")
    parser.add_argument("--shape", default="10x10", help="BUILDSxSTEPS run at once")
    parser.add_argument("--lines", type=int, default=10_000, help="lines each step prints")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    kubeconfig = _common.require_kubeconfig(args.target)
    out = anyio.run(run, args, kubeconfig)
    parts = []
    if out["throughput"]:
        parts.append(
            f"Throughput, one step printing {args.mb} MB of 100-byte lines (local cluster):\n\n"
            + _common.table(THROUGHPUT_HEADERS, out["throughput"])
        )
    if out["node"]:
        parts.append(_common.table(NODE_HEADERS, out["node"]))
    parts.append(
        f"Completeness, {args.shape} steps at once, {args.lines:,} lines each:\n\n"
        + _common.table(CONCURRENCY_HEADERS, out["concurrency"])
    )
    parts.append("DESIGN.md's cases:\n\n" + _common.table(CASE_HEADERS, out["cases"]))
    text = "\n\n".join(parts)
    print()
    print(text)
    if not args.no_record:
        _common.append_results("logs.py", text + "\n")


if __name__ == "__main__":
    main()
