"""What one watcher of the builds' pods costs the API server, by the format it asks for:
JSON (what buildruntime's watches ask for) or protobuf (what the kubelet, the scheduler and
the controllers ask for).

The watch cache encodes each event once per format and hands the same bytes to every
watcher that asked for that format (``cachingObject.CacheEncode`` in
``k8s.io/apiserver/pkg/storage/cacher``). The kubelet and the controller manager watch pods
in protobuf, so a protobuf watcher of the builds' pods should find each event already
encoded, where a JSON watcher pays for its own encoding: by ``apiserver_profile.py`` that
encoding is the one apiserver cost buildruntime causes that the per-step baseline does not
(8 ms per build at 10 and at 30 builds).

Each run is ``server_cost.py``'s kubelet-only writes (the builds' pods created, patched in
step by step and deleted; no runtime, no log read) with one watcher beside them: none, a
JSON watch, or a protobuf watch of the pods buildruntime labels (all namespaces, one
connection, the body read and discarded in a thread). The apiserver's CPU profile of each
run is summed by category as ``apiserver_profile.py`` does. ``--repeat`` runs the three
again, in the same order, to show the noise.

    KUBECONFIG=/var/lib/buildruntime-cluster/admin.kubeconfig \\
        .venv/bin/python bench/watch_encoding_cost.py --builds 30 --repeat 2

Needs ``go`` (``go tool pprof``), like ``apiserver_profile.py``.
"""

from __future__ import annotations

import argparse
import http.client
import re
import socket
import ssl
import sys
import threading
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common
import anyio
import yaml
from apiserver_profile import (
    CATEGORIES,
    Sample,
    categorize,
    fetch_profile,
    run_and_record,
    samples,
)
from server_cost import measure

from buildruntime.labels import managed_selector

PKI = Path("/var/lib/buildruntime-cluster/pki")
FORMATS = {
    "no watcher": None,
    "JSON watcher": "application/json",
    "protobuf watcher": "application/vnd.kubernetes.protobuf;stream=watch",
}
"""The watcher beside each run, and the ``Accept`` header it sends."""
WATCHES = next(name for name, _ in CATEGORIES if name.startswith("serving watches"))
_SERVING = re.compile(r"handlers\.\(\*watchEncoder\)")
DETAIL: dict[str, re.Pattern[str]] = {
    "watch events encoded as JSON": re.compile(r"encoding/json\.|json\.\(\*Serializer\)"),
    "watch events encoded as protobuf": re.compile(r"protobuf\.\(\*Serializer\)"),
    "watch events written to connections": re.compile(r"crypto/tls\.|http2\.|\.Flush\b"),
}
"""Rows that split a watch's serving (samples under the watch encoder) by what the time
went to, whichever watcher (the kubelet's and the controllers' included) it was for."""


def detail(sampled: list[Sample]) -> dict[str, float]:
    """CPU seconds of the samples under the watch encoder that match each DETAIL row."""
    out = dict.fromkeys(DETAIL, 0.0)
    for spent, stack in sampled:
        if not any(_SERVING.search(frame) for frame in stack):
            continue
        for name, pattern in DETAIL.items():
            if any(pattern.search(frame) for frame in stack):
                out[name] += spent
    return out


class Watcher(threading.Thread):
    """One watch of the pods buildruntime labels, in all namespaces, asking for
    ``accept``; counts the bytes and the events (lines for JSON; length-prefixed frames
    for protobuf) it receives."""

    def __init__(self, kubeconfig: str, accept: str) -> None:
        super().__init__(daemon=True)
        config = yaml.safe_load(Path(kubeconfig).read_text())
        server = urllib.parse.urlsplit(config["clusters"][0]["cluster"]["server"])
        context = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
        context.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
        self.connection = http.client.HTTPSConnection(
            server.hostname or "127.0.0.1", server.port or 443, context=context
        )
        self.accept = accept
        self.content_type = ""
        self.bytes = 0
        self.events = 0
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._stopping = False

    def run(self) -> None:
        selector = urllib.parse.quote(managed_selector())
        try:
            self.connection.request(
                "GET",
                f"/api/v1/pods?watch=1&labelSelector={selector}&timeoutSeconds=900",
                headers={"Accept": self.accept},
            )
            response = self.connection.getresponse()
            if response.status != 200:
                raise RuntimeError(f"watch answered {response.status}: {response.read()[:300]!r}")
            self.content_type = response.getheader("Content-Type", "")
            self.ready.set()
            pending = b""
            while chunk := response.read1(65536):
                self.bytes += len(chunk)
                if "protobuf" in self.content_type:
                    pending += chunk
                    # Each event is a frame: a 4-byte big-endian length, then that many bytes.
                    while len(pending) >= 4:
                        size = int.from_bytes(pending[:4], "big")
                        if len(pending) < 4 + size:
                            break
                        pending = pending[4 + size :]
                        self.events += 1
                else:
                    self.events += chunk.count(b"\n")
        except BaseException as error:  # reported by the main thread
            if not self._stopping:
                self.error = error
        finally:
            self.ready.set()

    def stop(self) -> None:
        """End the watch. A shutdown, not only a close: the response still holds the
        socket, and a close alone would leave the connection (and the server's watch)
        open while that reference lives."""
        self._stopping = True
        if self.connection.sock is not None:
            self.connection.sock.shutdown(socket.SHUT_RDWR)
            self.connection.sock.close()
        self.join(timeout=10)
        if self.is_alive():
            raise RuntimeError("the watcher's thread did not end")


