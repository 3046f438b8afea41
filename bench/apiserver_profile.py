"""Where kube-apiserver's CPU goes while builds run, per runtime: its own CPU profile,
taken from its pprof endpoint over each run, summed by what the time was spent on.

``server_cost.py`` measures each runtime's cost as a difference of two runs' ``/proc``
totals, which moves by tens of ms per build from one run to the next. A profile says
*what* the time was spent on, so the part a runtime causes (its lists, watches, log
streams, the TLS handshakes of its connections) can be read apart from the part every
runtime causes alike (the kubelet's status writes, pod creation and deletion).

For one concurrency B, the runs of ``server_cost.py`` (buildruntime, buildruntime with a
pod watch per build, the per-step baseline, the kubelet-only writes paced like the
slowest of them), one after the other in fresh namespaces; during each, a CPU profile
of ``--seconds`` seconds from ``/debug/pprof/profile`` (the apiserver must run with
``--profiling=true``, as the local cluster's does). Each sample is put in the first
category (in the table's order) one of its stack frames matches, so no second is
counted twice; the rest is "other".

    KUBECONFIG=/var/lib/buildruntime-cluster/admin.kubeconfig \\
        .venv/bin/python bench/apiserver_profile.py --builds 30 --seconds 25

Needs ``go`` (``go tool pprof`` reads the profiles; ``GO`` or ``/usr/local/go/bin/go``).
The profiles are kept in ``bench/.cache/apiserver-<runtime>-<B>.pb.gz``
(``go tool pprof -top`` reads them).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import _common
import anyio
from server_cost import measure, slowest_pace

GO = os.environ.get("GO", "/usr/local/go/bin/go")
PER_BUILD = "buildruntime, pod watch per build"
COMPARED = ("buildruntime", PER_BUILD, "baseline")

CATEGORIES: list[tuple[str, re.Pattern[str]]] = [
    ("TLS handshakes", re.compile(r"crypto/tls\.\(\*Conn\)\.(serverHandshake|handshakeContext)")),
    (
        "pod log requests (to the kubelet and back)",
        re.compile(r"rest\.\(\*LogREST\)|proxy\.\(\*LocationStreamer\)"),
    ),
    (
        "serving watches (encoding, writing)",
        re.compile(r"handlers\.serveWatch|handlers\.\(\*WatchServer\)|\(\*cachingObject\)"),
    ),
    (
        "watch cache: dispatching events to watchers",
        re.compile(r"cacher\.\(\*Cacher\)\.(dispatch|processEvent)|\(\*cacheWatcher\)"),
    ),
    ("etcd watches (Events are not cached)", re.compile(r"etcd3\.\(\*watchChan\)")),
    ("LIST requests", re.compile(r"handlers\.ListResource|\)\.GetList\b")),
    ("GET requests", re.compile(r"handlers\.GetResource|registry\.\(\*Store\)\.Get\b")),
    (
        "POST (create) requests",
        re.compile(r"handlers\.(createHandler|CreateResource)|registry\.\(\*Store\)\.[cC]reate"),
    ),
    (
        "PATCH / PUT requests",
        re.compile(r"handlers\.(PatchResource|UpdateResource)|handlers\.\(\*patcher\)|\.Update\b"),
    ),
    ("DELETE requests", re.compile(r"handlers\.DeleteResource|registry\.\(\*Store\)\.Delete")),
    (
        "request filters (authn, authz, flow control, audit)",
        re.compile(r"DefaultBuildHandlerChain|net/http\.\(\*conn\)\.serve"),
    ),
    ("TLS reads and writes", re.compile(r"crypto/tls\.\(\*Conn\)\.(Read|Write)")),
    ("HTTP/2 (the kubelet's and controllers' connections)", re.compile(r"http2")),
    ("etcd client (gRPC)", re.compile(r"go\.etcd\.io/etcd/client|google\.golang\.org/grpc")),
    ("Go garbage collector", re.compile(r"runtime\.gcBgMarkWorker|runtime\.bgsweep")),
]
OTHER = "other (the apiserver's own controllers, the Go runtime)"
_SAMPLE_HEADER = re.compile(r"^\s+(\d+)\s+(\d+):")


def require_go() -> None:
    """Exit with a message unless ``go`` (whose ``tool pprof`` reads the profiles) is there."""
    if not Path(GO).exists():
        sys.exit(f"{GO} not found: set GO to a go binary (go tool pprof reads the profiles)")


def fetch_profile(seconds: int, out: Path) -> subprocess.Popen[bytes]:
    """Start taking a CPU profile of ``seconds`` seconds into ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [_common.kubectl_path(), "get", "--raw", f"/debug/pprof/profile?seconds={seconds}"],
        stdout=out.open("wb"),
        stderr=subprocess.PIPE,
    )


Sample = tuple[float, list[str]]
"""One sample of a CPU profile: its CPU seconds and its stack's frames."""


