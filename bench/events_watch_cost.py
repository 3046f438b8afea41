"""What an events watch costs the API server, by the number of watches open in the
namespace, on the local cluster (integration/cluster/up).

Events are not in the API server's watch cache: each events watch is an etcd watch of
the namespace, and the API server decodes every Event of the namespace once per watch to
test its field selector. This script opens W watches, each with the field selector a
build's own events watch has (``involvedObject.uid=...``, matching no Event here), then
creates E Events in the namespace from 8 threads and reads the CPU seconds kube-apiserver
and etcd spent meanwhile, for each W in turn (a fresh namespace each). W = 1 is what
buildruntime's shared events watch costs whatever the number of builds; W = B is the
watch-per-build mode with B builds.

    KUBECONFIG=/var/lib/buildruntime-cluster/admin.kubeconfig \\
        .venv/bin/python bench/events_watch_cost.py --watches 0,1,10,50,100 --events 2000
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from typing import Any

import _common
from server_cost import cpu_seconds

POSTERS = 8


def measure(core: Any, namespace: str, watches: int, events: int) -> tuple[float, float, float]:
    """(wall s, apiserver CPU s, etcd CPU s) while ``events`` Events are created with
    ``watches`` watches open."""
    stop = threading.Event()
    responses: list[Any] = []

    def watch(i: int) -> None:
        response = core.list_namespaced_event(
            namespace,
            watch=True,
            field_selector=f"involvedObject.uid=absent-{i}",
            _preload_content=False,
            timeout_seconds=600,
        )
        responses.append(response)
        try:
            for _ in response.stream(1024):
                if stop.is_set():
                    break
        except Exception:  # closed under the reader at the end
            pass

    readers = [threading.Thread(target=watch, args=(i,), daemon=True) for i in range(watches)]
    for reader in readers:
        reader.start()
    time.sleep(3)  # every watch open and idle

    def post(first: int) -> None:
        for j in range(first, events, POSTERS):
            core.create_namespaced_event(
                namespace,
                {
                    "metadata": {"generateName": "cost-"},
                    "involvedObject": {"kind": "Pod", "name": f"p{j}", "namespace": namespace},
                    "reason": "Cost",
                    "message": "x" * 100,
                    "type": "Normal",
                },
            )

    before = cpu_seconds()
    started = time.monotonic()
    posters = [threading.Thread(target=post, args=(k,)) for k in range(POSTERS)]
    for poster in posters:
        poster.start()
    for poster in posters:
        poster.join()
    time.sleep(2)  # the watches' last deliveries
    after = cpu_seconds()
    wall = time.monotonic() - started
    stop.set()
    for response in responses:
        with contextlib.suppress(Exception):
            # A watch matching nothing blocks its reader in recv, holding the lock that
            # close() takes: shut the socket down first to wake it.
            response.shutdown()
            response.close()
    return (
        wall,
        after["kube-apiserver"] - before["kube-apiserver"],
        after["etcd"] - before["etcd"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watches", default="0,1,10,50,100", help="events watches open")
    parser.add_argument("--events", type=int, default=2000, help="Events created per run")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    kubeconfig = _common.require_kubeconfig("cluster")
    assert kubeconfig is not None
    from kubernetes import client, config

    api: Any = config.new_client_from_config(config_file=kubeconfig)
    api.configuration.connection_pool_maxsize = 200
    core: Any = client.CoreV1Api(api)
    rows: list[list[object]] = []
    base: tuple[float, float] | None = None
    for watches in [int(w) for w in args.watches.split(",")]:
        with _common.fresh_namespace(kubeconfig, "evcost") as ns:
            wall, apiserver, etcd = measure(core, ns.name, watches, args.events)
        if base is None:
            base = (apiserver, etcd)
        rows.append(
            [
                watches,
                args.events,
                wall,
                apiserver,
                etcd,
                apiserver - base[0],
                (apiserver - base[0]) * 1e6 / (args.events * watches) if watches else "",
            ]
        )
        print(rows[-1], flush=True)
    api.close()
    result = _common.table(
        [
            "events watches",
            "Events created",
            "wall s",
            "apiserver CPU s",
            "etcd CPU s",
            "apiserver s over the first row",
            "µs per Event per watch",
        ],
        rows,
    )
    print(result)
    if not args.no_record:
        _common.append_results(
            "events_watch_cost.py",
            "API server and etcd CPU while Events are created in a namespace with that many "
            f"events watches open (each matching none of them).\n\n{result}\n",
        )


if __name__ == "__main__":
    main()