@dataclass
class Profiled:
    """One run's apiserver CPU seconds: by category (each sample once) and the DETAIL rows
    (which overlap the categories, so they are kept apart from the total)."""

    categories: defaultdict[str, float]
    detail: dict[str, float]

    def total(self) -> float:
        return sum(self.categories.values())

    def __getitem__(self, name: str) -> float:
        return self.detail[name] if name in self.detail else self.categories[name]


async def one_run(
    kubeconfig: str, api: Any, which: str, args: argparse.Namespace, round_: int
) -> tuple[Profiled, Watcher | None]:
    accept = FORMATS[which]
    watcher = Watcher(kubeconfig, accept) if accept else None
    if watcher is not None:
        watcher.start()
        await anyio.to_thread.run_sync(watcher.ready.wait)
        if watcher.error is not None:
            raise watcher.error
    slug = which.split()[0].lower()
    path = _common.CACHE_DIR / f"apiserver-watcher-{slug}-{args.builds}-{round_}.pb.gz"
    taking = fetch_profile(args.seconds, path)
    pace = (args.assemble, args.step)
    try:
        await measure(kubeconfig, api, "kubelet only", args.builds, args.steps, pace)
    finally:
        if watcher is not None:
            await anyio.to_thread.run_sync(watcher.stop)
    _, error = await anyio.to_thread.run_sync(taking.communicate)
    if taking.returncode != 0:
        sys.exit(f"could not take the profile: {error.decode().strip()} (is --profiling=true set?)")
    if watcher is not None and watcher.error is not None:
        raise watcher.error
    sampled = samples(path)  # go tool pprof, once per profile
    return Profiled(categorize(sampled), detail(sampled)), watcher


async def main_async(args: argparse.Namespace, kubeconfig: str) -> str:
    from kubernetes import config

    new_client: Any = config.new_client_from_config  # untyped in the client
    api: Any = new_client(config_file=kubeconfig)
    results: dict[str, list[Profiled]] = {which: [] for which in FORMATS}
    received: list[str] = []
    for round_ in range(args.repeat):
        for which in FORMATS:
            profiled, watcher = await one_run(kubeconfig, api, which, args, round_)
            results[which].append(profiled)
            line = f"round {round_ + 1}, {which}: {profiled.total():.2f} s profiled"
            if watcher is not None:
                got = (
                    f"{watcher.events} events, {watcher.bytes / 1e6:.2f} MB "
                    f"as {watcher.content_type}"
                )
                line += f"; the watcher got {got}"
                received.append(f"{which}, round {round_ + 1}: {got}")
            print(line, flush=True)
    api.close()
    ms = 1000 / args.builds
    rows: list[list[object]] = []
    for name in [WATCHES, *DETAIL, "all"]:
        for round_ in range(args.repeat):

            def value(which: str, name: str = name, round_: int = round_) -> float:
                profiled = results[which][round_]
                return profiled.total() if name == "all" else profiled[name]

            base = value("no watcher")
            rows.append(
                [
                    f"{name}, round {round_ + 1}",
                    *(value(which) for which in FORMATS),
                    *((value(which) - base) * ms for which in list(FORMATS)[1:]),
                ]
            )
    headers = [
        f"apiserver CPU s, {args.builds} builds × {args.steps}, first {args.seconds} s",
        *FORMATS,
        *(f"{which} − no watcher, ms/build" for which in list(FORMATS)[1:]),
    ]
    return (
        "What the watchers received: "
        + "; ".join(received)
        + ".\n\n"
        + _common.table(headers, rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", type=int, default=30, help="concurrent builds")
    parser.add_argument("--steps", type=int, default=3, help="steps patched in per build")
    parser.add_argument("--seconds", type=int, default=30, help="profile length per run")
    parser.add_argument("--assemble", type=float, default=1.0, help="s from create to 1st patch")
    parser.add_argument("--step", type=float, default=3.0, help="s between patches")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of the three runs")
    parser.add_argument("--no-record", action="store_true")
    run_and_record(
        main_async,
        parser.parse_args(),
        "watch_encoding_cost.py",
        "The apiserver's CPU with one watcher of the builds' pods beside the kubelet-only "
        "writes, by the format the watcher asks for (its CPU profile, by category).",
    )


if __name__ == "__main__":
    main()
