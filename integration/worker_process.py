"""A CI worker as a process of its own, for the tests that kill one with SIGKILL.

``python -m integration.worker_process --namespace NS --worker-id ID --build-id B
(--socket PATH | --kubeconfig PATH --server URL) [--lease-duration S]
[--renew-interval S] [--ticks N] [--finish]``

It runs a Runtime (its Lease included) on the fake cluster of a
:class:`~integration.remote_fake.FakeClusterServer` (``--socket``) or on the API server
at ``--server`` with the kubeconfig's credentials, assembles a build with a secret
(``BuildSpec(secrets=...)``), starts its one step (it prints ``tick-1`` ... ``tick-N``, one
every 0.5 s) and prints ``RUNNING <build id> <pod name>`` once the step runs. Without
``--finish`` it then waits to be killed; with it, it follows the step to its end,
prints ``RESULT <json>`` (the lines and the exit code) and exits cleanly.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio

from buildruntime import BuildSpec, Runtime, StepSpec

SECRET_VALUE = "worker-secret-value-2026"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--build-id", required=True)
    parser.add_argument("--socket")
    parser.add_argument("--kubeconfig")
    parser.add_argument("--server")
    parser.add_argument("--pause-image")
    parser.add_argument("--lease-duration", type=float, default=30.0)
    parser.add_argument("--renew-interval", type=float, default=10.0)
    parser.add_argument("--ticks", type=int, default=1200)
    parser.add_argument("--finish", action="store_true")
    return parser.parse_args(argv)


def cluster_of(args: argparse.Namespace) -> Any:
    if args.socket:
        from buildruntime.testing.remote import RemoteCluster

        return RemoteCluster(args.socket)
    from kubernetes import client, config

    from buildruntime.cluster.kube import KubeCluster

    configuration = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, client_configuration=configuration)
    configuration.host = args.server
    return KubeCluster(client.ApiClient(configuration))


def say(*words: str) -> None:
    print(*words, flush=True)


async def main(args: argparse.Namespace) -> None:
    cluster = cluster_of(args)
    settings: dict[str, Any] = {
        "worker_id": args.worker_id,
        "lease_duration": args.lease_duration,
        "lease_renew_interval": args.renew_interval,
        "api_timeout": 120.0,
    }
    if args.pause_image:
        settings["pause_image"] = args.pause_image
    script = f"i=0; while [ $i -lt {args.ticks} ]; do i=$((i+1)); echo tick-$i; sleep 0.5; done"
    spec = BuildSpec(
        build_id=args.build_id,
        steps=[
            StepSpec(name="long", image="busybox", commands=[script], secrets=["token"]),
        ],
        secrets={"token": SECRET_VALUE},
    )
    async with Runtime(cluster, args.namespace, **settings) as rt:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        await rt.run_container(build, "long")
        say("RUNNING", build.build_id, build.pod_name)
        if not args.finish:
            await anyio.sleep_forever()
        lines = [line.decode() async for line in rt.tail_container(build, "long")]
        result = await rt.wait_container(build, "long")
        await rt.remove_build(build)
    say("RESULT", json.dumps({"lines": lines, "exit_code": result.exit_code}))


if __name__ == "__main__":
    anyio.run(main, parse(sys.argv[1:]))