def samples(profile: Path) -> list[Sample]:
    """Each sample of the profile: its CPU seconds and its stack's frames (as
    ``go tool pprof -raw`` prints them)."""
    raw = subprocess.run(
        [GO, "tool", "pprof", "-raw", str(profile)], capture_output=True, text=True, check=True
    ).stdout
    # -raw prints "Samples:" then one block per sample: a line "<count> <nanoseconds>:
    # <location ids>", then one line per location; then "Locations" maps ids to frames.
    samples_part, _, locations_part = raw.partition("\nLocations\n")
    frames: dict[str, str] = {}
    current = ""
    for line in locations_part.splitlines():
        head = re.match(r"^\s*(\d+):", line)
        if head:
            current = head.group(1)
            frames[current] = line
        elif current:
            frames[current] += line
    out: list[Sample] = []
    for line in samples_part.splitlines():
        match = _SAMPLE_HEADER.match(line)
        if match:
            ids = line.split(":", 1)[1].split()
            out.append((int(match.group(2)) / 1e9, [frames[i] for i in ids if i in frames]))
    return out


def categorize(sampled: list[Sample]) -> defaultdict[str, float]:
    """CPU seconds by category: each sample goes to the first category one of its
    frames matches."""
    seconds: defaultdict[str, float] = defaultdict(float)
    order = {name: i for i, (name, _) in enumerate(CATEGORIES)}
    category_of: dict[str, str | None] = {}
    for spent, stack in sampled:
        found = []
        for frame in stack:
            if frame not in category_of:
                category_of[frame] = next(
                    (name for name, pattern in CATEGORIES if pattern.search(frame)), None
                )
            if (category := category_of[frame]) is not None:
                found.append(category)
        seconds[min(found, key=order.__getitem__) if found else OTHER] += spent
    return seconds


async def profiled(
    kubeconfig: str, api: Any, which: str, builds: int, steps: int, seconds: int, pace: Any
) -> tuple[Any, defaultdict[str, float]]:
    slug = re.sub(r"[^a-z0-9]+", "-", which)
    path = _common.CACHE_DIR / f"apiserver-{slug}-{builds}.pb.gz"
    taking = fetch_profile(seconds, path)
    run = await measure(kubeconfig, api, which, builds, steps, pace)
    _, error = await anyio.to_thread.run_sync(taking.communicate)
    if taking.returncode != 0:
        sys.exit(f"could not take the profile: {error.decode().strip()} (is --profiling=true set?)")
    return run, categorize(samples(path))


async def main_async(args: argparse.Namespace, kubeconfig: str) -> str:
    from kubernetes import config

    new_client: Any = config.new_client_from_config  # untyped in the client
    api: Any = new_client(config_file=kubeconfig)
    results: dict[str, defaultdict[str, float]] = {}
    runs = {}
    for which in COMPARED:
        runs[which], results[which] = await profiled(
            kubeconfig, api, which, args.builds, args.steps, args.seconds, (0.0, 0.0)
        )
        print(f"{which}: {sum(results[which].values()):.2f} s profiled", flush=True)
    pace = slowest_pace(list(runs.values()))
    runs["kubelet only"], results["kubelet only"] = await profiled(
        kubeconfig, api, "kubelet only", args.builds, args.steps, args.seconds, pace
    )
    api.close()
    rows: list[list[object]] = []
    for name in [n for n, _ in CATEGORIES] + [OTHER, "all"]:

        def value(which: str, name: str = name) -> float:
            counted = results[which]
            return sum(counted.values()) if name == "all" else counted[name]

        ms = 1000 / args.builds
        rows.append(
            [
                name,
                *(value(which) for which in (*COMPARED, "kubelet only")),
                *((value(which) - value("kubelet only")) * ms for which in COMPARED),
            ]
        )
    headers = [
        f"apiserver CPU s, {args.builds} builds × {args.steps}, first {args.seconds} s",
        *COMPARED,
        "kubelet only",
        *(f"{which} − kubelet only, ms/build" for which in COMPARED),
    ]
    walls = ", ".join(f"{w} {r.wall:.1f} s" for w, r in runs.items())
    return f"Runs (wall, until the pods are gone): {walls}.\n\n" + _common.table(headers, rows)


def run_and_record(
    main_async: Callable[[argparse.Namespace, str], Awaitable[str]],
    args: argparse.Namespace,
    title: str,
    preface: str,
) -> None:
    """A profile script's run: on the local cluster, with ``go`` (see :func:`require_go`);
    prints the result and, unless ``--no-record``, appends it to RESULTS.md after
    ``preface``."""
    kubeconfig = _common.require_kubeconfig("cluster")
    assert kubeconfig is not None
    require_go()
    result = anyio.run(main_async, args, kubeconfig)
    print()
    print(result)
    if not args.no_record:
        _common.append_results(title, f"{preface}\n\n{result}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", type=int, default=30, help="concurrent builds")
    parser.add_argument("--steps", type=int, default=3, help="echo steps per build")
    parser.add_argument("--seconds", type=int, default=25, help="profile length per run")
    parser.add_argument("--no-record", action="store_true")
    run_and_record(
        main_async,
        parser.parse_args(),
        "apiserver_profile.py",
        "kube-apiserver CPU by what it was spent on, from its CPU profile over each run "
        "(each sample counted once, in the first category that matches).",
    )


if __name__ == "__main__":
    main()
