"""What the OpenTelemetry instrumentation costs the informer when no SDK is configured.

The whole informer of bench/informer_throughput.py (Informer → PodFanout → BuildView
over loopback HTTP) reads the same recorded stream, alternately with its telemetry
wired as a build's controller wires it (requests counted at the port, the reflector
and the views reporting to a ``BuildTelemetry`` on OpenTelemetry's no-op API) and
without any, ``--rounds`` times each in the same process, so that a shared machine's
load falls on both alike. Target: no measurable drop (the medians within the spread of
the runs).

    .venv/bin/python bench/telemetry_overhead.py                 # 5 rounds of 20,000 events
    .venv/bin/python bench/telemetry_overhead.py --rounds 3 --events 10000
"""

from __future__ import annotations

import argparse
import statistics

import _common
import podgen
from informer_throughput import LoopbackServer, buildruntime_informer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events in the stream")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each variant")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()

    path = podgen.recorded_stream(args.events, _common.CACHE_DIR)
    rates: dict[bool, list[float]] = {True: [], False: []}
    with LoopbackServer(path) as server:
        for round_ in range(args.rounds):
            # Alternate which goes first, so neither always runs on a warmer machine.
            for wired in (True, False) if round_ % 2 == 0 else (False, True):
                rate = buildruntime_informer(server.url, args.events, telemetry_wired=wired)
                rates[wired].append(rate.per_second)
    names = {True: "whole informer, telemetry wired (no-op API)", False: "no telemetry"}
    rows = [
        (
            names[wired],
            args.events,
            statistics.median(values),
            min(values),
            max(values),
        )
        for wired, values in rates.items()
    ]
    ratio = statistics.median(rates[True]) / statistics.median(rates[False])
    body = _common.table(["variant", "events", "median events/s", "min", "max"], rows)
    body += f"\n\nwired / not wired (medians): {ratio:.3f}"
    print(body)
    if not args.no_record:
        _common.append_results("telemetry_overhead.py", body)


if __name__ == "__main__":
    main()
