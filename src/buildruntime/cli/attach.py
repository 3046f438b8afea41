"""``buildruntime attach BUILD_ID``: adopt a build another worker left (it died, or it
released the build in a rolling upgrade) and carry it to its end.

The build is adopted (:meth:`Runtime.attach_build`), then driven as ``run`` drives a
bare spec: each step in order, a step that ran or runs already followed from its first
line (the node still holds its log), the next started after a success; then the
summary, and the build is removed. The pipeline file's own rules (``depends_on``,
``when``, ``failure: ignore``) are not part of the spec a pod carries: an attached
build's steps run one after another, and the first failure skips the rest. The exit
status is ``run``'s.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio

from buildruntime.cli.console import Console
from buildruntime.cli.exits import EXIT_FAILED
from buildruntime.cli.interrupts import receiving_signals
from buildruntime.cli.run import drive_build, secrets_masker
from buildruntime.cli.target import Target, configured_cluster, open_cluster, server_of
from buildruntime.pipeline import PipelinePlan
from buildruntime.runtime import Runtime


async def _attach_command(
    target: Target, namespace: str, build_id: str, api_timeout: float, console: Console
) -> int:
    status = EXIT_FAILED
    settings: dict[str, Any] = {"api_timeout": api_timeout}
    async with (
        receiving_signals(console, "removing the build") as interruption,
        open_cluster(target, api_timeout=api_timeout) as cluster,
        Runtime(cluster, namespace, **settings) as rt,
    ):
        with interruption.cancels():
            build = await rt.attach_build(build_id)
            console.masker = secrets_masker(build.spec)
            steps = ", ".join(step.name for step in build.spec.steps)
            console.note(f"buildruntime: attached build {build_id} (steps: {steps})")
            status = await drive_build(
                rt,
                build,
                PipelinePlan(build.spec),
                console,
                server=server_of(cluster),
                assemble=False,
            )
    return interruption.status or status


def cmd_attach(args: argparse.Namespace, console: Console) -> int:
    target = configured_cluster(
        args.kubeconfig, args.context, otherwise=": there is no build to attach"
    )
    return anyio.run(
        _attach_command, target, args.namespace, args.build_id, args.api_timeout, console
    )
